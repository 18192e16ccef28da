"""The public API: backend choice, argument checking (SPEC §9), the modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rankmixup_ops as rmx
from rankmixup_ops import functional, reference

B, C, K = 4, 5, 2


def _problem(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(B, C, generator=gen, dtype=dtype)
    mix_logits = torch.randn(K * B, C, generator=gen, dtype=dtype)
    targets = torch.tensor([0, 3, -100, 1])
    lam = torch.tensor([0.2, 0.7])
    index = torch.stack([torch.randperm(B, generator=gen) for _ in range(K)])
    return logits, mix_logits, targets, lam, index


def test_public_loss_equals_reference():
    logits, mix_logits, targets, lam, index = _problem()
    for mode in ("mndcg", "mrl"):
        out = rmx.rankmixup_loss(logits, mix_logits, targets, lam, index, mode=mode, alpha=0.3)
        expected = reference.rankmixup_loss(
            logits, mix_logits, targets, lam.unsqueeze(1).expand(K, B), index, mode=mode, alpha=0.3
        )
        for got, want in zip(out, expected):
            torch.testing.assert_close(got, want)


def test_rank_terms_alone_carry_gradients():
    logits, mix_logits, targets, lam, index = _problem()
    mix_logits.requires_grad_()
    full = rmx.rankmixup_loss(logits, mix_logits, targets, lam, index, mode="mrl", margin=1.0)
    mrl = rmx.mrl_loss(logits, mix_logits, targets, lam, index, margin=1.0)
    torch.testing.assert_close(mrl.detach(), full.rank)
    mrl.backward()
    assert mix_logits.grad is not None and mix_logits.grad.abs().sum() > 0
    mndcg = rmx.mndcg_loss(logits, mix_logits, targets, lam, index, reduction="none")
    full = rmx.rankmixup_loss(logits, mix_logits, targets, lam, index, reduction="none")
    torch.testing.assert_close(mndcg.detach(), full.rank)


def test_mix_logits_accepted_as_k_b_c():
    logits, mix_logits, targets, lam, index = _problem()
    flat = rmx.rankmixup_loss(logits, mix_logits, targets, lam, index)
    stacked = rmx.rankmixup_loss(logits, mix_logits.view(K, B, C), targets, lam, index)
    torch.testing.assert_close(flat.loss, stacked.loss)


def test_lam_as_python_list():
    logits, mix_logits, targets, lam, index = _problem()
    out = rmx.rankmixup_loss(logits, mix_logits, targets, lam.tolist(), index)
    torch.testing.assert_close(out.loss, rmx.rankmixup_loss(logits, mix_logits, targets, lam, index).loss)


def test_int32_targets_and_index_are_accepted():
    logits, mix_logits, targets, lam, index = _problem()
    out = rmx.rankmixup_loss(logits, mix_logits, targets.int(), lam, index.int())
    torch.testing.assert_close(out.loss, rmx.rankmixup_loss(logits, mix_logits, targets, lam, index).loss)


def test_available_backends_explains_itself():
    statuses = rmx.available_backends()
    assert set(statuses) == {"reference", "cpu", "cuda", "triton"}
    assert statuses["reference"].available
    for name, status in statuses.items():
        assert isinstance(status.reason, str) and status.reason
    if statuses["cpu"].available:
        assert statuses["cpu"].reason == "installed; runs on cpu tensors"
    if statuses["cuda"].available:
        assert "runs on cuda tensors" in statuses["cuda"].reason
        assert ("no CUDA device is visible" in statuses["cuda"].reason) == (not torch.cuda.is_available())


def test_unavailable_backend_says_why():
    missing = [name for name, status in rmx.available_backends().items() if not status.available]
    if not missing:
        pytest.skip("every backend is available in this install")
    with pytest.raises(rmx.BackendUnavailable, match=missing[0]):
        rmx.rankmixup_loss(*_problem(), backend=missing[0])


def test_backend_choice_is_remembered_but_refusals_are_not():
    """A backend that cannot run CPU tensors is refused on every call, not only the first, and
    refusing it leaves the choice for a good name intact."""
    problem = _problem()
    for _ in range(2):
        with pytest.raises((ValueError, rmx.BackendUnavailable), match="backend 'cuda'"):
            rmx.rankmixup_loss(*problem, backend="cuda")
        with pytest.raises(ValueError, match="backend must be"):
            rmx.rankmixup_loss(*problem, backend=["cpu"])  # unhashable: rejected before any lookup
    torch.testing.assert_close(
        rmx.rankmixup_loss(*problem, backend="reference").loss, rmx.rankmixup_loss(*problem).loss
    )


def test_loss_module_matches_function_and_checks_at_construction():
    criterion = rmx.RankMixupLoss(mode="mrl", alpha=0.2, margin=1.0, score="prob")
    problem = _problem()
    out = criterion(*problem)
    torch.testing.assert_close(
        out.loss, rmx.rankmixup_loss(*problem, mode="mrl", alpha=0.2, margin=1.0, score="prob").loss
    )
    assert "mode='mrl'" in repr(criterion)
    with pytest.raises(ValueError, match="reduction"):
        rmx.RankMixupLoss(reduction="avg")
    with pytest.raises(ValueError, match="RankMixupLoss: backend must be 'auto' or one of"):
        rmx.RankMixupLoss(backend="gpu")  # the name at construction; availability at the call


# --- bad input: every path raises a clear ValueError/TypeError naming the argument ----------


def _loss_call(**overrides):
    logits, mix_logits, targets, lam, index = _problem()
    args = dict(logits=logits, mix_logits=mix_logits, targets=targets, lam=lam, index=index)
    options = {k: overrides.pop(k) for k in list(overrides) if k not in args}
    args.update(overrides)
    return lambda: rmx.rankmixup_loss(*args.values(), **options)


BAD_LOSS_INPUTS = [
    ("logits list", _loss_call(logits=[[0.0] * C] * B), TypeError, "logits must be a torch.Tensor"),
    ("logits int", _loss_call(logits=torch.zeros(B, C, dtype=torch.int64)), TypeError, "logits must be a floating"),
    ("logits 1-D", _loss_call(logits=torch.zeros(C)), ValueError, "logits must have shape"),
    ("logits no classes", _loss_call(logits=torch.zeros(B, 0)), ValueError, "logits must have shape"),
    ("mix rows", _loss_call(mix_logits=torch.zeros(K * B + 1, C)), ValueError, "mix_logits must have shape"),
    ("mix classes", _loss_call(mix_logits=torch.zeros(K * B, C + 1)), ValueError, "mix_logits must have shape"),
    ("mix dtype", _loss_call(mix_logits=torch.zeros(K * B, C, dtype=torch.float64)), TypeError, "mix_logits has dtype"),
    ("mix int", _loss_call(mix_logits=torch.zeros(K * B, C, dtype=torch.int32)), TypeError, "mix_logits must be a floating"),
    ("targets float", _loss_call(targets=torch.zeros(B)), TypeError, "targets must be an integer"),
    ("targets bool", _loss_call(targets=torch.zeros(B, dtype=torch.bool)), TypeError, "targets must be an integer"),
    ("targets shape", _loss_call(targets=torch.zeros(B + 1, dtype=torch.int64)), ValueError, "targets must have shape"),
    ("index float", _loss_call(index=torch.zeros(K, B)), TypeError, "index must be an integer"),
    ("index empty K", _loss_call(index=torch.zeros(0, B, dtype=torch.int64)), ValueError, "index must have shape"),
    ("index batch", _loss_call(index=torch.zeros(K, B + 1, dtype=torch.int64)), ValueError, "index must have shape"),
    ("lam shape", _loss_call(lam=torch.zeros(K + 1)), ValueError, "lam must have shape"),
    ("lam int", _loss_call(lam=torch.zeros(K, dtype=torch.int64)), TypeError, "lam must be a floating"),
    ("lam string", _loss_call(lam="0.5"), TypeError, "lam must be"),
    ("mode", _loss_call(mode="ndcg"), ValueError, "mode must be one of"),
    ("score", _loss_call(score="max"), ValueError, "score must be one of"),
    ("reduction", _loss_call(reduction="avg"), ValueError, "reduction must be one of"),
    ("backend", _loss_call(backend="gpu"), ValueError, "backend must be"),
    ("alpha nan", _loss_call(alpha=float("nan")), ValueError, "alpha must be finite"),
    ("alpha negative", _loss_call(alpha=-0.1), ValueError, "alpha must be in"),
    ("alpha string", _loss_call(alpha="0.1"), TypeError, "alpha must be a real"),
    ("alpha list", _loss_call(alpha=[0.1]), TypeError, "alpha must be a real"),  # unhashable
    ("alpha bool", _loss_call(alpha=True), TypeError, "alpha must be a real"),
    ("margin inf", _loss_call(margin=float("inf")), ValueError, "margin must be finite"),
    ("smoothing", _loss_call(label_smoothing=1.5), ValueError, "label_smoothing must be in"),
    ("ignore_index float", _loss_call(ignore_index=-1.0), TypeError, "ignore_index must be an int"),
    ("validate", _loss_call(validate="yes"), TypeError, "validate must be a bool"),
]


@pytest.mark.parametrize("case", BAD_LOSS_INPUTS, ids=[c[0] for c in BAD_LOSS_INPUTS])
def test_bad_loss_input(case):
    _, call, error, message = case
    with pytest.raises(error, match=message):
        call()


def test_checked_options_are_reused_per_value_and_type():
    """The scalar options' checks run once per distinct set of values (functional.loss_options):
    an equal value of another type is another key, so a bool after an int 1 is still refused,
    and a value that failed is checked, and refused, again."""
    assert functional.loss_options("f", "mrl", "prob", 1.0, 1, 2.0, -1, 0.0, "sum") is functional.loss_options(
        "f", "mrl", "prob", 1.0, 1, 2.0, -1, 0.0, "sum")
    with pytest.raises(TypeError, match="alpha must be a real"):
        functional.loss_options("f", "mrl", "prob", 1.0, True, 2.0, -1, 0.0, "sum")
    for _ in range(2):
        with pytest.raises(ValueError, match="mode must be one of"):
            functional.loss_options("f", "nope", "prob", 1.0, 1, 2.0, -1, 0.0, "sum")
    numpy_alpha = functional.loss_options("f", "mrl", "prob", 1.0, np.float32(0.5), 2.0, -1, 0.0, "sum").alpha
    assert type(numpy_alpha) is float and numpy_alpha == 0.5


def test_mismatched_devices_are_rejected():
    logits, mix_logits, targets, lam, index = _problem()
    with pytest.raises(ValueError, match="targets is on meta"):
        rmx.rankmixup_loss(logits, mix_logits, targets.to("meta"), lam, index)
    with pytest.raises(ValueError, match="index is on meta"):
        rmx.mix(logits, lam, index.to("meta"))


VALUE_CHECKS = [
    ("target out of range", dict(targets=torch.tensor([0, 5, -100, 1])), "targets must lie in"),
    ("target negative", dict(targets=torch.tensor([0, -1, -100, 1])), "targets must lie in"),
    ("not a permutation", dict(index=torch.tensor([[0, 0, 1, 2], [3, 2, 1, 0]])), "permutation"),
    ("lam above 1", dict(lam=torch.tensor([0.2, 1.5])), "lam must lie in"),
    ("lam nan", dict(lam=torch.tensor([0.2, float("nan")])), "lam must lie in"),
]


@pytest.mark.parametrize("case", VALUE_CHECKS, ids=[c[0] for c in VALUE_CHECKS])
def test_value_checks_run_under_validate(case, monkeypatch):
    _, overrides, message = case
    with pytest.raises(ValueError, match=message):
        _loss_call(validate=True, **overrides)()
    monkeypatch.setenv("RANKMIXUP_VALIDATE", "1")
    with pytest.raises(ValueError, match=message):
        _loss_call(**overrides)()


def test_value_checks_are_off_by_default():
    """Without validate, a bad permutation is not looked for (that would sync the device)."""
    out = _loss_call(index=torch.tensor([[0, 0, 1, 2], [3, 2, 1, 0]]))()
    assert torch.isfinite(out.loss)


def test_validate_accepts_good_input():
    assert torch.isfinite(_loss_call(validate=True)().loss)


BAD_MIX_INPUTS = [
    ("x int", lambda: rmx.mix(torch.zeros(B, 3, dtype=torch.int64), torch.ones(1), torch.zeros(1, B, dtype=torch.int64)), TypeError, "x must be a floating"),
    ("x scalar", lambda: rmx.mix(torch.tensor(1.0), torch.ones(1), torch.zeros(1, 1, dtype=torch.int64)), ValueError, "x must have shape"),
    ("index batch", lambda: rmx.mix(torch.zeros(B, 3), torch.ones(1), torch.zeros(1, B - 1, dtype=torch.int64)), ValueError, "index must have shape"),
    ("lam shape", lambda: rmx.mix(torch.zeros(B, 3), torch.ones(1, B - 1), torch.zeros(1, B, dtype=torch.int64)), ValueError, "lam must have shape"),
    ("num_mix 0", lambda: rmx.sample_mixup(4, 0, 1.0), ValueError, "num_mix must be >= 1"),
    ("num_mix float", lambda: rmx.sample_mixup(4, 2.0, 1.0), TypeError, "num_mix must be an int"),
    ("batch_size 0", lambda: rmx.sample_mixup(0, 2, 1.0), ValueError, "batch_size must be >= 1"),
    ("alpha nan", lambda: rmx.sample_mixup(4, 2, float("nan")), ValueError, "alpha must be finite"),
    ("per_sample", lambda: rmx.sample_mixup(4, 2, 1.0, per_sample=1), TypeError, "per_sample must be a bool"),
    ("generator", lambda: rmx.sample_mixup(4, 2, 1.0, generator=0), TypeError, "generator must be"),
    ("generator device", lambda: rmx.sample_mixup(4, 2, 1.0, device="meta", generator=torch.Generator()), ValueError, "generator is on"),
    ("mixup x", lambda: rmx.mixup([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    ("soft num_classes", lambda: rmx.soft_targets(torch.zeros(B, dtype=torch.int64), torch.ones(1), torch.zeros(1, B, dtype=torch.int64), 0), ValueError, "num_classes must be >= 1"),
    ("soft targets", lambda: rmx.soft_targets(torch.zeros(B), torch.ones(1), torch.zeros(1, B, dtype=torch.int64), 3), TypeError, "targets must be an integer"),
    ("module num_mix", lambda: rmx.Mixup(num_mix=0), ValueError, "num_mix must be >= 1"),
    ("module backend", lambda: rmx.Mixup(backend="gpu"), ValueError, "Mixup: backend must be 'auto' or one of"),
]


@pytest.mark.parametrize("case", BAD_MIX_INPUTS, ids=[c[0] for c in BAD_MIX_INPUTS])
def test_bad_mixup_input(case):
    _, call, error, message = case
    with pytest.raises(error, match=message):
        call()
