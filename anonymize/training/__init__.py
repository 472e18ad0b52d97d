"""Training commands for methods that need a model trained on the user's own data."""
