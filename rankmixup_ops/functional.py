"""The public loss functions: check arguments, choose a backend, call it.

Every function here checks its arguments before any kernel runs (SPEC §9) and then hands
normalised tensors to one backend (:mod:`rankmixup_ops.backends`):

- ``mix_logits`` as ``(K*B, C)``; ``lam`` as ``(K, B)`` in the logits' accumulation dtype (float64
  for float64 logits, else float32), detached; ``targets``/``index`` as int64; the options as one
  :class:`~rankmixup_ops._types.LossOptions`.

The backend derives each mix's relevance (SPEC §3), all the loss needs to know about ``lam``,
``index`` and the partner's label, inside its loss.
"""

from __future__ import annotations

import functools

import torch

from . import _checks as check
from . import reference
from ._types import LossOptions, LossOutput, accumulation_dtype
from .backends import eager_front_end, resolve

__all__ = ["rankmixup_loss", "mrl_loss", "mndcg_loss", "soft_targets"]

MODES = ("mndcg", "mrl")
SCORES = ("logit", "prob")
REDUCTIONS = ("mean", "sum", "none")


def rankmixup_loss(
    logits: torch.Tensor,
    mix_logits: torch.Tensor,
    targets: torch.Tensor,
    lam,
    index: torch.Tensor,
    *,
    mode: str = "mndcg",
    alpha: float = 0.1,
    margin: float = 2.0,
    score: str = "logit",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
    validate: bool = False,
    backend: str = "auto",
) -> LossOutput:
    """RankMixup loss ``CE(logits) + alpha * rank(logits, mix_logits)``.

    Args:
        logits: ``(B, C)`` network output on the raw batch (float16/bfloat16/float32/float64).
        mix_logits: ``(K*B, C)`` (or ``(K, B, C)``) output on the mixed batch, mix-major as
            :func:`rankmixup_ops.mix` lays it out; same dtype and device as ``logits``.
        targets: ``(B,)`` integer labels; ``ignore_index`` marks samples to skip.
        lam: mixing coefficients, ``(K,)`` or ``(K, B)``.
        index: ``(K, B)`` integer partners; row k a permutation of ``0..B-1``.
        mode: ``"mndcg"`` (M-NDCG) or ``"mrl"`` (margin ranking).
        alpha: weight of the rank term (>= 0).
        margin: MRL margin (``mode="mrl"`` only).
        score: MRL score, ``"logit"`` (max logit) or ``"prob"`` (max softmax); M-NDCG always
            ranks by confidence.
        label_smoothing: for the CE term, as in ``torch.nn.functional.cross_entropy``.
        reduction: ``"mean"`` over valid samples, ``"sum"``, or ``"none"`` (per sample, 0 for
            ignored ones).
        weight: class weights ``(C,)`` of the CE term, as in ``torch.nn.functional.cross_entropy``:
            sample b's CE is weighted by ``weight[targets[b]]`` (the smoothing term by each
            class's weight), and the mean divides the CE by the summed weights of the valid
            targets; the rank term is unweighted. Not differentiable.
        validate: also run the checks that read values (label range, permutations, lam in
            [0, 1]); they synchronise with the device. ``RANKMIXUP_VALIDATE=1`` turns them on too.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``LossOutput(loss, ce, rank)``; ``ce`` and ``rank`` are detached. The loss is float32
        (float64 for float64 logits) whatever the input dtype.
    """
    fn = "rankmixup_loss"
    options = loss_options(fn, mode, score, 1.0, alpha, margin, ignore_index, label_smoothing, reduction, weight)
    return loss_call(fn, logits, mix_logits, targets, lam, index, options, validate, backend)


def mrl_loss(
    logits: torch.Tensor,
    mix_logits: torch.Tensor,
    targets: torch.Tensor,
    lam,
    index: torch.Tensor,
    *,
    margin: float = 2.0,
    score: str = "logit",
    ignore_index: int = -100,
    reduction: str = "mean",
    validate: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The MRL rank term alone: ``(1/K) sum_k keep * relu(score(mix) - score(raw) + margin)``,
    reduced over valid samples. Arguments as in :func:`rankmixup_loss`."""
    fn = "mrl_loss"
    options = loss_options(fn, "mrl", score, 0.0, 1.0, margin, ignore_index, 0.0, reduction)
    return loss_call(fn, logits, mix_logits, targets, lam, index, options, validate, backend).loss


def mndcg_loss(
    logits: torch.Tensor,
    mix_logits: torch.Tensor,
    targets: torch.Tensor,
    lam,
    index: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    validate: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The M-NDCG rank term alone: ``1 - NDCG`` of [raw, mixes by relevance], reduced over
    valid samples. Arguments as in :func:`rankmixup_loss`."""
    fn = "mndcg_loss"
    options = loss_options(fn, "mndcg", "logit", 0.0, 1.0, 0.0, ignore_index, 0.0, reduction)
    return loss_call(fn, logits, mix_logits, targets, lam, index, options, validate, backend).loss


def loss_options(fn: str, mode, score, ce_weight, alpha, margin, ignore_index, label_smoothing,
                 reduction, weight=None) -> LossOptions:
    """The checked :class:`LossOptions` of a call of ``fn`` (arguments in its field order); a
    ``weight`` is checked here as far as it can be without the logits (see :func:`class_weight`)."""
    if weight is not None:
        check.floating(fn, "weight", weight)
        check.shape(fn, "weight", weight, "(C,) with C >= 1", weight.dim() == 1 and weight.numel() > 0)
    scalars = (fn, mode, score, ce_weight, alpha, margin, ignore_index, label_smoothing, reduction)
    # Without the memo under torch.compile: traced once per graph, the scalars possibly symbolic
    # (dynamic=True), and Dynamo would skip the cache with a warning anyway.
    checked = _scalar_options.__wrapped__ if torch.compiler.is_compiling() else _scalar_options
    try:
        options = checked(*scalars)
    except TypeError:
        # An unhashable value (a list, say) cannot be a cache key: the checks say what is wrong.
        options = _scalar_options.__wrapped__(*scalars)
    return options if weight is None else options._replace(weight=weight)


# A training loop calls the loss with the same options at every step: their checks run once per
# distinct set of values rather than once per call, which at the paper's shapes spares about a
# fifth of a call's Python (more with cold caches). Typed, so that 1, 1.0 and True are three
# keys and a bool is refused as before; values that fail a check raise and are not cached.
@functools.lru_cache(maxsize=64, typed=True)
def _scalar_options(fn, mode, score, ce_weight, alpha, margin, ignore_index, label_smoothing, reduction) -> LossOptions:
    return LossOptions(
        check.choice(fn, "mode", mode, MODES),
        check.choice(fn, "score", score, SCORES),
        ce_weight,  # set by the library (1 or 0), never by the user
        check.real(fn, "alpha", alpha, low=0.0),
        check.real(fn, "margin", margin),
        check.int64(fn, "ignore_index", ignore_index),
        check.real(fn, "label_smoothing", label_smoothing, low=0.0, high=1.0),
        check.choice(fn, "reduction", reduction, REDUCTIONS),
    )


def class_weight(fn: str, weight: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``weight`` as the backends take it: ``(C,)`` for the logits' C, on their device, in their
    accumulation dtype, contiguous and detached (class weights are data, not parameters)."""
    if weight.shape != (logits.shape[1],):
        raise check.shape_error(fn, "weight", weight, f"({logits.shape[1]},), one per class of logits")
    check.same_device(fn, "logits", logits, weight=weight)
    return weight.detach().to(accumulation_dtype(logits.dtype)).contiguous()


def loss_call(fn: str, logits, mix_logits, targets, lam, index, options: LossOptions, validate, backend) -> LossOutput:
    """Checks the tensors, then runs the backend with ``options`` (checked by the caller, once:
    the modules check theirs at construction)."""
    # The common eager call in one native call (csrc/eager_loss.cpp) where the backend has that
    # front end: the checks below and the loss (whose kernel derives the relevance), without
    # their Python cost. It answers None to a call it does not take whole (one to validate
    # included), and the checked path below takes it.
    native = eager_front_end(backend)
    if native is not None:
        out = native.loss(logits, mix_logits, targets, lam, index, options, validate)
        if out is not None:
            return out
    validate = check.validation_requested(check.flag(fn, "validate", validate))
    logits, mix_logits, targets, lam, index = check_loss_inputs(fn, logits, mix_logits, targets, lam, index)
    if options.weight is not None:
        options = options._replace(weight=class_weight(fn, options.weight, logits))
    if validate:
        check.validate_values(
            fn,
            lam=lam,
            index=index,
            targets=targets,
            num_classes=logits.shape[1],
            ignore_index=options.ignore_index,
        )
    impl = resolve(fn, backend, logits.device)
    # lam is sampled data: the loss is differentiable in the logits alone (SPEC §6), on every
    # backend, even for a lam that requires grad.
    return impl.loss(logits, mix_logits, targets, lam.detach() if lam.requires_grad else lam, index, options)


def check_loss_inputs(fn, logits, mix_logits, targets, lam, index):
    """Shape/dtype/device checks of the loss tensors; returns them normalised
    (``mix_logits`` ``(K*B, C)``, ``lam`` ``(K, B)`` in the logits' accumulation dtype,
    ``targets``/``index`` int64)."""
    check.floating(fn, "logits", logits)
    if logits.dim() != 2 or logits.numel() == 0:
        raise check.shape_error(fn, "logits", logits, "(B, C) with B >= 1 and C >= 1")
    batch, num_classes = logits.shape
    targets = check.integer(fn, "targets", targets)
    if targets.shape != (batch,):
        raise check.shape_error(fn, "targets", targets, f"({batch},) to match logits")
    device = logits.device
    lam, index = check.mixing(fn, lam, index, batch=batch, device=device, dtype=accumulation_dtype(logits.dtype))
    num_mix = index.shape[0]
    check.floating(fn, "mix_logits", mix_logits)
    flat_shape = (num_mix * batch, num_classes)
    if mix_logits.shape != flat_shape and mix_logits.shape != (num_mix, batch, num_classes):
        raise check.shape_error(
            fn,
            "mix_logits",
            mix_logits,
            f"(K*B, C) = {flat_shape} or (K, B, C) = ({num_mix}, {batch}, {num_classes})",
        )
    if mix_logits.dtype != logits.dtype:
        raise TypeError(f"{fn}: mix_logits has dtype {mix_logits.dtype} but logits has {logits.dtype}; they must match")
    # One chained comparison when all agree (the common case); same_device then names the odd one out.
    if not mix_logits.device == targets.device == lam.device == index.device == device:
        check.same_device(fn, "logits", logits, mix_logits=mix_logits, targets=targets, lam=lam, index=index)
    if mix_logits.dim() == 3:  # only then: even a no-op reshape puts a view node in the autograd graph
        mix_logits = mix_logits.reshape(flat_shape)
    return logits, mix_logits, targets, lam, index


def soft_targets(
    targets: torch.Tensor,
    lam,
    index: torch.Tensor,
    num_classes: int,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mixed soft labels for plain mixup cross-entropy, ``(K*B, num_classes)`` float32:
    ``soft[k*B+b] = lam*y[b] + (1-lam)*y[index[k,b]]`` with ``y`` the (smoothed) one-hot label.

    Labels outside ``[0, num_classes)`` (ignored samples) contribute rows of zeros.
    """
    fn = "soft_targets"
    targets = check.integer(fn, "targets", targets)
    check.shape(fn, "targets", targets, "(B,) with B >= 1", targets.dim() == 1 and targets.numel() > 0)
    lam, index = check.mixing(fn, lam, index, batch=targets.shape[0], device=targets.device)
    check.same_device(fn, "targets", targets, lam=lam, index=index)
    num_classes = check.integral(fn, "num_classes", num_classes, low=1)
    label_smoothing = check.real(fn, "label_smoothing", label_smoothing, low=0.0, high=1.0)
    return reference.soft_targets(targets, lam, index, num_classes, label_smoothing)
