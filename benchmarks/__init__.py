"""Benchmarks of rankmixup_ops: ``python -m benchmarks`` (see benchmarks/README.md), and the
pytest-benchmark CPU suite (``make bench-cpu``)."""
