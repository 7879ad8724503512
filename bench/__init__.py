"""Benchmarks of trackerdcs: `python -m bench.run` (see bench/README.md)."""
