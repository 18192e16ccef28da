"""Temperature scaling (rankmixup_ops.metrics.temperature) against an independent minimiser:
SciPy's bounded scalar minimisation of the float64 NLL. Fresh random logits on every run (the
seed is in the failure message)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rankmixup_ops.metrics import TEMPERATURE_RANGE, TemperatureScaler, fit_temperature

optimize = pytest.importorskip("scipy.optimize")

SEED = torch.seed() % 2**31


def _logits(n: int, c: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a classifier right about 70% of the time, spread by ``scale`` (large:
    over-confident, small: under-confident)."""
    gen = torch.Generator().manual_seed(SEED + seed)
    targets = torch.randint(0, c, (n,), generator=gen)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64)
    right = torch.rand(n, generator=gen) < 0.7
    logits[right, targets[right]] += 2.0
    return logits * scale, targets


def _nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    return F.cross_entropy(logits.double() / temperature, targets).item()


def _scipy_temperature(logits, targets) -> float:
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    result = optimize.minimize_scalar(lambda log_t: _nll(logits, targets, math.exp(log_t)), bounds=(low, high),
                                      method="bounded", options={"xatol": 1e-10})
    return math.exp(result.x)


@pytest.mark.parametrize("scale", [0.2, 1.0, 6.0], ids=["under", "mild", "over"])
@pytest.mark.parametrize("n,c", [(1, 2), (7, 3), (500, 10), (300, 100)])
def test_matches_an_independent_minimiser(n, c, scale):
    logits, targets = _logits(n, c, scale, seed=n + c)
    fitted = fit_temperature(logits, targets)
    assert fitted.dtype == torch.float64 and fitted.shape == ()
    expected = _scipy_temperature(logits, targets)
    # Never a worse NLL than SciPy's answer, and the same T wherever the NLL is curved enough
    # to pin T down (a few separable samples leave it falling, flatter and flatter, towards the
    # range's low end, where SciPy stops early); hundreds of samples always pin it down.
    nll = _nll(logits, targets, expected)
    assert _nll(logits, targets, fitted.item()) <= nll + 1e-9, f"seed {SEED}"
    pinned = min(_nll(logits, targets, expected * 1.01), _nll(logits, targets, expected / 1.01)) > nll + 1e-8
    assert pinned or n < 100, f"seed {SEED}"
    if pinned:
        assert math.isclose(fitted.item(), expected, rel_tol=1e-3), f"seed {SEED}: {fitted.item()} vs {expected}"


def test_ends_of_the_range():
    logits, targets = _logits(64, 5, 1.0, seed=1)
    separable = logits.clone()
    separable[torch.arange(64), targets] += 50.0  # every sample right by a wide margin: T -> 0
    assert fit_temperature(separable, targets).item() == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-9)
    wrong = logits.clone()
    wrong[torch.arange(64), targets] -= 50.0  # every label the least likely class: T -> infinity
    assert fit_temperature(wrong, targets).item() == pytest.approx(TEMPERATURE_RANGE[1], rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_narrow_logits_are_fitted_in_float32(dtype):
    logits, targets = _logits(200, 10, 3.0, seed=2)
    narrow = logits.to(dtype)
    fitted = fit_temperature(narrow, targets)
    assert fitted.dtype == torch.float32
    assert torch.equal(fitted, fit_temperature(narrow.float(), targets))


def test_masked_classes_change_nothing():
    """A class of logit -inf in every row (masked out) is no class at all: the same T."""
    logits, targets = _logits(200, 6, 2.0, seed=5)
    masked = torch.cat([logits, torch.full((200, 1), -torch.inf, dtype=logits.dtype)], dim=1)
    assert fit_temperature(masked, targets).item() == pytest.approx(fit_temperature(logits, targets).item(), rel=1e-9)


def test_scaler_fits_applies_and_saves():
    logits, targets = _logits(300, 10, 5.0, seed=3)
    scaler = TemperatureScaler().fit(logits, targets)
    temperature = scaler.temperature
    assert temperature.item() == pytest.approx(fit_temperature(logits, targets).item(), rel=1e-6)
    torch.testing.assert_close(scaler(logits), logits / temperature.double())
    torch.testing.assert_close(scaler.transform(logits), torch.softmax(logits / temperature.double(), dim=1))
    assert _nll(scaler(logits), targets, 1.0) < _nll(logits, targets, 1.0)  # over-confident logits improve
    restored = TemperatureScaler()
    restored.load_state_dict(scaler.state_dict())
    assert torch.equal(restored.temperature, temperature)
    assert "temperature=" in repr(scaler)


def test_logits_equal_across_classes_fit_one():
    """Rows of equal logits have the same NLL at every T: 1 (no change), not the range's end
    the search walked to (0.01, the most confident) through the slope's rounding."""
    targets = torch.tensor([0, 2, 1, 1])
    for value in (0.0, 1.7, -5.1, 123.456):
        for dtype in (torch.float32, torch.float64):
            assert fit_temperature(torch.full((4, 3), value, dtype=dtype), targets).item() == 1.0


def test_a_common_offset_changes_nothing():
    """softmax is shift-invariant, and so is the fit: the slope is taken over logits relative to
    the target's, not as a difference of two large sums."""
    logits, targets = _logits(300, 10, 1.0, seed=5)
    logits = logits.float()
    assert fit_temperature(logits + 1000, targets).item() == pytest.approx(fit_temperature(logits, targets).item(),
                                                                            rel=1e-4)


def test_scaler_keeps_its_buffer_dtype():
    logits, targets = _logits(100, 5, 3.0, seed=6)
    assert TemperatureScaler().fit(logits, targets).temperature.dtype == torch.float32
    fitted = TemperatureScaler().double().fit(logits, targets).temperature
    assert fitted.dtype == torch.float64 and fitted.item() == fit_temperature(logits, targets).item()


def test_loading_a_temperature_that_is_not_positive_raises():
    scaler = TemperatureScaler(2.0)
    for bad in (torch.tensor(-3.0), torch.tensor(0.0), torch.tensor(math.nan), torch.ones(2)):
        with pytest.raises(RuntimeError, match="TemperatureScaler: temperature must be one positive finite number"):
            scaler.load_state_dict({"temperature": bad})
        assert scaler.temperature.item() == 2.0
    # Inside a model, as load_state_dict reaches it there.
    model = torch.nn.Sequential(torch.nn.Identity(), TemperatureScaler())
    with pytest.raises(RuntimeError, match="TemperatureScaler: temperature"):
        model.load_state_dict({"1.temperature": torch.tensor(-1.0)})


def test_bad_input_names_the_argument():
    logits, targets = _logits(8, 4, 1.0, seed=4)
    cases = [
        ((logits[0], targets), ValueError, "fit_temperature: logits must have shape"),
        ((logits[:, :1], targets), ValueError, "C >= 2 classes"),
        ((logits[:0], targets[:0]), ValueError, "N >= 1"),
        ((logits.long(), targets), TypeError, "logits must be a floating tensor"),
        ((logits, targets.float()), TypeError, "targets must be an integer tensor"),
        ((logits, targets[:5]), ValueError, "targets must have shape"),
        ((logits, torch.full_like(targets, 4)), ValueError, "targets must lie in"),
        ((logits, targets.to("meta")), ValueError, "targets is on meta"),
        ((torch.where(torch.arange(4) == targets[:, None], -torch.inf, logits), targets), ValueError, "-inf at"),
        ((logits.index_fill(1, torch.tensor([0]), float("nan")), targets), ValueError, "hold a NaN"),
        # +inf anywhere: the NLL is infinite or NaN at every temperature (the fit ignored the
        # row at a non-target class and ran to the smallest T at the target).
        ((logits.index_fill(1, torch.tensor([0]), math.inf), targets), ValueError, r"or \+inf"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            fit_temperature(*args)
    for bad, error in ((0.0, ValueError), (-1.0, ValueError), ("1", TypeError), (math.inf, ValueError)):
        with pytest.raises(error, match="TemperatureScaler: temperature"):
            TemperatureScaler(bad)
