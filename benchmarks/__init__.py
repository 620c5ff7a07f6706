"""Runnable benchmarks that print tables (not timed tests)."""
