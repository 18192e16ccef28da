"""tools/gpu_check.sh (`make gpu-check`) without a GPU, as a dry run: every stage but the build
(which `make test` has just done) runs what it can and says "no CUDA device", and what the run
leaves under $OUT is what the device tool can bring back from a GPU lease."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
STAGES = ("build", "environment", "kernels", "graphs-compile", "benchmark", "sanitizer", "tests-large")
# What gpu_check.sh promises to leave, GPU or not.
FILES = {"summary.txt", "gpu-check.log", "results.tar.gz", "throughput.png", "speedup.png"}

# The device tool's limits on what comes back from $OUT (its README).
DEVICE_MAX_FILES = 8
DEVICE_MAX_FOLDERS_DOWN = 2  # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
DEVICE_MAX_FILE_BYTES = 16 * 2**20
DEVICE_NAME = re.compile(r"[A-Za-z0-9._-]+")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without a GPU")


def _environ(out: Path, stages: str) -> dict[str, str]:
    return dict(os.environ, OUT=str(out), PYTHON=sys.executable, GPU_CHECK_STAGES=stages, PYTHONUNBUFFERED="1")


def _summary(out: Path) -> dict[str, tuple[str, str]]:
    """stage -> (status, note), from summary.txt's fixed-width stage lines."""
    rows = {}
    for line in (out / "summary.txt").read_text().splitlines():
        if line[:16].strip() in STAGES:
            rows[line[:16].strip()] = (line[17:27].strip(), line[38:].strip())
    return rows


def test_dry_run_goes_through_every_stage_and_leaves_what_the_device_returns(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=_environ(out, " ".join(STAGES[1:])),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]

    summary = _summary(out)
    assert summary["build"] == ("skipped", "not in GPU_CHECK_STAGES")
    for stage in STAGES[1:]:
        assert summary[stage] == ("dry-run", "no CUDA device"), (stage, summary)
    assert "no CUDA device" in (out / "gpu-check.log").read_text()

    files = [path for path in out.rglob("*") if path.is_file()]
    assert {path.relative_to(out).as_posix() for path in files} == FILES
    assert len(files) <= DEVICE_MAX_FILES
    for path in out.rglob("*"):
        relative = path.relative_to(out)
        assert all(DEVICE_NAME.fullmatch(part) for part in relative.parts), relative
        if path.is_file():
            assert len(relative.parts) - 1 <= DEVICE_MAX_FOLDERS_DOWN, relative
            assert path.stat().st_size <= DEVICE_MAX_FILE_BYTES, relative

    with tarfile.open(out / "results.tar.gz") as archive:
        names = {Path(name).as_posix().removeprefix("./") for name in archive.getnames()}
    for stage in ("kernels", "graphs-compile", "tests-large"):
        assert f"junit-{stage}.xml" in names
    assert any(re.fullmatch(r"bench/cpu-.*-smoke\.json", name) for name in names), names


def test_a_killed_run_keeps_the_stages_it_finished(tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=_environ(out, "graphs-compile benchmark"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "summary.txt").exists() or "graphs-compile" not in _summary(out):
            assert process.poll() is None and time.monotonic() < deadline, "the graphs-compile stage never finished"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # as the device tool does at a command's limit
        process.wait()
    assert _summary(out)["graphs-compile"] == ("dry-run", "no CUDA device")
    with tarfile.open(out / "results.tar.gz") as archive:
        assert "./junit-graphs-compile.xml" in archive.getnames()


def test_an_unknown_stage_is_refused(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=_environ(tmp_path, "build benchmarks"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown stage benchmarks" in result.stderr
