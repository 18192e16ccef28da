"""The benchmark CLI (``python -m benchmarks``) on tiny shapes: it runs, and writes the JSON
record and the plots it promises. No timing is asserted: speed lives in the recorded results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {
    "op", "mode", "batch", "num_mix", "classes", "feat", "dtype", "pass", "impl", "case", "floor_bytes", "status",
    "first_call_s", "median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms", "reps", "bytes_per_s", "copy_fraction",
    "peak_memory_bytes", "speedup_vs_reference", "speedup_vs_compile",
}
ENVIRONMENT_KEYS = {"device", "device_name", "cpu_model", "torch", "triton", "cuda", "date", "commit", "dirty"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # The CLI in its own process, as a user runs it; without the test session's interpreter
    # switch, which makes the Triton backend claim CPU tensors.
    environ = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--device", "cpu", "--smoke", "--no-compile", "--out", str(out),
         "--markdown"],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_writes_the_json_record(smoke_run):
    out, _ = smoke_run
    (path,) = out.glob("*.json")
    record = json.loads(path.read_text())
    assert record["schema_version"] == 1
    assert ENVIRONMENT_KEYS <= record["environment"].keys()
    assert record["environment"]["device"] == "cpu"
    assert record["settings"]["copy_bandwidth_bytes_per_s"] > 0
    rows = record["rows"]
    impls = {row["impl"] for row in rows}
    assert "reference" in impls and "torch.compile" not in impls
    # Every implementation timed on every case it applies to, forward and forward+backward: the
    # drop-in class and the operator floor (the compiled CPU backend is built) on the loss cases.
    assert {"cpu", "drop-in", "op floor"} <= impls
    cases = {row["case"]: row["op"] for row in rows}
    assert {(row["case"], row["pass"], row["impl"]) for row in rows} == {
        (case, pass_, impl) for case, op in cases.items() for pass_ in ("fwd", "fwd+bwd") for impl in impls
        if op == "loss" or impl not in ("drop-in", "op floor")}
    for row in rows:
        assert row["status"] == "ok", row
        assert ROW_KEYS <= row.keys()
        assert row["min_ms"] <= row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] <= row["max_ms"]
        assert row["peak_memory_bytes"] is None  # not measurable on the CPU (see benchmarks/README.md)
        assert (row["speedup_vs_reference"] is None) == (row["impl"] == "reference")


def test_writes_plots_and_markdown(smoke_run):
    out, stdout = smoke_run
    (path,) = out.glob("*.json")
    for name in ("throughput", "speedup"):
        plot = path.with_name(f"{path.stem}-{name}.png")
        assert plot.read_bytes().startswith(b"\x89PNG")
    fused = {row["impl"] for row in json.loads(path.read_text())["rows"]} - {"reference"}
    assert stdout.startswith("Device: ")
    assert ("| case | pass | backend |" in stdout) == bool(fused)


def test_cutmix_benchmark_runs_and_names_what_it_did_not_time(tmp_path):
    """``python -m benchmarks.cutmix --smoke``: a row per implementation it timed; timm and
    torchvision (benchmark-only dependencies) are timed or recorded as not installed."""
    environ = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.cutmix", "--smoke", "--out", str(tmp_path), "--markdown"],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (path,) = tmp_path.glob("*-cutmix.json")
    record = json.loads(path.read_text())
    assert ENVIRONMENT_KEYS <= set(record["environment"])
    timed = {row["impl"] for row in record["rows"]}
    assert {"rankmixup_ops (reference)", "rankmixup_ops (cpu)"} <= timed
    for other in ("timm", "torchvision"):
        assert other in timed or record["not_timed"][other].startswith("not installed")
    assert all(row["median_ms"] > 0 and row["reps"] >= 5 for row in record["rows"])
    assert "| rankmixup_ops (cpu) |" in result.stdout
