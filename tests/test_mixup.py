"""Sampling (lam, index) and the public mix / mixup / soft_targets."""

from __future__ import annotations

import math

import pytest
import torch

import rankmixup_ops as rmx


def _is_permutation_rows(index: torch.Tensor) -> bool:
    return bool((index.sort(dim=1).values == torch.arange(index.shape[1])).all())


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("batch,num_mix", [(1, 1), (7, 3), (128, 8)])
def test_sample_mixup_shapes_and_permutations(batch, num_mix, per_sample):
    lam, index = rmx.sample_mixup(batch, num_mix, 2.0, per_sample=per_sample)
    assert lam.shape == index.shape == (num_mix, batch)
    assert lam.dtype == torch.float32 and index.dtype == torch.int64
    assert bool(((lam >= 0) & (lam <= 1)).all())
    assert _is_permutation_rows(index)
    if not per_sample:  # one lam per mix, repeated over the batch
        assert torch.equal(lam, lam[:, :1].expand_as(lam))


def test_per_sample_draws_differ_across_the_batch():
    lam, _ = rmx.sample_mixup(64, 2, 1.0, per_sample=True, generator=torch.Generator().manual_seed(0))
    assert lam.unique().numel() == lam.numel()


def test_seeded_generator_reproduces_the_draw():
    first = rmx.sample_mixup(32, 3, 0.4, generator=torch.Generator().manual_seed(1234))
    second = rmx.sample_mixup(32, 3, 0.4, generator=torch.Generator().manual_seed(1234))
    third = rmx.sample_mixup(32, 3, 0.4, generator=torch.Generator().manual_seed(1235))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[1], third[1])


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_nonpositive_alpha_turns_mixing_off(alpha):
    lam, _ = rmx.sample_mixup(5, 2, alpha, per_sample=True)
    assert torch.equal(lam, torch.ones(2, 5))


def test_lam_follows_beta_distribution():
    """Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)); 40k draws pin both to ~1%."""
    alpha = 2.0
    lam, _ = rmx.sample_mixup(4000, 10, alpha, per_sample=True, generator=torch.Generator().manual_seed(2))
    lam = lam.double()
    assert lam.mean().item() == pytest.approx(0.5, abs=0.005)
    assert lam.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.03)


@pytest.mark.parametrize("alpha", [1e-3, 1e-4])
def test_small_alpha_puts_lam_near_0_and_1(alpha):
    """Beta(a, a) for small a is nearly a fair coin between 0 and 1 (the mass inside [0.01, 0.99]
    is about 2 a ln 99, under 0.01 here). Gamma draws underflowing to 0 in pairs gave lam = 1/2
    exactly: a quarter of the draws at a = 1e-3, most at 1e-4."""
    lam, _ = rmx.sample_mixup(1, 4000, alpha, generator=torch.Generator().manual_seed(4))
    assert not bool((lam == 0.5).any())
    assert ((lam > 0.01) & (lam < 0.99)).double().mean().item() < 0.03
    assert (lam < 0.5).double().mean().item() == pytest.approx(0.5, abs=0.05)


def test_mixing_off_gives_copies_of_x_exactly():
    """alpha <= 0 turns mixing off: every mix is x itself, not a mix with coefficient 1, which
    turned a row NaN wherever its partner held an inf (0 * inf)."""
    x = torch.randn(4, 3)
    x[0, 0] = math.inf
    batch = rmx.mixup(x, 2, alpha=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch.inputs, x.repeat(2, 1))
    assert torch.equal(batch.lam, torch.ones(2, 4))


def test_permutations_are_uniform_per_position():
    """Each position of a uniform permutation of 4 takes each value with probability 1/4."""
    _, index = rmx.sample_mixup(4, 20000, 1.0, generator=torch.Generator().manual_seed(3))
    counts = torch.stack([torch.bincount(index[:, p], minlength=4) for p in range(4)]).double()
    assert torch.allclose(counts / 20000, torch.full((4, 4), 0.25, dtype=torch.float64), atol=0.015)


def test_sample_mixup_device_follows_generator():
    gen = torch.Generator(device="cpu").manual_seed(0)
    lam, index = rmx.sample_mixup(3, 2, 1.0, generator=gen)
    assert lam.device.type == index.device.type == "cpu"


def test_mix_hand_worked():
    x = torch.tensor([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    index = torch.tensor([[2, 0, 1]])
    out = rmx.mix(x, torch.tensor([0.25]), index, backend="reference")
    expected = torch.tensor(
        [
            [0.25 * 1 + 0.75 * 100, 0.25 * 2 + 0.75 * 200],
            [0.25 * 10 + 0.75 * 1, 0.25 * 20 + 0.75 * 2],
            [0.25 * 100 + 0.75 * 10, 0.25 * 200 + 0.75 * 20],
        ]
    )
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("feat", [(), (3,), (2, 5, 4)])
def test_mix_layout_and_lam_forms(feat):
    gen = torch.Generator().manual_seed(5)
    batch, num_mix = 6, 3
    x = torch.randn(batch, *feat, generator=gen)
    lam, index = rmx.sample_mixup(batch, num_mix, 1.0, generator=gen)
    out = rmx.mix(x, lam[:, 0], index)
    assert out.shape == (num_mix * batch, *feat)
    torch.testing.assert_close(out, rmx.mix(x, lam, index))
    for k in range(num_mix):
        for b in range(batch):
            expected = lam[k, b] * x[b] + (1 - lam[k, b]) * x[index[k, b]]
            torch.testing.assert_close(out[k * batch + b], expected)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mix_of_channels_last_images_is_contiguous_on_every_backend(backend):
    x = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    lam, index = rmx.sample_mixup(4, 2, 1.0, generator=torch.Generator().manual_seed(6))
    out = rmx.mix(x, lam, index, backend=backend)
    assert out.is_contiguous()
    torch.testing.assert_close(out, rmx.mix(x.contiguous(), lam, index, backend="reference"))


def test_mix_non_contiguous_input_and_low_precision():
    base = torch.randn(4, 8, 6)
    x = base.transpose(1, 2)  # non-contiguous
    lam, index = rmx.sample_mixup(4, 2, 1.0)
    torch.testing.assert_close(rmx.mix(x, lam, index), rmx.mix(x.contiguous(), lam, index))
    out = rmx.mix(x.bfloat16(), lam, index)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), rmx.mix(x, lam, index), rtol=1e-2, atol=1e-2)


def test_mixup_returns_batch_and_its_pairing():
    x = torch.randn(5, 3)
    batch = rmx.mixup(x, num_mix=2, alpha=0.5, generator=torch.Generator().manual_seed(9))
    assert isinstance(batch, rmx.MixupBatch)
    assert batch.inputs.shape == (10, 3)
    torch.testing.assert_close(batch.inputs, rmx.mix(x, batch.lam, batch.index))


def test_mixup_is_differentiable_in_x():
    x = torch.randn(4, 3, requires_grad=True)
    rmx.mixup(x, 3, 1.0).inputs.sum().backward()
    # Every sample appears with total weight 1 in each mix: lam (as itself) + (1 - lam) (as a partner).
    torch.testing.assert_close(x.grad, torch.full((4, 3), 3.0))


def test_mixup_module():
    module = rmx.Mixup(num_mix=2, alpha=1.0, generator=torch.Generator().manual_seed(0))
    out = module(torch.randn(3, 4))
    assert out.inputs.shape == (6, 4) and out.lam.shape == (2, 3)
    assert "num_mix=2" in repr(module)


def test_soft_targets_public():
    targets = torch.tensor([0, 1, 1])
    lam, index = torch.tensor([0.3]), torch.tensor([[1, 2, 0]])
    soft = rmx.soft_targets(targets, lam, index, num_classes=2)
    torch.testing.assert_close(soft, torch.tensor([[0.3, 0.7], [0.0, 1.0], [0.7, 0.3]]))


# --- mixing at a hidden layer -------------------------------------------------------------------


def _mlp(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5))


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_mix_at_mixes_the_hidden_output_and_its_gradient(backend):
    """The network after the layer runs on the raw hidden rows and their mixes, forward and
    backward, exactly as if the mixes had been concatenated by hand."""
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    lam, index = rmx.sample_mixup(7, 3, 2.0, per_sample=True, generator=torch.Generator().manual_seed(2))
    model, manual = _mlp(3), _mlp(3)
    with rmx.mix_at(model[1], lam, index, backend=backend):
        out = model(x)
    hidden = manual[:2](x)
    expected = manual[2](torch.cat([hidden, rmx.reference.mix(hidden, lam, index)]))
    assert out.shape == (4 * 7, 5)
    torch.testing.assert_close(out, expected)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for got, want in zip(model.parameters(), manual.parameters()):
        torch.testing.assert_close(got.grad, want.grad)
    assert model(x).shape == (7, 5)  # the hook is gone after the block


def test_mix_at_trains_with_the_loss():
    x, y = torch.randn(16, 6), torch.randint(0, 5, (16,))
    lam, index = rmx.sample_mixup(16, 2, 2.0)
    model = _mlp(0)
    with rmx.mix_at(model[0], lam, index):
        out = model(x)
    loss = rmx.rankmixup_loss(out[:16], out[16:], y, lam, index).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


def test_mix_at_rejects_misuse():
    lam, index = rmx.sample_mixup(4, 2, 2.0)
    x = torch.randn(4, 6)
    with pytest.raises(TypeError, match="mix_at: module must be a torch.nn.Module"):
        with rmx.mix_at(lambda t: t, lam, index):
            pass
    model = _mlp(0)
    with pytest.raises(RuntimeError, match="ran twice"):
        with rmx.mix_at(model[1], lam, index):
            model(x)
            model(x)
    with pytest.raises(RuntimeError, match="did not run"):
        with rmx.mix_at(model[1], lam, index):
            pass
    with pytest.raises(ValueError, match="index"):  # a batch of 5 against an index of 4 samples
        with rmx.mix_at(model[1], lam, index):
            model(torch.randn(5, 6))
    assert not model[1]._forward_hooks  # removed whatever happened


def test_digits_example_trains_with_mix_at():
    """examples/train_digits.py --mix-layer: the example that trains with mix_at runs, and prints
    the demo's table (calibration before and after temperature scaling, OOD AUROC)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "examples/train_digits.py", "--seeds", "1", "--epochs", "1", "--methods", "ce_ls", "mndcg",
         "--mix-layer", "1"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()[-3:]
    assert "ECE TS %" in header and "OOD AUROC %" in header
    assert [row.split()[0] for row in rows] == ["ce_ls", "mndcg"]
