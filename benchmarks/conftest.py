"""pytest-benchmark settings for the suites here."""

from __future__ import annotations


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep each benchmark's statistics but not its every round's timing: the README and
    report read medians and spreads, and the rounds made each JSON about 2 MB."""
    for bench in output_json["benchmarks"]:
        bench["stats"].pop("data", None)
