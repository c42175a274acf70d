"""The Attention Atlas benchmark (``python -m benchmarks.run``); see docs/benchmarks.md."""
