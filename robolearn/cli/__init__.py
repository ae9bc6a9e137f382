"""Command-line entry points (thin wrappers over library functions)."""
