"""Runs the cases: every implementation, both passes, one row each, within a time budget."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable

import torch

import rankmixup_ops

from .shapes import PASSES, Case
from .timing import as_cuda_graph, measure, peak_memory_bytes, synchronize
from .workloads import COMPILED, REFERENCE, Workload


def backends_for(device: torch.device, requested: Iterable[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The fused backends to time on ``device`` and, for every other one, why not.

    The list comes from ``available_backends()``; a backend that is installed but cannot run
    on this device is found out by a tiny call (the public API's own device check). Triton on
    CPU tensors would run in its interpreter, a test tool, so it is never timed there.
    """
    chosen, reasons = [], {}
    x = torch.zeros(2, 1, device=device)
    lam, index = rankmixup_ops.sample_mixup(2, 1, 1.0, device=device)
    for name, status in rankmixup_ops.available_backends().items():
        if name == REFERENCE:
            continue  # timed directly, as the baseline
        if requested is not None and name not in requested:
            reasons[name] = "not requested (--backends)"
        elif not status.available:
            reasons[name] = status.reason
        elif name == "triton" and device.type == "cpu":
            reasons[name] = "Triton on CPU tensors is its interpreter (a test tool), not timed"
        else:
            try:
                rankmixup_ops.mix(x, lam, index, backend=name)
                chosen.append(name)
            except Exception as error:  # noqa: BLE001 - usually the API's "cannot run on <device>"
                reasons[name] = f"{type(error).__name__}: {error}"
    return chosen, reasons


def run_case(case: Case, impls: list[str], device: torch.device, *, measure_s: float,
             copy_bps: float) -> list[dict]:
    """One row per (implementation, pass) of ``case``, speedups filled in; ``measure_s`` is the
    seconds of timed calls per implementation and pass."""
    workload = Workload(case, device)
    impls = [impl for impl in impls if workload.supports(impl)]
    rows = []
    for pass_ in PASSES:
        rows += _measure_pass(workload, impls, pass_, device, measure_s=measure_s, copy_bps=copy_bps)
    return rows


def _measure_pass(workload: Workload, impls: list[str], pass_: str, device: torch.device, *, measure_s: float,
                  copy_bps: float) -> list[dict]:
    """The implementations side by side on one pass: each one's first call (and failure, if it
    fails), then all of them timed together, then per implementation its peak memory and, for
    small cases on a GPU, the same timings of CUDA-graph replays."""
    case = workload.case
    rows, steps = {}, {}
    for impl in impls:
        rows[impl] = {
            "op": case.op, "mode": case.mode or None, "batch": case.batch, "num_mix": case.num_mix,
            "classes": case.classes or None, "feat": list(case.feat) or None,
            "dtype": str(case.dtype).removeprefix("torch."), "pass": pass_, "impl": impl, "case": case.label,
            "floor_bytes": case.floor_bytes(pass_),
        }
        with _failure_recorded(rows[impl]):
            step = workload.step(impl, pass_)
            begin = time.perf_counter()
            step()  # compiles torch.compile; loads and autotunes kernels
            synchronize(device)
            rows[impl]["first_call_s"] = time.perf_counter() - begin
            steps[impl] = step

    if steps:
        with _failure_recorded(*(rows[impl] for impl in steps)):
            timings = measure(list(steps.values()), device, budget_s=measure_s * len(steps))
            for impl, timing in zip(steps, timings):
                row = rows[impl]
                row.update(status="ok", **dataclasses.asdict(timing))
                row["bytes_per_s"] = row["floor_bytes"] / (timing.median_ms * 1e-3)
                row["copy_fraction"] = row["bytes_per_s"] / copy_bps
    timed = {impl: step for impl, step in steps.items() if rows[impl].get("status") == "ok"}
    for impl, step in timed.items():
        rows[impl]["peak_memory_bytes"] = peak_memory_bytes(step, device)

    if case.graph and device.type == "cuda":
        graphs = {}
        for impl, step in timed.items():
            try:
                graphs[impl] = as_cuda_graph(step, device)
            except Exception as error:  # noqa: BLE001 - a step that cannot be captured keeps its eager timing
                rows[impl]["graph_error"] = f"{type(error).__name__}: {error}"[:500]
        if graphs:
            for impl, timing in zip(graphs, measure(list(graphs.values()), device, budget_s=measure_s * len(graphs))):
                rows[impl]["graph_median_ms"] = timing.median_ms

    if device.type == "cuda":
        torch.cuda.empty_cache()  # the CUDA graphs' memory pools go back to the device
    _add_speedups(list(rows.values()))
    return list(rows.values())


@contextlib.contextmanager
def _failure_recorded(*rows: dict):
    """Runs the block; if it fails, marks ``rows`` ``oom`` or ``error`` (with the message)
    instead of ending the run: one implementation failing must not lose the others' numbers."""
    try:
        yield
    except Exception as error:  # noqa: BLE001
        oom = isinstance(error, torch.OutOfMemoryError)
        if oom:
            torch.cuda.empty_cache()  # give the failed call's blocks back before the next one
        message = "out of memory" if oom else f"{type(error).__name__}: {error}"[:500]
        for row in rows:
            row.update(status="oom" if oom else "error", error=message)
            print(f"  {row['impl']} {row['pass']} {row['case']}: {message}", file=sys.stderr)


def _add_speedups(rows: list[dict]) -> None:
    """Median of the eager reference (and of torch.compile) over each row's median; None for a
    baseline against itself and where either was not measured."""
    medians = {row["impl"]: row.get("median_ms") for row in rows}
    for row in rows:
        for key, baseline in (("speedup_vs_reference", REFERENCE), ("speedup_vs_compile", COMPILED)):
            ok = row["impl"] != baseline and row.get("median_ms") and medians.get(baseline)
            row[key] = medians[baseline] / row["median_ms"] if ok else None


def run(cases: list[Case], impls: list[str], device: torch.device, *, budget_s: float | None, measure_s: float,
        copy_bps: float, on_case: Callable[[list[dict]], None]) -> list[tuple[Case, str]]:
    """Runs ``cases`` in order, handing each case's rows to ``on_case``. Returns the cases not
    measured, with the reason: inputs too large, or the remaining ones once ``budget_s`` passed."""
    start, skipped = time.perf_counter(), []
    for position, case in enumerate(cases):
        elapsed = time.perf_counter() - start
        if budget_s is not None and elapsed > budget_s:
            return skipped + [(rest, f"time budget of {budget_s:.0f} s spent") for rest in cases[position:]]
        print(f"[{elapsed:6.1f} s] {case.label}", file=sys.stderr, flush=True)
        torch._dynamo.reset()  # see Workload: each case compiles afresh
        try:
            on_case(run_case(case, impls, device, measure_s=measure_s, copy_bps=copy_bps))
        except torch.OutOfMemoryError:  # the inputs alone do not fit
            skipped.append((case, "its inputs do not fit in device memory"))
            torch.cuda.empty_cache()
    return skipped
