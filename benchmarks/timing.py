"""The one way every number in the benchmark is measured.

GPU: each call is bracketed by CUDA events (device time, after warm-up; the caches are not
flushed between calls — small cases stay in L2 as they do in training, where the logits were
just written; large ones exceed it anyway). CPU: each call is timed with ``perf_counter``.
The implementations compared on a case are timed in interleaved rounds; the number of rounds
adapts to the cost of one call, within a time budget per measurement.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    reps: int

    @classmethod
    def of(cls, samples_ms: list[float]) -> Timing:
        q1, _, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
        return cls(statistics.median(samples_ms), q1, q3, min(samples_ms), max(samples_ms), len(samples_ms))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns: Sequence[Callable[[], object]], device: torch.device, *, budget_s: float, min_reps: int = 5,
            max_reps: int = 1000) -> list[Timing]:
    """Times each of ``fns`` after warm-up, interleaved: every round calls each function once, in
    a random order, so all of them are timed over the same window of time, and a burst of other
    work on a shared machine slows them alike instead of whichever happened to run then.

    Warm-up runs each function at least three times and for its share of 10% of the budget, so
    that lazy initialisation (Triton autotuning, allocator growth) is not timed; the warm-up
    rates pick the number of rounds: at least ``min_reps``, more while the rounds fit ``budget_s``.
    """
    per_call_s = []
    for fn in fns:
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < 0.1 * budget_s / len(fns):
            fn()
            synchronize(device)
            calls += 1
        per_call_s.append((time.perf_counter() - start) / calls)
    reps = max(min_reps, min(max_reps, int(0.9 * budget_s / sum(per_call_s))))

    # Each round calls the functions in a new (seeded) random order: a call finds the caches as
    # the call before it left them (on the CPU, a torch.compile'd function or the eager
    # reference leaves them cold for the next), and a fixed order would charge that to whichever
    # function always came next.
    shuffler = random.Random(0)
    orders = [shuffler.sample(range(len(fns)), len(fns)) for _ in range(reps)]
    if device.type == "cuda":
        events = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in fns]
                  for _ in range(reps)]
        for order, round_events in zip(orders, events):
            for i in order:
                begin, end = round_events[i]
                begin.record()
                fns[i]()
                end.record()
        torch.cuda.synchronize(device)
        samples = [[begin.elapsed_time(end) for begin, end in column] for column in zip(*events)]
    else:
        samples = [[] for _ in fns]
        for order in orders:
            for i in order:
                begin = time.perf_counter()
                fns[i]()
                samples[i].append((time.perf_counter() - begin) * 1e3)
    return [Timing.of(column) for column in samples]


def as_cuda_graph(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` captured in a CUDA graph; the returned callable replays it. Replays skip the
    Python and launch overhead, which dominates small cases. ``fn`` must have been run
    (warmed up) before; it is run twice more on a side stream, as capture requires."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Memory one call allocates at its peak above what was allocated before it (GPU only:
    on the CPU tensors come from the system allocator, which neither torch nor tracemalloc,
    which sees only Python's own allocator, accounts for)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def copy_bandwidth(device: torch.device, *, budget_s: float) -> float:
    """Bytes/s of ``dst.copy_(src)`` (one read, one write per byte) on a buffer far larger than
    the caches: the practical ceiling the floor bytes of each case are compared with."""
    nbytes = 1 << 30 if device.type == "cuda" else 1 << 26
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    (timing,) = measure([lambda: dst.copy_(src)], device, budget_s=budget_s)
    return 2 * nbytes / (timing.median_ms * 1e-3)
