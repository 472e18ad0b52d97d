"""nets subpackage."""
