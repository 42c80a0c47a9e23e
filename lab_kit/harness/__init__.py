"""Harness (placeholder face)."""
