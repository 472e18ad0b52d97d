"""faces subpackage."""
