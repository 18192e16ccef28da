"""Calibration metrics: ECE, AdaECE, classwise ECE, MCE, over/under-confidence, NLL, accuracy.

:func:`calibration_errors` scores one set of predictions; :class:`CalibrationMeter` accumulates
the same statistics batch by batch and across ``torch.distributed`` ranks;
:func:`reliability_diagram` returns (and optionally draws) the per-bin data. The definitions and
the bin-edge convention are in ``docs/metrics.md``.

Every metric except AdaECE is a function of per-bin sums (count, sum of confidences, sum of
hits), so one pass over a batch reduces it to a few ``(n_bins,)`` and ``(C, n_bins)`` tables that
add across batches and ranks. AdaECE bins by quantiles of *all* confidences, so it needs every
(confidence, correct) pair. All sums are float64, so counts stay exact (to 2**53 samples) and
long epochs lose no precision, whatever the input dtype.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from .. import _checks as check

__all__ = ["METRICS", "CalibrationMeter", "calibration_errors", "reliability_diagram"]

METRICS = ("ece", "adaece", "cece", "mce", "oe", "ue", "nll", "acc")  # the keys of every result


class _Sums(NamedTuple):
    """Sufficient statistics that add across batches and ranks (float64)."""

    top_label: torch.Tensor  # (3, n_bins): count, sum confidence, sum correct, per confidence bin
    classwise: torch.Tensor  # (3, C, n_bins): count, sum p_k, sum [target == k], per bin of p_k
    nll: torch.Tensor  # (): sum over samples of -log p(target)

    @classmethod
    def zeros(cls, num_classes: int, n_bins: int, device: torch.device) -> _Sums:
        def table(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(table(3, n_bins), table(3, num_classes, n_bins), table())


# --------------------------------------------------------------------------- argument checks


def _check_batch(fn: str, logits, targets, *, from_probs: bool, validate: bool) -> torch.Tensor:
    """Checks one batch; returns ``targets`` as int64. Value checks only when ``validate``."""
    check.floating(fn, "logits", logits)
    check.shape(fn, "logits", logits, "(N, C) with N >= 1 and C >= 1", logits.dim() == 2 and logits.numel() > 0)
    targets = check.integer(fn, "targets", targets)
    check.shape(fn, "targets", targets, f"({logits.shape[0]},) to match logits", targets.shape == logits.shape[:1])
    check.same_device(fn, "logits", logits, targets=targets)
    if check.validation_requested(validate):
        check.validate_values(fn, targets=targets, num_classes=logits.shape[1])
        if from_probs and not bool(((logits >= 0) & (logits <= 1)).all()):
            raise ValueError(
                f"{fn}: logits must be probabilities in [0, 1] when from_probs=True "
                "(validate=True found a value outside)"
            )
    return targets


# --------------------------------------------------------------------------- binning


def _equal_width_bins(values: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin index of each value: bin ``i`` holds ``(i/n, (i+1)/n]``; bin 0 also holds 0.

    Against the interior edges, ``bucketize(right=False)`` counts the edges strictly below
    ``v``: a value exactly on an edge goes to the lower bin, 0 to bin 0 and 1 to the last bin
    (nothing is dropped). The edges are the correctly rounded ``i / n`` (``torch.linspace`` is
    one ulp off for some ``n``, e.g. edge 11 of 15) and ``values`` is float64, so for inputs of
    float32 or narrower the comparison is the exact rational one.
    """
    edges = torch.arange(1, n_bins, dtype=torch.float64, device=values.device) / n_bins
    return torch.bucketize(values, edges)


def _binned_sums(bins: torch.Tensor, values: torch.Tensor, hits: torch.Tensor, n_slots: int) -> torch.Tensor:
    """``(3, n_slots)`` table of per-bin count, sum of ``values`` and sum of ``hits`` (float64).

    ``index_add_`` rather than ``bincount``: ``bincount`` reads the maximum index back to the
    host on CUDA, and this runs on every batch.
    """
    sums = values.new_zeros(3, n_slots)
    sums[0].index_add_(0, bins, values.new_ones(()).expand_as(values))
    sums[1].index_add_(0, bins, values)
    sums[2].index_add_(0, bins, hits)
    return sums


def _probabilities(logits: torch.Tensor, targets: torch.Tensor, from_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 class probabilities ``(N, C)`` and per-sample ``-log p(target)`` ``(N,)``.

    The loss of a sample whose target is outside ``[0, C)`` is NaN: gathering at a clamped
    index and masking afterwards neither crashes nor needs a host sync to notice.
    """
    in_range = (targets >= 0) & (targets < logits.shape[1])
    safe_targets = torch.where(in_range, targets, 0).unsqueeze(1)
    if from_probs:
        probs = logits.double()
        # A zero probability would give an infinite loss; clamp at the input dtype's smallest
        # normal, the least probability that dtype can state with full precision.
        target_probs = probs.gather(1, safe_targets).clamp_min(torch.finfo(logits.dtype).tiny)
        nll = -target_probs.log()
    else:
        # A float16/bfloat16 softmax is too coarse for bins 1/15 wide; float32 suffices.
        log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(dim=1)
        probs = log_probs.exp().double()
        nll = -log_probs.gather(1, safe_targets).double()
    return probs, torch.where(in_range, nll.squeeze(1), math.nan)


def _batch_statistics(
    logits: torch.Tensor, targets: torch.Tensor, n_bins: int, from_probs: bool
) -> tuple[_Sums, torch.Tensor]:
    """One vectorised pass over a checked batch, with no host sync.

    Returns the batch's additive sums and its ``(2, N)`` float64 (confidence, correct) pairs.
    Metrics are measurements, not losses: the logits are detached, so neither a result nor a
    meter's state holds (and keeps alive, batch after batch) the model's autograd graph.
    """
    logits = logits.detach()
    num_classes = logits.shape[1]
    probs, nll = _probabilities(logits, targets, from_probs)
    confidence = probs.amax(dim=1)
    # argmax of the input, not of the probabilities: it returns the first maximum, and ties in
    # the input must stay ties (the softmax could round them apart).
    correct = (logits.argmax(dim=1) == targets).double()
    top_label = _binned_sums(_equal_width_bins(confidence, n_bins), confidence, correct, n_bins)

    # Offset class k's bins by k * n_bins so one scatter fills the whole (C, n_bins) table.
    classes = torch.arange(num_classes, device=logits.device)
    class_bins = _equal_width_bins(probs, n_bins) + classes * n_bins
    is_target = (targets.unsqueeze(1) == classes).double()
    classwise = _binned_sums(class_bins.flatten(), probs.flatten(), is_target.flatten(), num_classes * n_bins)

    sums = _Sums(top_label, classwise.view(3, num_classes, n_bins), nll.sum())
    return sums, torch.stack([confidence, correct])


# --------------------------------------------------------------------------- metrics from sums


def _bin_averages(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weight (count / N), mean value and mean hit of each bin of a ``(3, ..., n_bins)`` table.

    An empty bin has zero sums, so its weight, mean and hit rate are all 0: it drops out of
    every weighted sum and, as its gap is 0, out of the maximum gap too.
    """
    count, value_sum, hit_sum = sums
    nonzero = count.clamp_min(1)
    return count / count.sum(dim=-1, keepdim=True), value_sum / nonzero, hit_sum / nonzero


def _expected_gap(sums: torch.Tensor) -> torch.Tensor:
    """``sum_bins w * |mean value - mean hit|`` over the last dimension of a binned table."""
    weight, value, hit = _bin_averages(sums)
    return (weight * (value - hit).abs()).sum(dim=-1)


def _adaptive_ece(pairs: torch.Tensor, n_bins: int) -> torch.Tensor:
    """ECE over ``n_bins`` contiguous groups of the sorted confidences with near-equal counts.

    Group sizes follow ``numpy.array_split``: the first ``N % n_bins`` groups take one extra,
    and with ``N < n_bins`` the groups are the ``N`` singletons (the rest are empty).
    """
    confidence, correct = pairs
    order = confidence.argsort(stable=True)  # stable: ties split at a group edge reproducibly
    n = confidence.numel()
    sizes = torch.full((n_bins,), n // n_bins, device=pairs.device)
    sizes[: n % n_bins] += 1
    groups = torch.arange(n_bins, device=pairs.device).repeat_interleave(sizes, output_size=n)
    return _expected_gap(_binned_sums(groups, confidence[order], correct[order], n_bins))


def _errors(sums: _Sums, pairs: torch.Tensor | None, n_bins: int) -> dict[str, torch.Tensor]:
    """The metric dictionary; AdaECE is NaN when ``pairs`` were not kept."""
    weight, confidence, accuracy = _bin_averages(sums.top_label)
    gap = confidence - accuracy
    count, _, correct = sums.top_label.sum(dim=-1)
    adaece = _adaptive_ece(pairs, n_bins) if pairs is not None else torch.full_like(sums.nll, math.nan)
    return {
        "ece": (weight * gap.abs()).sum(),
        "adaece": adaece,
        "cece": _expected_gap(sums.classwise).mean(),
        "mce": gap.abs().amax(),
        "oe": (weight * confidence * gap.clamp_min(0)).sum(),
        "ue": (weight * confidence * (-gap).clamp_min(0)).sum(),
        "nll": sums.nll / count,
        "acc": correct / count,
    }


# --------------------------------------------------------------------------- public API


def calibration_errors(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    n_bins: int = 15,
    from_probs: bool = False,
    validate: bool = False,
) -> dict[str, torch.Tensor]:
    """Calibration metrics of a classifier's predictions (definitions in ``docs/metrics.md``).

    Args:
        logits: ``(N, C)`` scores, float16/bfloat16/float32/float64; probabilities when
            ``from_probs`` (rows need not sum to 1: confidence is the row maximum).
        targets: ``(N,)`` integer labels in ``[0, C)``. Without ``validate`` a label outside
            that range does not raise: it matches no class and makes ``nll`` NaN.
        n_bins: number of equal-width confidence bins (and of AdaECE's equal-count groups).
        from_probs: ``logits`` already holds probabilities.
        validate: also check the label range (and, with ``from_probs``, that probabilities
            lie in [0, 1]); these checks read values back and so synchronise with the device.
            ``RANKMIXUP_VALIDATE=1`` turns them on too.

    Returns:
        ``{"ece", "adaece", "cece", "mce", "oe", "ue", "nll", "acc"}``, each a 0-dim float64
        tensor on ``logits.device``. Nothing is read back to the host.
    """
    fn = "calibration_errors"
    n_bins = check.integral(fn, "n_bins", n_bins, low=1)
    from_probs = check.flag(fn, "from_probs", from_probs)
    validate = check.flag(fn, "validate", validate)
    targets = _check_batch(fn, logits, targets, from_probs=from_probs, validate=validate)
    sums, pairs = _batch_statistics(logits, targets, n_bins, from_probs)
    return _errors(sums, pairs, n_bins)


class CalibrationMeter:
    """Streaming :func:`calibration_errors`: ``update`` per batch, ``compute`` once.

    ``compute()`` equals :func:`calibration_errors` on the concatenated batches (to float
    rounding). ``update`` is one vectorised pass with no host sync; ``compute`` may sync.

    State: float64 per-bin sums, ``O(C * n_bins)``, on the device of the first batch. AdaECE
    bins by quantiles of all confidences, which no fixed-size summary gives, so with
    ``keep_confidences=True`` the meter also keeps every sample's (confidence, correct) pair:
    16 bytes per sample (16 MB per million). With ``keep_confidences=False`` it keeps only the
    sums and ``compute()["adaece"]`` is NaN.

    Distributed: every rank updates with its shard, then calls :meth:`all_reduce`, after which
    every rank holds the statistics of all ranks. Ranks may have seen different numbers of
    samples, or none.

    >>> meter = CalibrationMeter(n_bins=15)
    >>> for inputs, targets in loader:  # doctest: +SKIP
    ...     meter.update(model(inputs), targets)
    >>> errors = meter.all_reduce().compute()  # doctest: +SKIP

    Args:
        n_bins: as for :func:`calibration_errors`.
        num_classes: expected ``C``; ``None`` takes it from the first batch.
        from_probs: batches hold probabilities, as for :func:`calibration_errors`.
        keep_confidences: keep the per-sample pairs AdaECE needs (see above).
        validate: run the value checks of :func:`calibration_errors` on every batch.
    """

    def __init__(
        self,
        n_bins: int = 15,
        num_classes: int | None = None,
        *,
        from_probs: bool = False,
        keep_confidences: bool = True,
        validate: bool = False,
    ):
        fn = "CalibrationMeter"
        self.n_bins = check.integral(fn, "n_bins", n_bins, low=1)
        self._requested_classes = None if num_classes is None else check.integral(fn, "num_classes", num_classes, low=1)
        self.from_probs = check.flag(fn, "from_probs", from_probs)
        self.keep_confidences = check.flag(fn, "keep_confidences", keep_confidences)
        self.validate = check.flag(fn, "validate", validate)
        self.reset()

    def reset(self) -> None:
        """Forget every sample (and a ``num_classes`` learnt from data); start a new epoch."""
        self._sums: _Sums | None = None
        self._pairs: list[torch.Tensor] = []
        self._reduced = False

    @property
    def num_classes(self) -> int | None:
        """``C``: as given, else as seen since the last reset; ``None`` before any data."""
        return self._requested_classes if self._sums is None else self._sums.classwise.shape[1]

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``logits`` ``(N, C)`` (probabilities if ``from_probs``), ``targets`` ``(N,)``."""
        fn = "CalibrationMeter.update"
        self._check_not_reduced(fn)
        targets = _check_batch(fn, logits, targets, from_probs=self.from_probs, validate=self.validate)
        if self.num_classes is not None:
            check.shape(fn, "logits", logits, f"(N, {self.num_classes})", logits.shape[1] == self.num_classes)
        sums, pairs = _batch_statistics(logits, targets, self.n_bins, self.from_probs)
        self._add(sums, pairs)

    def compute(self) -> dict[str, torch.Tensor]:
        """The metrics of every sample seen, as :func:`calibration_errors` returns them."""
        if self._sums is None:
            raise RuntimeError("CalibrationMeter.compute: no samples yet; call update() first")
        return _errors(self._sums, self._all_pairs(), self.n_bins)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The accumulated statistics (``{}`` before the first batch), e.g. to checkpoint: a
        snapshot (copies, ``O(C * n_bins)`` plus the kept pairs), which later updates leave as it
        was, so that its sums and its pairs always describe the same samples."""
        if self._sums is None:
            return {}
        state = {name: total.clone() for name, total in self._sums._asdict().items()}
        if self.keep_confidences:
            state["pairs"] = self._all_pairs().clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the statistics with a :meth:`state_dict` of a meter configured alike. A state
        that does not fit raises and leaves the meter as it was."""
        kept = self._sums, self._pairs, self._reduced
        self.reset()
        try:
            self._add_state("CalibrationMeter.load_state_dict", state)
        except BaseException:
            self._sums, self._pairs, self._reduced = kept
            raise

    def merge(self, other: CalibrationMeter) -> CalibrationMeter:
        """Add ``other``'s samples (after this meter's); returns ``self``."""
        fn = "CalibrationMeter.merge"
        self._check_not_reduced(fn)
        if not isinstance(other, CalibrationMeter):
            raise TypeError(f"{fn}: other must be a CalibrationMeter, got {type(other).__name__}")
        for name in ("n_bins", "from_probs", "keep_confidences"):
            if getattr(other, name) != getattr(self, name):
                raise ValueError(f"{fn}: other.{name}={getattr(other, name)!r} but self.{name}={getattr(self, name)!r}")
        self._add_state(fn, other.state_dict())
        return self

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> CalibrationMeter:
        """Combine the statistics of all ranks of ``group`` on every rank; returns ``self``.

        A collective: every rank of ``group`` must call it, with meters built alike. The sums
        are summed (one ``all_reduce``) and the AdaECE pairs gathered in rank order (ranks may
        hold different counts, so sizes are gathered first and shards padded). A rank that saw
        no batch learns ``C`` from the others.

        Afterwards the meter is frozen until :meth:`reset`: reducing again would count the
        other ranks twice. Without an initialised process group this only freezes, so the same
        loop runs in a single process.
        """
        self._check_not_reduced("CalibrationMeter.all_reduce")
        if dist.is_available() and dist.is_initialized():
            self._all_reduce(group)
        self._reduced = True
        return self

    # ------------------------------------------------------------------- internals

    def _check_not_reduced(self, fn: str) -> None:
        if self._reduced:
            raise RuntimeError(
                f"{fn}: the meter already holds every rank's statistics after all_reduce(); "
                "call reset() before accumulating again"
            )

    def _add(self, sums: _Sums, pairs: torch.Tensor | None) -> None:
        if self._sums is None:
            self._sums = sums
        else:
            for total, part in zip(self._sums, sums):
                total.add_(part.to(total.device))
        if self.keep_confidences:
            self._pairs.append(pairs.to(self._sums.nll.device, torch.float64))

    def _add_state(self, fn: str, state: dict[str, torch.Tensor]) -> None:
        """Adds a :meth:`state_dict` after checking that it fits this meter."""
        if not isinstance(state, dict):
            raise TypeError(f"{fn}: state must be a dict (a CalibrationMeter.state_dict()), got {type(state).__name__}")
        if not state:
            return
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{fn}: state[{name!r}] must be a tensor, got {type(value).__name__}")
        expected = set(_Sums._fields) | ({"pairs"} if self.keep_confidences else set())
        if not expected <= state.keys():
            raise ValueError(f"{fn}: state must hold {sorted(expected)}, got {sorted(state)}")
        sums = _Sums(*(state[name].to(torch.float64, copy=True) for name in _Sums._fields))
        classes = sums.classwise.shape[1] if sums.classwise.dim() == 3 else None
        fits = (
            sums.top_label.shape == (3, self.n_bins)
            and sums.classwise.shape == (3, classes, self.n_bins)
            and sums.nll.shape == ()
            and self.num_classes in (None, classes)
        )
        if not fits:
            raise ValueError(
                f"{fn}: state does not fit a meter with n_bins={self.n_bins} and "
                f"num_classes={self.num_classes}: classwise has shape {tuple(sums.classwise.shape)}"
            )
        pairs = state.get("pairs") if self.keep_confidences else None
        if pairs is not None and (pairs.dim() != 2 or pairs.shape[0] != 2):
            raise ValueError(f"{fn}: state['pairs'] must have shape (2, N), got {tuple(pairs.shape)}")
        self._add(sums, pairs)

    def _all_pairs(self) -> torch.Tensor | None:
        """All (confidence, correct) pairs as one ``(2, N)`` tensor, or ``None`` if not kept."""
        if not self.keep_confidences:
            return None
        if len(self._pairs) > 1:
            self._pairs = [torch.cat(self._pairs, dim=1)]  # concatenate once, not per compute()
        return self._pairs[0]

    def _all_reduce(self, group: dist.ProcessGroup | None) -> None:
        device = self._sums.nll.device if self._sums is not None else _collective_device(group)
        pairs = self._all_pairs() if self._sums is not None else None
        if pairs is None:
            pairs = torch.empty(2, 0, dtype=torch.float64, device=device)

        # First exchange (has samples, C, number of pairs): C lets a rank without samples
        # allocate zero sums, and as every rank sees a disagreement, all of them raise
        # together instead of some hanging in the next collective.
        local = torch.tensor([int(self._sums is not None), self.num_classes or 0, pairs.shape[1]], device=device)
        shapes = torch.stack(_all_gather(local, group)).tolist()
        classes = sorted({c for _, c, _ in shapes if c})
        if len(classes) > 1:
            raise ValueError(f"CalibrationMeter.all_reduce: ranks disagree on the number of classes: {classes}")
        if not any(has_samples for has_samples, _, _ in shapes):
            return
        if self._sums is None:
            self._sums = _Sums.zeros(classes[0], self.n_bins, device)

        flat = torch.cat([t.flatten() for t in self._sums])  # one collective for all sums
        dist.all_reduce(flat, group=group)
        parts = flat.split([t.numel() for t in self._sums])
        self._sums = _Sums(*(part.view_as(t) for part, t in zip(parts, self._sums)))
        if self.keep_confidences:
            self._pairs = [_all_gather_columns(pairs, [n for _, _, n in shapes], group)]


# --------------------------------------------------------------------------- distributed helpers


def _collective_device(group: dist.ProcessGroup | None) -> torch.device:
    """Where an empty rank puts its tensors: NCCL only moves CUDA tensors."""
    if dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> list[torch.Tensor]:
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, tensor, group=group)
    return gathered


def _all_gather_columns(local: torch.Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenates in rank order the ``(rows, sizes[rank])`` tensors of every rank.

    ``all_gather`` needs one shape on all ranks, so each shard is padded to the largest and
    the padding cut off afterwards.
    """
    padded = local.new_zeros(local.shape[0], max(sizes))
    padded[:, : local.shape[1]] = local
    return torch.cat([shard[:, :size] for shard, size in zip(_all_gather(padded, group), sizes)], dim=1)


# --------------------------------------------------------------------------- reliability diagram


def reliability_diagram(
    logits_or_meter: torch.Tensor | CalibrationMeter,
    targets: torch.Tensor | None = None,
    *,
    n_bins: int | None = None,
    from_probs: bool = False,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Per-bin data of the top-label confidence bins, drawn as a PNG when ``path`` is given.

    Args:
        logits_or_meter: ``(N, C)`` logits (with ``targets``), or a :class:`CalibrationMeter`,
            whose ``n_bins`` and ``from_probs`` then apply.
        targets: ``(N,)`` labels; only with logits.
        n_bins: number of bins; default 15 for logits, the meter's own for a meter.
        from_probs: ``logits`` holds probabilities; only with logits.
        path: where to write the PNG (needs matplotlib, imported only then).
        title: the plot's title.

    Returns:
        CPU tensors ``edges`` ``(n_bins + 1,)``, ``count`` ``(n_bins,)`` int64, ``confidence``
        and ``accuracy`` ``(n_bins,)`` float64 (NaN for empty bins), and ``ece`` (a float).
    """
    fn = "reliability_diagram"
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or os.PathLike (where to write the PNG), got {type(path).__name__}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"{fn}: title must be a str or None, got {type(title).__name__}")
    if isinstance(logits_or_meter, CalibrationMeter):
        meter = logits_or_meter
        if targets is not None or from_probs:
            raise ValueError(f"{fn}: targets and from_probs apply to logits, not to a CalibrationMeter")
        if n_bins not in (None, meter.n_bins):
            raise ValueError(f"{fn}: n_bins={n_bins} differs from the meter's n_bins={meter.n_bins}")
        if meter._sums is None:
            raise RuntimeError(f"{fn}: the meter has no samples yet")
        top_label = meter._sums.top_label
    else:
        n_bins = check.integral(fn, "n_bins", 15 if n_bins is None else n_bins, low=1)
        from_probs = check.flag(fn, "from_probs", from_probs)
        targets = _check_batch(fn, logits_or_meter, targets, from_probs=from_probs, validate=False)
        top_label = _batch_statistics(logits_or_meter, targets, n_bins, from_probs)[0].top_label

    top_label = top_label.cpu()
    weight, confidence, accuracy = _bin_averages(top_label)
    empty = top_label[0] == 0
    data = {
        "edges": torch.arange(top_label.shape[1] + 1, dtype=torch.float64) / top_label.shape[1],
        "count": top_label[0].long(),
        "confidence": confidence.masked_fill(empty, math.nan),
        "accuracy": accuracy.masked_fill(empty, math.nan),
        "ece": float((weight * (confidence - accuracy).abs()).sum()),
    }
    if path is not None:
        _draw_reliability(data, path, title)
    return data


def _draw_reliability(data: dict[str, Any], path: str | os.PathLike, title: str | None) -> None:
    """Accuracy bars per bin, the gap to the mean confidence shaded, and the diagonal."""
    # Imported here so that matplotlib is needed only to draw. A bare Figure renders with Agg
    # and leaves pyplot's global state (and the user's backend) alone.
    from matplotlib.figure import Figure

    filled = data["count"] > 0
    left = data["edges"][:-1][filled].numpy()
    width = (data["edges"][1:] - data["edges"][:-1])[filled].numpy()
    accuracy = data["accuracy"][filled].numpy()
    confidence = data["confidence"][filled].numpy()

    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    axes.bar(left, accuracy, width, align="edge", color="tab:blue", edgecolor="black", label="Accuracy")
    axes.bar(
        left,
        confidence - accuracy,
        width,
        bottom=accuracy,
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        label=f"Gap (ECE = {data['ece']:.4f})",
    )
    axes.plot([0, 1], [0, 1], "k--", label="Perfect calibration")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="Confidence", ylabel="Accuracy", title=title or "Reliability diagram")
    axes.legend(loc="upper left")
    figure.savefig(path, dpi=120, bbox_inches="tight")
