"""Benchmarks (placeholder face)."""

from lab_kit.bench.producers import add_parser, main

__all__ = ["add_parser", "main"]
