"""float64 in, float64 throughout: with float64 logits (or x), lam and the relevance stay
float64 on every backend that runs here, so that lam values float32 cannot hold reach the rank
term and the mix unrounded. (The GPU backends run the same tests under gpu-check.)"""

from __future__ import annotations

import pytest
import torch

import rankmixup_ops as rmx
from rankmixup_ops import reference
from rankmixup_ops._types import LossOptions
from rankmixup_ops.backends import BackendUnavailable, resolve

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
# (backend, device): every backend on the tensors it runs on.
CASES = [pytest.param(name, "cpu", id=f"{name}-cpu") for name in ("reference", "cpu", "triton")] + [
    pytest.param(name, "cuda", marks=GPU, id=f"{name}-cuda") for name in ("reference", "cuda", "triton")
]
BATCH, NUM_MIX, CLASSES = 12, 3, 7
# Far tighter than float32's rounding of lam (about 1e-8 relative in the rank term), and far
# looser than float64's.
RTOL = 1e-12


def _backend(name: str, device: str):
    try:
        return resolve("test", name, torch.device(device))
    except (BackendUnavailable, ValueError) as error:
        pytest.skip(str(error))


def _problem(device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(BATCH, CLASSES, generator=gen, dtype=torch.float64) * 2
    mix_logits = torch.randn(NUM_MIX * BATCH, CLASSES, generator=gen, dtype=torch.float64) * 2
    targets = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    index = torch.stack([torch.randperm(BATCH, generator=gen) for _ in range(NUM_MIX)])
    lam = torch.rand(NUM_MIX, BATCH, generator=gen, dtype=torch.float64)
    assert not torch.equal(lam, lam.float().double())  # values float32 cannot hold
    return [t.to(device) for t in (logits, mix_logits, targets, lam, index)]


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_derived_relevance_is_float64(backend, device):
    """The relevance each backend derives from float64 lam is the float64 one: the loss equals,
    bit for bit, the loss given reference.relevance's float64 relevances."""
    impl = _backend(backend, device)
    logits, mix_logits, targets, lam, index = _problem(device)
    options = LossOptions(mode="mndcg", reduction="none")
    derived = impl.loss(logits, mix_logits, targets, lam, index, options).loss
    rel = reference.relevance(targets, lam, index)
    assert rel.dtype == torch.float64
    given = impl.loss(logits, mix_logits, targets, rel, None, options).loss
    assert derived.dtype == torch.float64
    torch.testing.assert_close(derived, given, rtol=0, atol=0)


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_mndcg_sees_float64_lam_unrounded(backend, device):
    _backend(backend, device)
    logits, mix_logits, targets, lam, index = _problem(device, seed=1)
    logits.requires_grad_()
    out = rmx.mndcg_loss(logits, mix_logits, targets, lam, index, reduction="none", backend=backend)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    exact = reference.rankmixup_loss(logits, mix_logits, targets, lam, index, mode="mndcg", ce_weight=0.0,
                                     alpha=1.0, reduction="none").loss
    (exact_grad,) = torch.autograd.grad(exact.sum(), logits)
    assert out.dtype == torch.float64 and grad.dtype == torch.float64
    torch.testing.assert_close(out, exact, rtol=RTOL, atol=RTOL)
    torch.testing.assert_close(grad, exact_grad, rtol=RTOL, atol=RTOL)
    # The tolerance tells the two apart: lam rounded to float32 moves the rank term by more.
    rounded = reference.rankmixup_loss(logits, mix_logits, targets, lam.float().double(), index, mode="mndcg",
                                       ce_weight=0.0, alpha=1.0, reduction="none").loss
    assert (rounded - exact).abs().max() > 100 * RTOL * exact.abs().max()


@pytest.mark.parametrize(("backend", "device"), CASES)
def test_mix_sees_float64_lam_unrounded(backend, device):
    _backend(backend, device)
    x, _, _, lam, index = _problem(device, seed=2)
    out = rmx.mix(x, lam, index, backend=backend)
    exact = (lam[..., None] * x[None] + (1 - lam[..., None]) * x[index]).reshape(NUM_MIX * BATCH, CLASSES)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, exact, rtol=RTOL, atol=RTOL)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_float32_logits_take_float64_lam_as_float32(backend):
    """The other direction: narrower data computes in float32, whatever lam's dtype."""
    _backend(backend, "cpu")
    logits, mix_logits, targets, lam, index = _problem("cpu", seed=3)
    out = rmx.rankmixup_loss(logits.float(), mix_logits.float(), targets, lam, index, backend=backend)
    want = rmx.rankmixup_loss(logits.float(), mix_logits.float(), targets, lam.float(), index, backend=backend)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, want.loss, rtol=0, atol=0)
