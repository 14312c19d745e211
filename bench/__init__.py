"""Benchmarks: ratios measured side by side in one run (never gate CI on time)."""
