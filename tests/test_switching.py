"""timm's switching options in ``mixup`` and ``Mixup``: ``cutmix_alpha``, ``cutmix_minmax``,
``prob``, ``switch_prob`` and per-sample draws. Every mix must be exactly one of: x itself
(``lam = 1``), a mixup of x[b] and its partner with the returned ``lam``, or a CutMix (x[b] with
one rectangle of the partner, ``lam = 1 - area / (H * W)``); the choices must come at the asked
rates, on the device, reproducibly.

Fresh random inputs every run (backend_cases.SEED, named in every failure).
"""

from __future__ import annotations

import pytest
import torch
from backend_cases import SEED, gen

import rankmixup_ops as rmx

B, C, H, W = 6, 2, 9, 11


def _images(batch=B, *, channels_last=False, seed=0):
    x = torch.randn(batch, C, H, W, generator=gen(seed), dtype=torch.float64)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _kind(out_row, x, b, j, lam) -> str:
    """Which kind of mix ``out_row`` is (of ``x[b]`` with partner ``j != b``, coefficient ``lam``)."""
    if lam == 1 and torch.equal(out_row, x[b]):
        return "none"
    if torch.allclose(out_row, lam * x[b] + (1 - lam) * x[j], rtol=1e-12, atol=1e-12):
        return "mixup"
    differs = (out_row != x[b]).any(dim=0)  # (H, W): the pasted pixels (x is continuous: all differ)
    rows, cols = differs.any(dim=1).nonzero().flatten(), differs.any(dim=0).nonzero().flatten()
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = torch.zeros_like(differs)
    box[top:bottom, left:right] = True
    assert torch.equal(differs, box), f"seed {SEED}: the pasted pixels are not one rectangle"
    assert torch.equal(out_row[:, box], x[j][:, box]), f"seed {SEED}: the box does not hold the partner's pixels"
    assert lam == pytest.approx(1 - box.sum().item() / (H * W), abs=1e-6), f"seed {SEED}: lam is not area-corrected"
    return "cutmix"


def _kinds(batch_out, x) -> list[str]:
    """The kind of every mix whose partner is another sample."""
    inputs, lam, index = batch_out
    num_mix = index.shape[0]
    out = inputs.view(num_mix, x.shape[0], *x.shape[1:])
    return [_kind(out[k, b], x, b, index[k, b].item(), lam[k, b].item())
            for k in range(num_mix) for b in range(x.shape[0]) if index[k, b] != b]


def test_defaults_are_the_papers_mixup_unchanged():
    x = _images()
    got = rmx.mixup(x, 3, 2.0, generator=torch.Generator().manual_seed(SEED))
    lam, index = rmx.sample_mixup(B, 3, 2.0, generator=torch.Generator().manual_seed(SEED))
    torch.testing.assert_close(got.lam, lam, rtol=0, atol=0)
    torch.testing.assert_close(got.inputs, rmx.mix(x, lam, index), rtol=0, atol=0)


@pytest.mark.parametrize("options", [dict(), dict(alpha=0.0, cutmix_alpha=1.0), dict(cutmix_alpha=1.0)],
                         ids=["mixup", "cutmix", "both"])
def test_prob_zero_applies_nothing(options):
    x = _images()
    out = rmx.mixup(x, 4, prob=0.0, generator=gen(1), **options)
    assert torch.equal(out.lam, torch.ones(4, B))
    torch.testing.assert_close(out.inputs, x.repeat(4, 1, 1, 1), rtol=0, atol=0)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cutmix_alone_pastes_area_corrected_boxes(per_sample, channels_last):
    x = _images(channels_last=channels_last)
    out = rmx.mixup(x, 5, alpha=0.0, cutmix_alpha=1.0, per_sample=per_sample, generator=gen(2))
    assert set(_kinds(out, x)) <= {"cutmix", "none"}
    assert out.inputs.is_contiguous(memory_format=torch.channels_last) == channels_last
    if not per_sample:  # one box per mix: every sample of a mix keeps the same share
        assert torch.equal(out.lam, out.lam[:, :1].expand_as(out.lam))


def test_switch_prob_picks_cutmix_at_its_rate():
    """Per mix (timm's mode="batch"), 400 mixes: the CutMix share is switch_prob, within 5 sigma."""
    x = _images()
    num_mix, switch_prob = 400, 0.3
    out = rmx.mixup(x, num_mix, alpha=1.0, cutmix_alpha=1.0, switch_prob=switch_prob, generator=gen(3))
    inputs = out.inputs.view(num_mix, B, C, H, W)
    kinds = []
    for k in range(num_mix):  # a mix's kind, read off a sample whose partner is another one
        moved = [b for b in range(B) if out.index[k, b] != b]  # none: the identity (1 in 720)
        if moved:
            b = moved[0]
            kinds.append(_kind(inputs[k, b], x, b, out.index[k, b].item(), out.lam[k, b].item()))
    # prob = 1: a mix left as x is a CutMix whose box came out empty (a Beta draw near 1).
    share = (kinds.count("cutmix") + kinds.count("none")) / len(kinds)
    sigma = (switch_prob * (1 - switch_prob) / len(kinds)) ** 0.5
    assert abs(share - switch_prob) < 5 * sigma, f"seed {SEED}: CutMix share {share}"


def test_per_sample_switching_mixes_kinds_within_a_mix():
    """timm's mode="elem": each sample of a mix draws its own kind and coefficient."""
    x = _images(64, seed=4)
    out = rmx.mixup(x, 2, alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, prob=0.8, per_sample=True, generator=gen(5))
    kinds = _kinds(out, x)
    assert {"mixup", "cutmix", "none"} <= set(kinds), f"seed {SEED}: {set(kinds)}"
    assert out.lam[0].unique().numel() > 10


def test_prob_applies_at_its_rate():
    x = _images()
    num_mix, prob = 400, 0.7
    out = rmx.mixup(x, num_mix, alpha=1.0, prob=prob, generator=gen(6))
    applied = (out.lam[:, 0] != 1).float().mean().item()
    assert abs(applied - prob) < 5 * (prob * (1 - prob) / num_mix) ** 0.5, f"seed {SEED}: applied share {applied}"


@pytest.mark.parametrize("minmax", [(0.2, 0.6), (0.0, 0.1), (0.9, 1.0)])
def test_cutmix_minmax_bounds_the_box_sides(minmax):
    x = _images(8, seed=7)
    out = rmx.mixup(x, 50, alpha=0.0, cutmix_minmax=minmax, per_sample=True, generator=gen(8))
    assert set(_kinds(out, x)) <= {"cutmix", "none"}
    boxes, lam, _ = rmx.sample_cutmix(H, W, 8, 200, 1.0, minmax=minmax, per_sample=True, generator=gen(9))
    for side, size in ((boxes[..., 1] - boxes[..., 0], H), (boxes[..., 3] - boxes[..., 2], W)):
        low = int(size * minmax[0])
        assert side.min() >= low and side.max() <= max(int(size * minmax[1]) - 1, low)
    assert (boxes[..., 0] >= 0).all() and (boxes[..., 1] <= H).all() and (boxes[..., 2] >= 0).all()
    assert (boxes[..., 3] <= W).all()
    area = (boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2])
    torch.testing.assert_close(lam, (1 - area.double() / (H * W)).float(), rtol=0, atol=0)


def test_switching_is_reproducible_and_differentiable():
    """Seeded: the same draw twice. Every output pixel is a convex combination of x's pixels, so
    d sum(out) / dx sums to the number of output elements."""
    x = _images().requires_grad_()
    options = dict(alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, prob=0.9, per_sample=True)
    first = rmx.mixup(x, 3, generator=gen(10), **options)
    second = rmx.mixup(x, 3, generator=gen(10), **options)
    assert torch.equal(first.inputs, second.inputs) and torch.equal(first.lam, second.lam)
    first.inputs.sum().backward()
    assert x.grad.sum().item() == pytest.approx(first.inputs.numel(), rel=1e-12)


def test_module_forwards_the_options():
    x = _images()
    module = rmx.Mixup(3, 1.0, cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.5), prob=0.5, switch_prob=0.25,
                       per_sample=True, generator=gen(11))
    out = module(x)
    want = rmx.mixup(x, 3, 1.0, cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.5), prob=0.5, switch_prob=0.25,
                     per_sample=True, generator=gen(11))
    assert torch.equal(out.inputs, want.inputs) and torch.equal(out.lam, want.lam)
    assert "switch_prob=0.25" in repr(module) and "cutmix_minmax=(0.2, 0.5)" in repr(module)


@pytest.mark.parametrize(
    "options,error,match",
    [
        (dict(cutmix_alpha=-1.0), ValueError, r"cutmix_alpha must be in \[0.0, inf\]"),
        (dict(prob=1.5), ValueError, r"prob must be in \[0.0, 1.0\]"),
        (dict(switch_prob=-0.1), ValueError, r"switch_prob must be in \[0.0, 1.0\]"),
        (dict(cutmix_minmax=0.5), TypeError, "cutmix_minmax must be None or a pair"),
        (dict(cutmix_minmax=(0.5, 0.2)), ValueError, "cutmix_minmax must have low < high"),
        (dict(cutmix_minmax=(0.2, 1.5)), ValueError, r"cutmix_minmax\[1\] must be in \[0.0, 1.0\]"),
        (dict(prob="0.5"), TypeError, "prob must be a real number"),
        (dict(per_sample=1), TypeError, "per_sample must be a bool"),
    ],
    ids=["cutmix_alpha<0", "prob>1", "switch_prob<0", "minmax not a pair", "minmax reversed", "minmax>1", "prob str",
         "per_sample int"],
)
def test_bad_options_are_refused(options, error, match):
    with pytest.raises(error, match=f"^mixup: {match}"):
        rmx.mixup(_images(), 2, **options)
    with pytest.raises(error, match=f"^Mixup: {match}"):
        rmx.Mixup(2, **options)


def test_cutmix_needs_images():
    with pytest.raises(ValueError, match="^mixup: x must have shape \\(B, C, H, W\\)"):
        rmx.mixup(torch.randn(4, 7), 2, cutmix_alpha=1.0)


@pytest.mark.parametrize("backend", ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_backend_builds_the_references_mixes(backend, channels_last):
    """The draws do not depend on the backend; the mixes and their gradient must match the
    reference's on each (forward within float32 rounding: mix computes in float32)."""
    device = "cuda" if backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu"
    status = rmx.available_backends()[backend]
    if not status.available:
        pytest.skip(status.reason)
    if backend == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = _images(channels_last=channels_last).float().to(device)
    options = dict(alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, prob=0.9, per_sample=True)
    grad = torch.randn(3 * B, C, H, W, generator=gen(12)).to(device)
    results = []
    for name in (backend, "reference"):
        leaf = x.detach().clone().requires_grad_()
        generator = torch.Generator(device).manual_seed(SEED)
        out = rmx.mixup(leaf, 3, generator=generator, backend=name, **options)
        out.inputs.backward(grad)
        results.append((out.inputs.detach(), out.lam, leaf.grad))
    (got, got_lam, got_grad), (want, want_lam, want_grad) = results
    assert torch.equal(got_lam, want_lam)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=lambda m: f"seed {SEED}: {m}")
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {SEED}: {m}")


def test_a_cutmix_row_keeps_x_where_the_partner_is_not_finite():
    """With both kinds on, a CutMix row outside its box is x[b] exactly, even where the partner
    holds inf (a mixup coefficient of 1 there would make those pixels 0 * inf = NaN)."""
    x = _images(8, seed=15)
    x[3, :, 0, 0] = float("inf")
    out = rmx.mixup(x, 40, alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, per_sample=True, generator=gen(16))
    assert "cutmix" in _kinds(out, x)  # each CutMix row: x[b] but for one rectangle of the partner
    assert not out.inputs.isnan().any(), f"seed {SEED}"


def test_a_mix_not_applied_is_x_where_the_partner_is_not_finite():
    """Mixup alone with prob < 1: a mix not applied is x[b] exactly, even where its partner holds
    inf (mix with lam = 1 would give 0 * inf = NaN there), and its gradient reaches x[b] alone."""
    x = torch.randn(8, 5, generator=gen(17), dtype=torch.float64)
    x[3, 0] = float("inf")
    leaf = x.clone().requires_grad_()
    out = rmx.mixup(leaf, 30, alpha=1.0, prob=0.5, per_sample=True, generator=gen(18))
    rows = out.inputs.detach().view(30, 8, 5)
    kept = out.lam == 1  # (K, B): 1 is never drawn from Beta(1, 1)
    assert kept.any() and (~kept).any(), f"seed {SEED}"
    torch.testing.assert_close(rows[kept], x.expand(30, 8, 5)[kept], rtol=0, atol=0)
    mixed = ~kept & (x[out.index].isfinite().all(-1)) & x.isfinite().all(-1)
    want = out.lam[..., None] * x + (1 - out.lam[..., None]) * x[out.index]
    # (lam is float32: mix rounds its coefficients as the public call passes them.)
    torch.testing.assert_close(rows[mixed], want[mixed], rtol=1e-6, atol=1e-6)
    upstream = torch.rand(30 * 8, 5, generator=gen(19), dtype=torch.float64)
    (grad,) = torch.autograd.grad(out.inputs, leaf, upstream)
    expected = torch.zeros_like(x)
    for k in range(30):
        for b in range(8):
            g, lam = upstream[k * 8 + b], out.lam[k, b]
            expected[b] += lam * g
            expected[out.index[k, b]] += (1 - lam) * g
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)
