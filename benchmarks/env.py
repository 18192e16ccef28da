"""Where a result was measured: device, library versions, commit, date. Stored with every
result file, so that a number is never separated from the machine and code that produced it."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _commit() -> dict:
    """HEAD and whether the tree differs from it. A copy of the tree without .git (as a lent
    GPU machine gets) takes the commit from RANKMIXUP_GIT_COMMIT."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return {"commit": os.environ.get("RANKMIXUP_GIT_COMMIT", "unknown"), "dirty": None}
    return {"commit": head, "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()


def describe(device: torch.device) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc)
    info = {
        "device": device.type,
        "device_name": device_name(device),
        "cpu_model": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        # Other work on the machine skews CPU timings (and GPU launch overhead): keep the load.
        "load_average_1min": os.getloadavg()[0],
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "date": now.isoformat(timespec="seconds"),
        **_commit(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            compute_capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_bytes=props.total_memory,
            driver=_nvidia_smi("driver_version"),
        )
    return info


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.splitlines()[0].strip() if out else None


def result_stem(info: dict, preset: str) -> str:
    """``<device-slug>-<YYYYMMDD>`` (plus the preset when not the full one), e.g.
    ``nvidia-h100-80gb-hbm3-20260312``: one file per device and day."""
    slug = re.sub(r"[^a-z0-9]+", "-", info["device_name"].lower()).strip("-")
    if info["device"] == "cpu":
        slug = f"cpu-{slug}"
    day = info["date"][:10].replace("-", "")
    return f"{slug}-{day}" + ("" if preset == "full" else f"-{preset}")
