"""Property-based comparison of every backend that runs here with the reference, over random
batch sizes, class counts, mixes, dtypes, strides, reductions, modes, ignore patterns and
logit scales (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rankmixup_ops as rmx

BACKENDS = [
    name
    for name in ("cpu", "triton")
    if rmx.available_backends()[name].available
    and rmx.backends._load(name).unsupported(torch.device("cpu")) is None
]

# Values and gradients of float32 backends against the float64 reference.
TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-7, atol=1e-9)}


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 9))
    classes = draw(st.integers(1, 40))
    num_mix = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    mix_logits = scale * torch.randn(num_mix * batch, classes, generator=gen, dtype=torch.float64)
    if draw(st.booleans()):  # ties: round the logits coarsely so maxima repeat
        logits, mix_logits = logits.round(), mix_logits.round()
    targets = torch.randint(0, classes, (batch,), generator=gen)
    targets[torch.rand(batch, generator=gen) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = -100
    lam, index = rmx.sample_mixup(batch, num_mix, 1.0, per_sample=draw(st.booleans()), generator=gen)
    options = dict(
        mode=draw(st.sampled_from(["mndcg", "mrl"])),
        score=draw(st.sampled_from(["logit", "prob"])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        alpha=draw(st.sampled_from([0.0, 0.1, 1.0])),
        margin=draw(st.sampled_from([0.0, 1.0, 2.0])),
        label_smoothing=draw(st.sampled_from([0.0, 0.1])),
    )
    transpose = draw(st.booleans())  # non-contiguous rows
    return logits, mix_logits, targets, lam, index, dtype, transpose, options


def _as_input(values: torch.Tensor, dtype, transpose: bool) -> torch.Tensor:
    if transpose:
        values = values.t().contiguous().t()
    return values.to(dtype).requires_grad_()


@pytest.mark.skipif(not BACKENDS, reason="no compiled or interpreted backend runs on the CPU here")
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_backend_matches_reference(backend, problem):
    logits64, mix64, targets, lam, index, dtype, transpose, options = problem
    results = {}
    for name, values_dtype in ((backend, dtype), ("reference", torch.float64)):
        raw = _as_input(logits64.to(dtype), values_dtype, transpose)  # both see the same rounded values
        mixed = _as_input(mix64.to(dtype), values_dtype, transpose)
        out = rmx.rankmixup_loss(raw, mixed, targets, lam, index, backend=name, **options)
        grads = torch.autograd.grad(out.loss.sum(), (raw, mixed), allow_unused=True)
        grads = tuple(torch.zeros_like(raw) if g is None else g for g in grads)
        results[name] = [t.double() for t in (*out, *grads)]
    for got, expected in zip(results[backend], results["reference"], strict=True):
        torch.testing.assert_close(got, expected, **TOLERANCE[dtype])
