"""Drop-in replacements for the loss classes of the RankMixup reference code.

Switching is a one-line import change::

    # from loss import RankMixup_MNDCG
    from rankmixup_ops.compat import RankMixup_MNDCG

Same constructor arguments, same ``forward(inputs, targets, mixup, target_re, lam)`` returning
``(loss, loss_ce, loss_mixup)``, computed by this package's fused loss, with the reference
code's bugs fixed (SPEC §5): MRL works for any number of mixes K, its mask drops the mixes
whose soft target holds a 1 (same-class pairs, lam 0 or 1) instead of scaling the loss, ties in
the M-NDCG ordering are broken stably, and ``ignore_index`` drops the ignored samples' mixes
too. ``loss_ce`` and ``loss_mixup`` are detached (they are for logging).

The pairing of each mix is read off ``target_re`` the way the reference code reads it: its
relevance is the largest entry of the mixed soft target, and a largest entry within float32
rounding of 1 (``lam + (1 - lam)`` for a same-class pair) counts as exactly 1.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _checks as check
from ._types import accumulation_dtype
from .backends import eager_front_end, resolve
from .functional import loss_options

__all__ = ["RankMixup_MRL", "RankMixup_MNDCG"]


class _RankMixupCompat(nn.Module):
    mode: str

    def __init__(self, num_classes: int, alpha: float, ignore_index: int, margin: float):
        super().__init__()
        fn = type(self).__name__
        self._forward_name = f"{fn}.forward"  # what forward's errors are prefixed with
        self.num_classes = check.integral(fn, "num_classes", num_classes, low=1)
        # The reference code's loss: max-logit MRL score, no smoothing, mean over the batch.
        self.options = loss_options(fn, self.mode, "logit", 1.0, alpha, margin, ignore_index, 0.0, "mean")

    # The reference code's attributes, read off the options.
    alpha = property(lambda self: self.options.alpha)
    margin = property(lambda self: self.options.margin)
    ignore_index = property(lambda self: self.options.ignore_index)
    # What forward returns, as the reference code names it: its trainer logs one meter per name
    # when the loss has them, and the total alone when it does not.
    names = property(lambda self: ("loss", "loss_ce", "loss_mixup"))

    def forward(self, inputs, targets, mixup, target_re, lam):
        """``inputs`` ``(B, C)`` raw logits, ``targets`` ``(B,)``, ``mixup`` ``(K*B, C)`` mixed
        logits, ``target_re`` ``(K*B, C)`` their soft targets, ``lam`` the K mixing
        coefficients (only their count is used, as in the reference code)."""
        # The common eager call in one native call (csrc/eager_loss.cpp), as in functional.loss_call.
        native = eager_front_end("auto")
        if native is not None:
            out = native.compat_loss(inputs, targets, mixup, target_re, lam, self.num_classes, self.options)
            if out is not None:
                return out
        fn = self._forward_name
        classes = self.num_classes
        check.floating(fn, "inputs", inputs)
        if inputs.dim() != 2 or inputs.shape[1] != classes or inputs.shape[0] == 0:
            raise check.shape_error(fn, "inputs", inputs, f"(B, {classes})")
        batch = inputs.shape[0]
        targets = check.integer(fn, "targets", targets)
        if targets.shape != (batch,):
            raise check.shape_error(fn, "targets", targets, f"({batch},)")
        check.floating(fn, "mixup", mixup)
        rows = mixup.shape[0] if mixup.dim() == 2 else -1
        if rows <= 0 or rows % batch != 0 or mixup.shape[1] != classes:
            raise check.shape_error(fn, "mixup", mixup, f"(K*{batch}, {classes})")
        if mixup.dtype != inputs.dtype:
            raise TypeError(f"{fn}: mixup has dtype {mixup.dtype} but inputs has {inputs.dtype}; they must match")
        check.floating(fn, "target_re", target_re)
        if target_re.shape != mixup.shape:
            raise check.shape_error(fn, "target_re", target_re, f"{tuple(mixup.shape)} like mixup")
        device = inputs.device
        if not targets.device == mixup.device == target_re.device == device:
            check.same_device(fn, "inputs", inputs, targets=targets, mixup=mixup, target_re=target_re)
        num_mix = rows // batch
        if isinstance(lam, torch.Tensor) and lam.numel() not in (num_mix, num_mix * batch):
            raise ValueError(f"{fn}: lam has {lam.numel()} values but mixup holds {num_mix} mixes of {batch} samples")

        impl = resolve(fn, "auto", device)
        rel = impl.soft_relevance(target_re.detach(), num_mix, accumulation_dtype(inputs.dtype))
        out = impl.loss(inputs, mixup, targets, rel, None, self.options)  # no partners: rel as given
        return out.loss, out.ce, out.rank


class RankMixup_MRL(_RankMixupCompat):
    """The reference code's ``RankMixup_MRL``: CE + alpha * margin ranking on max logits."""

    mode = "mrl"

    def __init__(self, num_classes: int = 10, margin: float = 0.1, alpha: float = 0.1, ignore_index: int = -100):
        super().__init__(num_classes, alpha, ignore_index, margin)


class RankMixup_MNDCG(_RankMixupCompat):
    """The reference code's ``RankMixup_MNDCG``: CE + alpha * (1 - NDCG of the confidences)."""

    mode = "mndcg"

    def __init__(self, num_classes: int = 10, alpha: float = 0.1, ignore_index: int = -100):
        super().__init__(num_classes, alpha, ignore_index, margin=0.0)
