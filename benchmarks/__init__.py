"""Benchmark harness and measurement scripts (importable as tunebench.benchmarks)."""
