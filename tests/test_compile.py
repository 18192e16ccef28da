"""torch.compile and autocast: a RankMixup training step compiles with fullgraph=True and no
graph break on every backend for the CPU, with the gradients of eager mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rankmixup_ops as rmx

B, K, C, FEATURES = 8, 3, 5, 6
CPU_BACKENDS = [name for name in ("reference", "cpu") if rmx.available_backends()[name].available]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, C))


def _batch(batch=B):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, FEATURES, generator=gen)
    y = torch.randint(0, C, (batch,), generator=gen)
    y[2] = -100
    lam, index = rmx.sample_mixup(batch, K, 1.0, per_sample=True, generator=gen)
    return x, y, lam, index


def _step(model, backend, mode, weighted=False):
    """mix -> model -> loss (with class weights if `weighted`); torch.compile traces it and
    AOTAutograd compiles its backward."""
    weight = torch.linspace(0.5, 2.0, C) if weighted else None

    def step(x, y, lam, index):
        mixed = rmx.mix(x, lam, index, backend=backend)
        logits, mix_logits = model(x), model(mixed)
        return rmx.rankmixup_loss(logits, mix_logits, y, lam, index, mode=mode, margin=1.0, weight=weight,
                                  label_smoothing=0.1 if weighted else 0.0, backend=backend)

    return step


def _train_step(step, batch):
    out = step(*batch)
    out.loss.backward()
    return tuple(t.detach() for t in out)


@pytest.mark.parametrize("mode,weighted", [("mndcg", False), ("mrl", False), ("mndcg", True)],
                         ids=["mndcg", "mrl", "mndcg-class-weights"])
@pytest.mark.parametrize("backend", ["auto", *CPU_BACKENDS])
def test_training_step_compiles_without_graph_breaks(backend, mode, weighted):
    model = _model()
    explanation = torch._dynamo.explain(_step(model, backend, mode, weighted))(*_batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons

    eager_model, compiled_model = _model(), _model()
    eager = _train_step(_step(eager_model, backend, mode, weighted), _batch())
    torch._dynamo.reset()
    compiled = _train_step(torch.compile(_step(compiled_model, backend, mode, weighted), fullgraph=True), _batch())
    torch.testing.assert_close(compiled, eager)
    for got, expected in zip(compiled_model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(got.grad, expected.grad)


@pytest.mark.parametrize("backend", CPU_BACKENDS)  # ("auto" is "cpu" here: the test above covers its choice)
def test_training_step_compiles_once_with_dynamic_shapes(backend):
    """torch.compile(dynamic=True): the sizes are symbolic, and so are the scalars Dynamo reads
    (the options' defaults among them); one graph serves two batch sizes, as eager computes."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    eager_model, compiled_model = _model(), _model()
    eager_step = _step(eager_model, backend, "mndcg", weighted=True)
    compiled_step = torch.compile(_step(compiled_model, backend, "mndcg", weighted=True), fullgraph=True,
                                  dynamic=True, backend=counter)
    compiles = []
    for batch in (B, 13):
        eager_model.zero_grad(), compiled_model.zero_grad()
        eager = _train_step(eager_step, _batch(batch))
        torch.testing.assert_close(_train_step(compiled_step, _batch(batch)), eager)
        for got, expected in zip(compiled_model.parameters(), eager_model.parameters(), strict=True):
            torch.testing.assert_close(got.grad, expected.grad)
        compiles.append(counter.frame_count)
    assert compiles[0] >= 1 and compiles[1] == compiles[0], compiles  # no recompile for the second size


def test_sample_mixup_compiles_without_graph_breaks():
    explanation = torch._dynamo.explain(lambda: rmx.sample_mixup(B, K, 1.0))()
    assert explanation.graph_break_count == 0, explanation.break_reasons


GPU_BACKENDS = (
    [name for name in ("triton", "cuda") if rmx.available_backends()[name].available]
    if torch.cuda.is_available()
    else []
)
AUTOCAST_CASES = [("cpu", torch.bfloat16, name) for name in CPU_BACKENDS] + [
    pytest.param("cuda", dtype, name, marks=pytest.mark.gpu)
    for name in GPU_BACKENDS
    for dtype in (torch.bfloat16, torch.float16)
]


@pytest.mark.parametrize("device,dtype,backend", AUTOCAST_CASES)
def test_autocast_low_precision_logits_use_float32_math(device, dtype, backend):
    model = _model().to(device)
    x, y, lam, index = (t.to(device) for t in _batch())
    with torch.autocast(device, dtype=dtype):
        logits, mix_logits = model(x), model(rmx.mix(x, lam, index, backend=backend))
        out = rmx.rankmixup_loss(logits, mix_logits, y, lam, index, backend=backend)
    assert logits.dtype == dtype and out.loss.dtype == torch.float32
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # The loss over low-precision logits equals the float32 reference on the same (rounded) logits.
    expected = rmx.rankmixup_loss(logits.float(), mix_logits.float(), y, lam, index, backend="reference")
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-6)
