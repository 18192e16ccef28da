"""``python -m benchmarks``: times every available backend of rankmixup_ops against the eager
reference and torch.compile of it, and writes JSON and plots (see benchmarks/README.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import rankmixup_ops

from . import env, report, shapes
from .runner import backends_for, run
from .timing import copy_bandwidth
from .workloads import COMPILED, LOSS_ONLY, REFERENCE

RESULTS = Path(__file__).resolve().parent / "results"
# Seconds of timed calls per (implementation, pass): enough for a stable median on a GPU,
# short enough for the CI-sized CPU run.
MEASURE_S = {"full": 0.2, "headline": 0.2, "quick": 0.15, "smoke": 0.02}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--headline", dest="preset", action="store_const", const="headline",
                      help="the large bfloat16 loss and the paper's shapes: what one GPU lease has time for")
    size.add_argument("--quick", dest="preset", action="store_const", const="quick",
                      help="CI-sized: a few shapes, about a minute on a 2-core CPU")
    size.add_argument("--smoke", dest="preset", action="store_const", const="smoke",
                      help="tiny shapes, seconds: checks the harness, not the kernels")
    parser.set_defaults(preset="full")
    parser.add_argument("--backends", help="comma-separated subset of the fused backends (default: every one "
                        "available on the device)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip torch.compile(reference) (its compilation dominates short runs)")
    parser.add_argument("--budget-s", type=float,
                        help="start no new case after this many seconds; the rest are recorded as skipped")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"folder for JSON and plots (default {RESULTS})")
    parser.add_argument("--markdown", action="store_true", help="print the headline table as Markdown")
    args = parser.parse_args(argv)
    if args.backends is not None:
        args.backends = args.backends.split(",")
        unknown = set(args.backends) - set(rankmixup_ops.available_backends())
        if unknown:
            parser.error(f"--backends: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The value checks synchronise with the device (and break CUDA-graph capture); what is
    # timed is the default hot path.
    os.environ.pop("RANKMIXUP_VALIDATE", None)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    fused, not_timed = backends_for(device, args.backends)
    # The drop-in class and the operator floor, wherever the device's compiled operator is timed.
    front_ends = list(LOSS_ONLY) if device.type in fused else []
    impls = [REFERENCE, *([COMPILED] if args.compile else []), *fused, *front_ends]
    cases, skipped = shapes.cases(args.preset, device.type)

    environment = env.describe(device)
    settings = {
        "preset": args.preset, "implementations": impls, "backends_not_timed": not_timed,
        "budget_s": args.budget_s, "measure_s": MEASURE_S[args.preset],
        "copy_bandwidth_bytes_per_s": copy_bandwidth(device, budget_s=1.0),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / env.result_stem(environment, args.preset)
    json_path = stem.with_suffix(".json")
    print(f"{environment['device_name']}: timing {', '.join(impls)} on {len(cases)} cases -> {json_path}",
          file=sys.stderr)
    for name, reason in not_timed.items():
        print(f"  not timed: {name}: {reason}", file=sys.stderr)
    if device.type == "cpu" and environment["load_average_1min"] > 0.5 * environment["cpu_threads"]:
        print(f"  warning: load average {environment['load_average_1min']:.1f} on {environment['cpu_threads']} "
              "threads: other work will skew the CPU timings", file=sys.stderr)

    rows: list[dict] = []

    def save(new_rows: list[dict]) -> None:
        rows.extend(new_rows)
        report.write_json(json_path, report.make_record(environment, settings, rows, skipped))

    skipped += run(cases, impls, device, budget_s=args.budget_s, measure_s=settings["measure_s"],
                   copy_bps=settings["copy_bandwidth_bytes_per_s"], on_case=save)
    record = report.make_record(environment, settings, rows, skipped)
    report.write_json(json_path, record)
    for path in [json_path, *report.plot(record, stem)]:
        print(f"wrote {path}", file=sys.stderr)
    if args.markdown:
        print(report.markdown(record))
    failed = [row for row in rows if row["status"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
