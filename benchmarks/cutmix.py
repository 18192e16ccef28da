"""``python -m benchmarks.cutmix``: ``rankmixup_ops.cutmix`` against timm's and torchvision's
CutMix, interleaved in one run on one named device, written down as JSON (see
benchmarks/README.md, "CutMix").

Every implementation makes one CutMix of a batch, one box per batch (what timm's
``mode="batch"`` and torchvision do), its coefficient and partners sampled in the call, and
leaves the raw batch intact, as RankMixup needs it beside the mix: timm mixes in place, so its
call is ``x.clone()`` then ``Mixup``; torchvision's ``CutMix`` clones by itself. Forward only:
timm's and torchvision's are input transforms, not differentiable ops. timm and torchvision are
benchmark-only dependencies (``requirements-bench.txt``); without them their rows are recorded
as not installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import rankmixup_ops as rmx

from . import env
from .runner import backends_for
from .timing import measure
from .workloads import REFERENCE

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 10
SHAPES = {"full": [(128, 3, 32, 32), (256, 3, 224, 224)], "smoke": [(4, 3, 8, 8)]}
MEASURE_S = {"full": 1.0, "smoke": 0.05}


def _ours(backend: str) -> Callable[[torch.Tensor, torch.Tensor], object]:
    return lambda x, y: rmx.cutmix(x, 1, 1.0, backend=backend)


def _timm() -> Callable[[torch.Tensor, torch.Tensor], object]:
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, switch_prob=0.0, mode="batch",
                  label_smoothing=0.0, num_classes=NUM_CLASSES)
    return lambda x, y: mixup(x.clone(), y)


def _torchvision() -> Callable[[torch.Tensor, torch.Tensor], object]:
    from torchvision.transforms import v2

    cutmix = v2.CutMix(alpha=1.0, num_classes=NUM_CLASSES)
    return lambda x, y: cutmix(x, y)


def implementations(device: torch.device) -> tuple[dict[str, Callable], dict[str, str]]:
    """The implementations to time on ``device``, and why each other one is not timed."""
    fused, reasons = backends_for(device)
    impls = {f"rankmixup_ops ({name})": _ours(name) for name in [REFERENCE, *fused]}
    not_timed = {f"rankmixup_ops ({name})": reason for name, reason in reasons.items()}
    for name, factory in (("timm", _timm), ("torchvision", _torchvision)):
        try:
            impls[name] = factory()
        except ImportError as error:
            not_timed[name] = f"not installed ({error})"
    return impls, not_timed


def run(preset: str, device: torch.device) -> dict:
    impls, not_timed = implementations(device)
    rows = []
    for shape in SHAPES[preset]:
        x = torch.randn(shape, device=device)
        y = torch.randint(0, NUM_CLASSES, (shape[0],), device=device)
        fns = [lambda fn=fn: fn(x, y) for fn in impls.values()]
        for name, timing in zip(impls, measure(fns, device, budget_s=MEASURE_S[preset])):
            rows.append({"impl": name, "shape": list(shape), "median_ms": timing.median_ms, "q1_ms": timing.q1_ms,
                         "q3_ms": timing.q3_ms, "reps": timing.reps})
    return {"environment": env.describe(device), "preset": preset, "not_timed": not_timed, "rows": rows}


def markdown(record: dict) -> str:
    shapes = sorted({tuple(row["shape"]) for row in record["rows"]})
    impls = list(dict.fromkeys(row["impl"] for row in record["rows"]))
    median = {(row["impl"], tuple(row["shape"])): row["median_ms"] for row in record["rows"]}
    lines = [f"CutMix, one mix of a batch, forward, on {record['environment']['device_name']} (median ms)", "",
             "| implementation | " + " | ".join("x".join(map(str, s)) for s in shapes) + " |",
             "|---|" + "---:|" * len(shapes)]
    for impl in impls:
        lines.append(f"| {impl} | " + " | ".join(f"{median[impl, s]:.3f}" for s in shapes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cutmix", description=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", dest="preset", action="store_const", const="smoke", default="full",
                        help="tiny shapes, seconds: checks the harness, not the kernels")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"folder for the JSON (default {RESULTS})")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    record = run(args.preset, device)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{env.result_stem(record['environment'], args.preset)}-cutmix.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    for name, reason in record["not_timed"].items():
        print(f"  not timed: {name}: {reason}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    if args.markdown:
        print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
