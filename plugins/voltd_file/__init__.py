"""File sink."""
