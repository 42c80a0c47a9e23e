"""Benchmarks (placeholder face)."""
