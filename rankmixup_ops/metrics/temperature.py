"""Temperature scaling (Guo et al., 2017): the one scalar T > 0 that divides held-out logits so
as to minimise their negative log-likelihood, and a module that applies it.

The NLL of ``softmax(beta * z)`` is convex in the inverse temperature ``beta = 1/T`` (a
log-sum-exp of linear functions of beta, minus a linear one), and its derivative

    d NLL / d beta = mean_i ( E_{p_i}[z_i] - z_{i, y_i} ),   p_i = softmax(beta * z_i),

grows with beta. So the minimiser over a range of beta is found by bisecting the sign of that
derivative: no step size, no initial value, no local minimum, and the same answer for over- and
under-confident logits. The bisection runs a fixed number of steps on the logits' device, so it
never reads a value back to the host.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _checks as check

__all__ = ["TEMPERATURE_RANGE", "TemperatureScaler", "fit_temperature"]

# The temperatures fit_temperature searches. Where the NLL keeps falling beyond an end (every
# held-out sample right with a margin: T -> 0; no better than chance: T -> infinity) the answer
# is that end.
TEMPERATURE_RANGE = (1e-2, 1e2)
# Halvings of the log-range of beta (9.2 wide): 2^-48 of it is below float64's resolution of T.
_BISECTION_STEPS = 48


def _check_logits_targets(fn: str, logits, targets) -> torch.Tensor:
    check.floating(fn, "logits", logits)
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise check.shape_error(fn, "logits", logits, "(N, C) with N >= 1")
    if logits.shape[1] < 2:
        raise check.shape_error(fn, "logits", logits, "(N, C) with C >= 2 classes (one class has nothing to calibrate)")
    targets = check.integer(fn, "targets", targets)
    if targets.shape != logits.shape[:1]:
        raise check.shape_error(fn, "targets", targets, f"({logits.shape[0]},) to match logits")
    check.same_device(fn, "logits", logits, targets=targets)
    # Fitting is an offline step: one read-back to refuse labels that index no class is cheap.
    check.validate_values(fn, targets=targets, num_classes=logits.shape[1])
    return targets


def _nll_slope(z: torch.Tensor, z_target: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """d NLL / d beta at ``beta``: the mean over samples of E_p[z - z_target], in float64.

    Taken over the logits relative to the target's rather than as E_p[z] - z_target: no
    cancellation between two large numbers, and a row whose logits are all equal adds exactly 0.
    """
    p = torch.softmax(z * beta, dim=1)
    # A class of logit -inf (masked) has p = 0 and adds nothing (0 * -inf would be NaN).
    expected = torch.where(p > 0, p * (z - z_target.unsqueeze(1)), 0.0).sum(dim=1)
    return expected.double().mean()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The temperature ``T`` in :data:`TEMPERATURE_RANGE` that minimises the negative
    log-likelihood of ``softmax(logits / T)`` against ``targets``.

    Args:
        logits: ``(N, C)`` held-out logits, ``C >= 2``; float16/bfloat16/float32 are computed in
            float32, float64 in float64.
        targets: ``(N,)`` integer labels in ``[0, C)`` (checked: one read-back).

    Returns:
        ``T`` as a 0-dim tensor on ``logits.device`` (float32, or float64 for float64 logits).
        Divide logits by it (:class:`TemperatureScaler` does).
    """
    fn = "fit_temperature"
    targets = _check_logits_targets(fn, logits, targets)
    z = logits.detach().to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    z_target = z.gather(1, targets.unsqueeze(1)).squeeze(1)
    # Any of these would make slopes NaN or infinite, and the bisection end at a bound, silently.
    # (-inf elsewhere is a masked class, which softmax handles at every temperature.)
    if bool((z.isnan() | (z == torch.inf)).any() | (z_target == -torch.inf).any()):
        raise ValueError(f"{fn}: logits hold a NaN or +inf, or -inf at a sample's target class: "
                         "no temperature fits them")
    # Bisection in log(beta) over [1/T_max, 1/T_min], on the device: the slope's sign says on
    # which side of beta the minimiser lies (slope > 0: beta too large, T too small).
    t_min, t_max = TEMPERATURE_RANGE
    low = torch.tensor(-math.log(t_max), dtype=torch.float64, device=z.device)
    high = torch.tensor(-math.log(t_min), dtype=torch.float64, device=z.device)
    beta_range = (low.exp().to(z.dtype), high.exp().to(z.dtype))
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        too_large = _nll_slope(z, z_target, middle.exp().to(z.dtype)) > 0
        high = torch.where(too_large, middle, high)
        low = torch.where(too_large, low, middle)
    fitted = torch.exp(-(low + high) / 2)
    # The slope grows with beta: zero at both ends, it is zero throughout, and so is the NLL
    # flat in T (every sample's logits equal across its classes). Any T fits; 1 changes nothing,
    # where the search would have walked to its smallest, the most confident.
    flat = (_nll_slope(z, z_target, beta_range[0]) == 0) & (_nll_slope(z, z_target, beta_range[1]) == 0)
    return torch.where(flat, 1.0, fitted).to(z.dtype)


class TemperatureScaler(nn.Module):
    """Temperature scaling as a module, named as netcal's ``TemperatureScaling`` and
    torch-uncertainty's ``TemperatureScaler`` name things: :meth:`fit` on held-out logits, then
    ``forward(logits) = logits / temperature`` (calibrated logits) or :meth:`transform` (their
    softmax, the calibrated probabilities). ``temperature`` is a buffer: it moves with
    ``.to(device)`` and is saved in the ``state_dict``.

    >>> scaler = TemperatureScaler().fit(val_logits, val_targets)  # doctest: +SKIP
    >>> probs = scaler.transform(test_logits)  # doctest: +SKIP
    """

    temperature: torch.Tensor

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        temperature = check.real("TemperatureScaler", "temperature", temperature)
        if temperature <= 0:
            raise ValueError(f"TemperatureScaler: temperature must be > 0, got {temperature}")
        self.register_buffer("temperature", torch.tensor(temperature))

    def fit(self, logits: torch.Tensor, targets: torch.Tensor) -> TemperatureScaler:
        """Sets ``temperature`` to :func:`fit_temperature` of these held-out logits; returns self."""
        fitted = fit_temperature(logits, targets)
        # In the buffer's dtype: float32 unless the module was converted (.double()).
        self.temperature = fitted.to(self.temperature.device, self.temperature.dtype)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # As the constructor refuses them: a loaded temperature that is not one positive finite
        # number is reported the way load_state_dict reports its errors, and not loaded.
        value = state_dict.get(prefix + "temperature")
        if isinstance(value, torch.Tensor) and value.device.type != "meta":
            if value.numel() != 1 or not bool((value > 0) & value.isfinite()):
                error_msgs.append(f"TemperatureScaler: temperature must be one positive finite number, got {value}")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        check.floating("TemperatureScaler", "logits", logits)
        return logits / self.temperature.to(logits.device, logits.dtype)

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """The calibrated probabilities, ``softmax(logits / temperature)`` over the last dim."""
        return torch.softmax(self(logits), dim=-1)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature.item():.4g}"
