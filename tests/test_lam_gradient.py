"""A ``lam`` that requires grad gets the same treatment on every backend that runs here.

- The loss sees lam only through the relevance of each mix (SPEC §3), which the compiled
  backends declare not differentiable (csrc/autograd.cpp): lam is sampled data, and SPEC §6
  defines gradients for the logits alone. So no backend may differentiate the loss in lam.
- The mix is differentiable in lam on the compiled backends (csrc/autograd.cpp) and in the
  reference, so it must be on every backend.
"""

from __future__ import annotations

import pytest
import torch

import rankmixup_ops as rmx
from rankmixup_ops.backends import BACKENDS

RUNNING = [name for name in BACKENDS if rmx.available_backends()[name].available
           and rmx.backends._load(name).unsupported(torch.device("cpu")) is None]
B, C, K = 4, 5, 2


def _problem():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(B, C, generator=gen, dtype=torch.float64)
    mix_logits = torch.randn(K * B, C, generator=gen, dtype=torch.float64)
    index = torch.stack([torch.randperm(B, generator=gen) for _ in range(K)])
    lam = torch.tensor([[0.2, 0.9, 0.4, 0.6], [0.7, 0.3, 0.5, 0.1]], requires_grad=True)
    return logits, mix_logits, torch.tensor([0, 3, 2, 1]), lam, index


@pytest.mark.parametrize("logits_need_grad", [True, False])
@pytest.mark.parametrize("backend", RUNNING)
def test_loss_is_not_differentiable_in_lam(backend, logits_need_grad):
    logits, mix_logits, targets, lam, index = _problem()
    logits.requires_grad_(logits_need_grad)
    out = rmx.rankmixup_loss(logits, mix_logits, targets, lam, index, mode="mndcg", backend=backend)
    assert out.loss.requires_grad == logits_need_grad
    if logits_need_grad:
        out.loss.backward()
        assert lam.grad is None and logits.grad is not None


@pytest.mark.parametrize("backend", [name for name in RUNNING if name != "reference"])
def test_mix_is_differentiable_in_lam_like_the_reference(backend):
    x = torch.randn(B, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad = torch.randn(K * B, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = {}
    for name in (backend, "reference"):
        lam, index = _problem()[3:]
        rmx.mix(x, lam, index, backend=name).backward(grad)
        grads[name] = lam.grad
    assert grads[backend] is not None
    torch.testing.assert_close(grads[backend], grads["reference"])
