"""Second derivatives (create_graph=True, as a gradient penalty on the inputs needs).

Through the mixing ops: mix_backward and paste_boxes_backward are differentiable, each through
its adjoint (the forward op), on every backend, and match the reference's autograd; through lam
mix's backward refuses instead of giving a silent zero. Through the loss: differentiable once on
the fused backends, whose gradients under create_graph are right and raise when differentiated,
rather than leave the loss's part of a second derivative out."""

from __future__ import annotations

import pytest
import torch
from backend_cases import gen, options, problem, reference_backend
from tolerances import gradient_tolerance

from rankmixup_ops import reference
from rankmixup_ops.backends import BackendUnavailable, resolve

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CASES = [pytest.param(name, "cpu", id=f"{name}-cpu") for name in ("cpu", "triton")] + [
    pytest.param(name, "cuda", marks=GPU, id=f"{name}-cuda") for name in ("cuda", "triton")
]


def _backend(name: str, device: str):
    try:
        return resolve("test", name, torch.device(device))
    except (BackendUnavailable, ValueError) as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("op", ["mix", "paste_boxes"])
@pytest.mark.parametrize(("name", "device"), CASES)
def test_second_derivative_matches_reference(name, device, op):
    backend = _backend(name, device)
    g = gen(31)
    x = torch.randn(5, 2, 4, 6, generator=g, dtype=torch.float64).to(device).requires_grad_()
    index = torch.stack([torch.randperm(5, generator=g) for _ in range(3)]).to(device)
    if op == "mix":
        pairing = torch.rand(3, 5, generator=g, dtype=torch.float64).to(device)
    else:  # boxes inside, across and outside the 4 x 6 image
        pairing = torch.randint(-2, 9, (3, 5, 4), generator=g).sort(dim=-1).values[..., [0, 2, 1, 3]].to(device)

    def second_derivative(fn):
        (grad,) = torch.autograd.grad(fn(x, pairing, index).pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(grad.pow(2).sum(), x)[0]

    want = second_derivative(getattr(reference, op))
    torch.testing.assert_close(second_derivative(getattr(backend, op)), want, rtol=1e-12, atol=1e-12)
    assert want.abs().max() > 0


@pytest.mark.parametrize(("name", "device"), CASES)
def test_through_lam_is_refused(name, device):
    backend = _backend(name, device)
    g = gen(32)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    lam = torch.rand(2, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
    index = torch.stack([torch.randperm(4, generator=g) for _ in range(2)]).to(device)
    (grad_x,) = torch.autograd.grad(backend.mix(x, lam, index).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative of mix's backward with respect to lam is not implemented"):
        torch.autograd.grad(grad_x.sum(), lam)


@pytest.mark.parametrize(("mode", "reduction"), [("mndcg", "mean"), ("mrl", "none")])
@pytest.mark.parametrize(("name", "device"), CASES)
def test_loss_is_differentiable_once(name, device, mode, reduction):
    backend = _backend(name, device)
    logits, mix_logits, targets, lam, index = problem(6, 2, 5, dtype=torch.float64, seed=33, device=device)
    opts = options(mode, reduction=reduction)
    # The logits come out of a layer (a scale here), as in a network, and the loss is weighted
    # per sample, as learning-to-reweight weights it.
    scale = torch.tensor(1.5, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.rand(6 if reduction == "none" else (), generator=gen(35), dtype=torch.float64).to(device)
    weight.requires_grad_()

    def gradients(impl, *, create_graph):
        wrt = (logits * scale, mix_logits * scale)
        loss = (weight * impl.loss(*wrt, targets, lam, index, opts).loss).sum()
        return torch.autograd.grad(loss, wrt, create_graph=create_graph)

    want = gradients(reference_backend(device), create_graph=False)
    got = gradients(backend, create_graph=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.detach(), w, **gradient_tolerance(torch.float64))
    # A penalty on the gradient, beside a term with a second derivative of its own, differentiated
    # with respect to the layer or the weight: the loss's part cannot be computed, and is refused
    # rather than left out.
    penalty = got[0].pow(2).sum() + got[1].pow(2).sum() + scale.pow(3) + weight.pow(3).sum()
    for wrt in (scale, weight):
        with pytest.raises(RuntimeError, match="the loss is differentiable once"):
            torch.autograd.grad(penalty, wrt, retain_graph=True)
    # The gradients are tensors of their own, not views: a hook or an optimiser may scale them in place.
    got[0].mul_(2)
    torch.testing.assert_close(got[0].detach(), 2 * want[0], **gradient_tolerance(torch.float64))


@pytest.mark.parametrize("mode", ["mndcg", "mrl"])
def test_reference_loss_has_a_second_derivative(mode):
    """What the fused backends' error points to: the reference differentiates twice, right."""
    logits, mix_logits, targets, lam, index = problem(4, 2, 3, dtype=torch.float64, seed=34)
    opts = options(mode, score="prob")._asdict()

    def loss(a, b):
        return reference.rankmixup_loss(a, b, targets, lam, index, **opts).loss

    assert torch.autograd.gradgradcheck(loss, (logits.requires_grad_(), mix_logits.requires_grad_()))
