"""Data sets, one module per task."""
