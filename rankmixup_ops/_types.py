"""Types shared by the public API and every backend: the loss options, the results, and the
error of a backend that cannot be loaded."""

from __future__ import annotations

from typing import NamedTuple

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs are computed in float64, everything else in float32 (SPEC §6); lam and the
    relevance travel in this dtype too."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def image_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout of a CutMix result for images ``x`` (B, C, H, W): channels-last when ``x`` is
    (and is not also contiguous, as when C = 1), else contiguous. csrc/op_args.h says the same."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class LossOutput(NamedTuple):
    """What the RankMixup losses return.

    ``loss`` carries the gradient; ``ce`` and ``rank`` are its two parts, detached, for logging
    (``loss = ce + alpha * rank``). With ``reduction="none"`` all three are ``(B,)``.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    rank: torch.Tensor


class MixupBatch(NamedTuple):
    """A mixed batch: ``inputs`` is ``(K*B, *feat)`` mix-major, with the ``lam`` ``(K, B)`` and
    ``index`` ``(K, B)`` that made it (pass both on to the loss)."""

    inputs: torch.Tensor
    lam: torch.Tensor
    index: torch.Tensor


class LossOptions(NamedTuple):
    """Every option of the fused loss, as one value: built once per call by
    ``functional.loss_options`` (which checks the scalar ones once per distinct set of values)
    and handed whole to the backend.

    The fields are in the order of the loss operators' schema arguments (made from the C++
    list ``RANKMIXUP_LOSS_OPTIONS``, csrc/include/rankmixup/sample_loss.h; a test holds the two
    together), so that a compiled backend passes them as
    ``op(logits, mix_logits, targets, lam, index, *options)``. The
    defaults are :func:`rankmixup_ops.rankmixup_loss`'s. ``ce_weight`` is 1 for the loss and 0
    for the rank terms alone (``mrl_loss``, ``mndcg_loss``). ``weight`` holds the class weights
    of the CE term, ``(C,)`` in the logits' accumulation dtype and on their device, or None;
    it is the one tensor among the options (the operators take it as ``Tensor? weight``).
    """

    mode: str = "mndcg"
    score: str = "logit"
    ce_weight: float = 1.0
    alpha: float = 0.1
    margin: float = 2.0
    ignore_index: int = -100
    label_smoothing: float = 0.0
    reduction: str = "mean"
    weight: torch.Tensor | None = None


class BackendUnavailable(RuntimeError):
    """A backend cannot be loaded in this install; the message says why and how to get it."""
