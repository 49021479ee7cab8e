"""The `modelyard` command line."""
