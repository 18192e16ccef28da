"""CPU benchmarks: the compiled cpu backend against the eager reference and torch.compile of it,
forward + backward of the fused loss, at the paper's shapes and a large one; plus two floors
at the large shape: one read of all the logits and one write of their gradients (a copy of that
many bytes), and the same with one exp per logit (what bounds the loss on a CPU).
Run: ``make bench-cpu`` (pytest-benchmark; not part of `make test`).
"""

from __future__ import annotations

import os

import pytest
import torch

from rankmixup_ops import reference
from rankmixup_ops._types import BackendUnavailable, LossOptions

try:
    from rankmixup_ops.compiled import load_backend

    CPU = load_backend("cpu")
except BackendUnavailable as error:
    pytest.skip(str(error), allow_module_level=True)

# (B, K, C, mode): CIFAR-10/100 M-NDCG, CIFAR-10 MRL (the paper's K=1), and a large batch.
SHAPES = {
    "128x3x10-mndcg": (128, 3, 10, "mndcg"),
    "128x3x100-mndcg": (128, 3, 100, "mndcg"),
    "128x1x10-mrl": (128, 1, 10, "mrl"),
    "1024x3x1000-mndcg": (1024, 3, 1000, "mndcg"),
}


def _reference_loss(logits, mix_logits, targets, lam, index, mode):
    return reference.rankmixup_loss(logits, mix_logits, targets, lam, index, mode=mode).loss


def _cpu_loss(logits, mix_logits, targets, lam, index, mode):
    return CPU.loss(logits, mix_logits, targets, lam, index, LossOptions(mode=mode)).loss


_compiled_reference = torch.compile(_reference_loss, dynamic=False)
IMPLEMENTATIONS = {"cpu": _cpu_loss, "reference": _reference_loss, "compiled_reference": _compiled_reference}


def _inputs(batch, num_mix, classes):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, classes, generator=gen).requires_grad_()
    mix_logits = torch.randn(num_mix * batch, classes, generator=gen).requires_grad_()
    targets = torch.randint(0, classes, (batch,), generator=gen)
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)])
    lam = torch.rand(num_mix, 1, generator=gen).expand(num_mix, batch)
    return logits, mix_logits, targets, lam, index


def _load(when: str) -> dict:
    """The 1-minute load average: on a shared 2-core machine, other jobs' CPU time shows up in
    every timing (and OpenMP's two threads wait on each other), so each row records it."""
    return {f"loadavg_{when}": os.getloadavg()[0]}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(benchmark, shape, impl):
    batch, num_mix, classes, mode = SHAPES[shape]
    logits, mix_logits, targets, lam, index = _inputs(batch, num_mix, classes)
    loss_fn = IMPLEMENTATIONS[impl]

    def step():
        logits.grad = mix_logits.grad = None
        loss_fn(logits, mix_logits, targets, lam, index, mode).backward()

    for _ in range(3):  # warm-up (and compilation for compiled_reference)
        step()
    benchmark.extra_info.update(shape=shape, impl=impl, threads=torch.get_num_threads(), **_load("before"))
    benchmark(step)
    benchmark.extra_info.update(_load("after"))


FLOORS = {
    # Read every logit once and write every gradient once: a copy of (K+1)*B*C floats.
    "floor": lambda src, dst: dst.copy_(src),
    # The same bytes with one exp per logit (ATen's vectorised exp), which any softmax
    # gradient computes: on a CPU this, not memory, bounds the loss at large C.
    "exp_floor": lambda src, dst: torch.exp(src, out=dst),
}


@pytest.mark.parametrize("floor", FLOORS)
@pytest.mark.parametrize("shape", ["1024x3x1000-mndcg"])
def test_floor(benchmark, shape, floor):
    batch, num_mix, classes, _ = SHAPES[shape]
    src = torch.randn((num_mix + 1) * batch, classes)
    dst = torch.empty_like(src)
    benchmark.extra_info.update(shape=shape, impl=floor, bytes=2 * src.numel() * src.element_size(), **_load("before"))
    benchmark(FLOORS[floor], src, dst)
    benchmark.extra_info.update(_load("after"))
