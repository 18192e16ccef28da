"""Bad input meets the same response whichever backend is asked for (SPEC §9, docs/errors.md).

- Bad arguments: every public entry point checks them before it chooses a backend, so each
  backend name — available here or not, able to run on these tensors or not — gets the same
  exception type and the same message, which names the function and the argument.
- Value checks under ``validate=True`` / ``RANKMIXUP_VALIDATE=1``: the same, on every backend.
- Non-finite logits: on every backend that runs here, a NaN or +inf logit of a valid sample makes
  that sample's loss non-finite and leaves the others untouched, and a -inf logit (a masked
  class) gives the reference's result.

What each message says is tested in test_api.py; this file tests that it does not depend on
the backend. Expected failures mark inconsistencies found in review, each with the fix.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import pytest
import torch

import rankmixup_ops as rmx
from rankmixup_ops.backends import BACKENDS

BACKEND_NAMES = ("auto", *BACKENDS)
# The backends whose kernels run on CPU tensors here (Triton under its interpreter).
RUNNING = [name for name in BACKENDS if rmx.available_backends()[name].available
           and rmx.backends._load(name).unsupported(torch.device("cpu")) is None]
B, C, K = 4, 5, 2


def _problem():
    gen = torch.Generator().manual_seed(0)
    return dict(
        logits=torch.randn(B, C, generator=gen, dtype=torch.float64),
        mix_logits=torch.randn(K * B, C, generator=gen, dtype=torch.float64),
        targets=torch.tensor([0, 3, -100, 1]),
        lam=torch.tensor([0.2, 0.7]),
        index=torch.stack([torch.randperm(B, generator=gen) for _ in range(K)]),
    )


class Case(NamedTuple):
    name: str
    call: Callable[[str], object]  # runs the entry point with the given backend name
    error: type
    fn: str  # the function the message must name ...
    argument: str  # ... and the argument


def _loss(entry=rmx.rankmixup_loss, **overrides):
    """A call of a loss function on the problem, with tensors or options replaced."""
    def call(backend):
        args = _problem()
        options = {name: overrides[name] for name in overrides if name not in args}
        args.update({name: value for name, value in overrides.items() if name in args})
        return entry(*args.values(), backend=backend, **options)
    return call


def _module(**options):
    """RankMixupLoss built with ``options`` (checked at construction), called on the problem."""
    return lambda backend: rmx.RankMixupLoss(backend=backend, **options)(*_problem().values())


def _mix(x=None, lam=None, index=None, **options):
    def call(backend):
        p = _problem()
        return rmx.mix(p["logits"] if x is None else x, p["lam"] if lam is None else lam,
                       p["index"] if index is None else index, backend=backend, **options)
    return call


def _mixup(x=None, *args, **options):
    return lambda backend: rmx.mixup(_problem()["logits"] if x is None else x, *args, backend=backend, **options)


def _mixup_module(x=None, **options):
    return lambda backend: rmx.Mixup(backend=backend, **options)(_problem()["logits"] if x is None else x)


META = torch.device("meta")
BAD_ARGUMENTS = [
    Case("logits list", _loss(logits=[[0.0] * C] * B), TypeError, "rankmixup_loss", "logits"),
    Case("logits int", _loss(logits=torch.zeros(B, C, dtype=torch.int64)), TypeError, "rankmixup_loss", "logits"),
    Case("logits 1-D", _loss(logits=torch.zeros(C, dtype=torch.float64)), ValueError, "rankmixup_loss", "logits"),
    Case("logits empty", _loss(logits=torch.zeros(B, 0, dtype=torch.float64)), ValueError, "rankmixup_loss", "logits"),
    Case("mix rows", _loss(mix_logits=torch.zeros(K * B + 1, C, dtype=torch.float64)), ValueError, "rankmixup_loss", "mix_logits"),
    Case("mix (B, K, C)", _loss(mix_logits=torch.zeros(B, K, C, dtype=torch.float64)), ValueError, "rankmixup_loss", "mix_logits"),
    Case("mix dtype", _loss(mix_logits=torch.zeros(K * B, C)), TypeError, "rankmixup_loss", "mix_logits"),
    Case("mix complex", _loss(mix_logits=torch.zeros(K * B, C, dtype=torch.complex128)), TypeError, "rankmixup_loss", "mix_logits"),
    Case("targets float", _loss(targets=torch.zeros(B)), TypeError, "rankmixup_loss", "targets"),
    Case("targets bool", _loss(targets=torch.zeros(B, dtype=torch.bool)), TypeError, "rankmixup_loss", "targets"),
    Case("targets 2-D", _loss(targets=torch.zeros(B, 1, dtype=torch.int64)), ValueError, "rankmixup_loss", "targets"),
    Case("targets device", _loss(targets=torch.zeros(B, dtype=torch.int64, device=META)), ValueError, "rankmixup_loss", "targets"),
    Case("index list", _loss(index=[[0, 1, 2, 3]] * K), TypeError, "rankmixup_loss", "index"),
    Case("index float", _loss(index=torch.zeros(K, B)), TypeError, "rankmixup_loss", "index"),
    Case("index no mixes", _loss(index=torch.zeros(0, B, dtype=torch.int64)), ValueError, "rankmixup_loss", "index"),
    Case("index batch", _loss(index=torch.zeros(K, B + 1, dtype=torch.int64)), ValueError, "rankmixup_loss", "index"),
    Case("index device", _loss(index=torch.zeros(K, B, dtype=torch.int64, device=META)), ValueError, "rankmixup_loss", "index"),
    Case("lam shape", _loss(lam=torch.zeros(K + 1)), ValueError, "rankmixup_loss", "lam"),
    Case("lam int", _loss(lam=torch.zeros(K, dtype=torch.int64)), TypeError, "rankmixup_loss", "lam"),
    Case("lam None", _loss(lam=None), TypeError, "rankmixup_loss", "lam"),
    Case("lam ragged", _loss(lam=[[0.1], [0.2, 0.3]]), TypeError, "rankmixup_loss", "lam"),
    Case("lam device", _loss(lam=torch.zeros(K, device=META)), ValueError, "rankmixup_loss", "lam"),
    Case("mode", _loss(mode="ndcg"), ValueError, "rankmixup_loss", "mode"),
    Case("score", _loss(score="max"), ValueError, "rankmixup_loss", "score"),
    Case("reduction", _loss(reduction="avg"), ValueError, "rankmixup_loss", "reduction"),
    Case("alpha nan", _loss(alpha=math.nan), ValueError, "rankmixup_loss", "alpha"),
    Case("alpha negative", _loss(alpha=-0.1), ValueError, "rankmixup_loss", "alpha"),
    Case("alpha tensor", _loss(alpha=torch.tensor(0.1)), TypeError, "rankmixup_loss", "alpha"),
    Case("margin inf", _loss(margin=math.inf), ValueError, "rankmixup_loss", "margin"),
    Case("label_smoothing", _loss(label_smoothing=1.5), ValueError, "rankmixup_loss", "label_smoothing"),
    Case("ignore_index float", _loss(ignore_index=-1.0), TypeError, "rankmixup_loss", "ignore_index"),
    Case("validate", _loss(validate="yes"), TypeError, "rankmixup_loss", "validate"),
    Case("mrl logits", _loss(rmx.mrl_loss, logits=torch.zeros(C)), ValueError, "mrl_loss", "logits"),
    Case("mrl score", _loss(rmx.mrl_loss, score="max"), ValueError, "mrl_loss", "score"),
    Case("mrl margin", _loss(rmx.mrl_loss, margin=math.nan), ValueError, "mrl_loss", "margin"),
    Case("mndcg targets", _loss(rmx.mndcg_loss, targets=torch.zeros(B)), TypeError, "mndcg_loss", "targets"),
    Case("mndcg reduction", _loss(rmx.mndcg_loss, reduction="avg"), ValueError, "mndcg_loss", "reduction"),
    Case("module mode", _module(mode="ndcg"), ValueError, "RankMixupLoss", "mode"),
    Case("module ignore_index", _module(ignore_index=None), TypeError, "RankMixupLoss", "ignore_index"),
    Case("mix x int", _mix(x=torch.zeros(B, 3, dtype=torch.int64)), TypeError, "mix", "x"),
    Case("mix x scalar", _mix(x=torch.tensor(1.0)), ValueError, "mix", "x"),
    Case("mix index batch", _mix(index=torch.zeros(K, B - 1, dtype=torch.int64)), ValueError, "mix", "index"),
    Case("mix lam shape", _mix(lam=torch.ones(K, B - 1)), ValueError, "mix", "lam"),
    Case("mix index device", _mix(index=torch.zeros(K, B, dtype=torch.int64, device=META)), ValueError, "mix", "index"),
    Case("mixup x list", _mixup([1.0, 2.0]), TypeError, "mixup", "x"),
    Case("mixup num_mix", _mixup(None, 0), ValueError, "mixup", "num_mix"),
    Case("mixup alpha", _mixup(None, 2, math.nan), ValueError, "mixup", "alpha"),
    Case("mixup generator", _mixup(None, 2, 1.0, generator=0), TypeError, "mixup", "generator"),
    Case("Mixup num_mix", _mixup_module(num_mix=0), ValueError, "Mixup", "num_mix"),
    Case("Mixup x", _mixup_module(x=torch.zeros(B, 3, dtype=torch.int64)), TypeError, "mixup", "x"),
]


def _raised(call, backend) -> Exception:
    with pytest.raises(Exception) as info:
        call(backend)
    return info.value


def _assert_same_error(case: Case, backend: str) -> None:
    error, expected = _raised(case.call, backend), _raised(case.call, "reference")
    assert type(error) is case.error, f"{type(error).__name__}: {error}"
    assert str(error) == str(expected)
    assert str(error).startswith(f"{case.fn}: ") and case.argument in str(error), str(error)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=[case.name for case in BAD_ARGUMENTS])
def test_bad_argument_same_error_on_every_backend(case, backend):
    _assert_same_error(case, backend)


# The operators take ignore_index as int64: a larger int must be refused by the checks, not by an
# operator schema with a RuntimeError that names neither the function nor the argument.
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_ignore_index_outside_int64_same_error_on_every_backend(backend):
    _assert_same_error(Case("ignore_index 2**63", _loss(ignore_index=2**63), ValueError, "rankmixup_loss",
                            "ignore_index"), backend)


# --- value checks (validate=True or RANKMIXUP_VALIDATE=1) ---------------------------------------

BAD_VALUES = [
    ("target out of range", dict(targets=torch.tensor([0, 5, -100, 1])), "targets"),
    ("target negative", dict(targets=torch.tensor([0, -1, -100, 1])), "targets"),
    ("index repeats", dict(index=torch.tensor([[0, 0, 1, 2], [3, 2, 1, 0]])), "index"),
    ("index out of range", dict(index=torch.tensor([[0, 1, 2, 9], [3, 2, 1, 0]])), "index"),
    ("lam above 1", dict(lam=torch.tensor([0.2, 1.5])), "lam"),
    ("lam nan", dict(lam=torch.tensor([0.2, math.nan])), "lam"),
]


@pytest.mark.parametrize("switch", ["argument", "environment"])
@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("bad", BAD_VALUES, ids=[bad[0] for bad in BAD_VALUES])
def test_bad_value_same_error_under_validate(bad, backend, switch, monkeypatch):
    name, overrides, argument = bad
    if switch == "environment":
        monkeypatch.setenv("RANKMIXUP_VALIDATE", "1")
    else:
        overrides = {**overrides, "validate": True}
    _assert_same_error(Case(name, _loss(**overrides), ValueError, "rankmixup_loss", argument), backend)


# mix checks lam and index under validate as the losses do, before it picks a backend (each
# would do something else with them unchecked: an IndexError, a RuntimeError in the backward,
# zeros or a wrong gradient).
@pytest.mark.parametrize("switch", ["argument", "environment"])
@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("bad", [b for b in BAD_VALUES if b[2] != "targets"], ids=lambda b: b[0])
def test_mix_bad_value_same_error_under_validate(bad, backend, switch, monkeypatch):
    name, overrides, argument = bad
    if switch == "environment":
        monkeypatch.setenv("RANKMIXUP_VALIDATE", "1")
    else:
        overrides = {**overrides, "validate": True}
    _assert_same_error(Case(name, _mix(**overrides), ValueError, "mix", argument), backend)


# --- non-finite logits (SPEC §9) ---------------------------------------------------------------

RANKINGS = [("mndcg", "logit"), ("mrl", "logit"), ("mrl", "prob")]
# Sample 0 (target class 0) gets the value in class 2 of its raw row or of its first mix row.
ROWS = {"raw": ("logits", 0), "mix": ("mix_logits", 0)}


def _poisoned_run(backend, row, value, mode, score, label_smoothing=0.0):
    """Per-sample losses and the gradients of their sum, with ``value`` at class 2 of ``row``."""
    problem = _problem()
    name, r = ROWS[row]
    problem[name][r, 2] = value
    logits, mix_logits = (problem[n].requires_grad_() for n in ("logits", "mix_logits"))
    out = rmx.rankmixup_loss(*problem.values(), mode=mode, score=score, label_smoothing=label_smoothing,
                             reduction="none", backend=backend)
    return (out.loss.detach(), *torch.autograd.grad(out.loss.sum(), (logits, mix_logits)))


# Triton's interpreter subtracts the infinities in NumPy, which warns; the NaN is the point.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize(("mode", "score"), RANKINGS)
@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("backend", RUNNING)
def test_nan_or_inf_logit_makes_only_its_sample_non_finite(backend, row, value, mode, score):
    loss, grad_logits, grad_mix = _poisoned_run(backend, row, value, mode, score)
    clean_loss, clean_logits, clean_mix = _poisoned_run("reference", row, 0.0, mode, score)
    assert not loss[0].isfinite(), loss
    torch.testing.assert_close(loss[1:], clean_loss[1:])
    torch.testing.assert_close(grad_logits[1:], clean_logits[1:])
    torch.testing.assert_close(grad_mix.view(K, B, C)[:, 1:], clean_mix.view(K, B, C)[:, 1:])


# A -inf logit of a valid sample is a masked class: probability 0, a finite loss (or +inf where
# label smoothing weighs it), as in the reference (F.cross_entropy) on every backend.
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize(("mode", "score"), RANKINGS)
@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("backend", [name for name in RUNNING if name != "reference"])
def test_minus_inf_logit_is_a_masked_class(backend, row, mode, score, label_smoothing):
    got = _poisoned_run(backend, row, -math.inf, mode, score, label_smoothing)
    expected = _poisoned_run("reference", row, -math.inf, mode, score, label_smoothing)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


# A row of -inf only has no softmax: it poisons its sample on the fused backends (loss NaN, and
# that row's gradient), as a NaN would, and leaves every other sample alone. (The reference gives
# NaN too, except for MRL's max-logit score, where PyTorch's max of a -inf row is just -inf.)
@pytest.mark.parametrize(("mode", "score"), RANKINGS)
@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("backend", [name for name in RUNNING if name != "reference"])
def test_row_of_minus_inf_only_poisons_its_sample(backend, row, mode, score):
    problem = _problem()
    name, r = ROWS[row]
    problem[name][r] = -math.inf
    logits, mix_logits = (problem[n].requires_grad_() for n in ("logits", "mix_logits"))
    out = rmx.rankmixup_loss(*problem.values(), mode=mode, score=score, reduction="none", backend=backend)
    grad_logits, grad_mix = torch.autograd.grad(out.loss.sum(), (logits, mix_logits))
    clean_loss, clean_logits, clean_mix = _poisoned_run("reference", row, 0.0, mode, score)
    poisoned_row = (grad_logits if row == "raw" else grad_mix)[0]
    assert out.loss[0].isnan() and poisoned_row.isnan().all()
    torch.testing.assert_close(out.loss[1:].detach(), clean_loss[1:])
    torch.testing.assert_close(grad_logits[1:], clean_logits[1:])
