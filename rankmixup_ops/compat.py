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
from .backends import resolve
from .functional import loss_options

__all__ = ["RankMixup_MRL", "RankMixup_MNDCG"]

# lam*1 + (1-lam)*1 rounds to within a few ulps of 1 in float32.
_ONE_TOLERANCE = 4 * torch.finfo(torch.float32).eps


class _RankMixupCompat(nn.Module):
    mode: str

    def __init__(self, num_classes: int, alpha: float, ignore_index: int, margin: float):
        super().__init__()
        fn = type(self).__name__
        self.num_classes = check.integral(fn, "num_classes", num_classes, low=1)
        # The reference code's loss: max-logit MRL score, no smoothing, mean over the batch.
        self.options = loss_options(fn, self.mode, "logit", 1.0, alpha, margin, ignore_index, 0.0, "mean")

    # The reference code's attributes, read off the options.
    alpha = property(lambda self: self.options.alpha)
    margin = property(lambda self: self.options.margin)
    ignore_index = property(lambda self: self.options.ignore_index)

    def forward(self, inputs, targets, mixup, target_re, lam):
        """``inputs`` ``(B, C)`` raw logits, ``targets`` ``(B,)``, ``mixup`` ``(K*B, C)`` mixed
        logits, ``target_re`` ``(K*B, C)`` their soft targets, ``lam`` the K mixing
        coefficients (only their count is used, as in the reference code)."""
        fn = f"{type(self).__name__}.forward"
        check.floating(fn, "inputs", inputs)
        check.shape(fn, "inputs", inputs, f"(B, {self.num_classes})", inputs.dim() == 2 and inputs.shape[1] == self.num_classes and inputs.shape[0] >= 1)
        batch = inputs.shape[0]
        targets = check.integer(fn, "targets", targets)
        check.shape(fn, "targets", targets, f"({batch},)", targets.shape == (batch,))
        check.floating(fn, "mixup", mixup)
        rows = mixup.shape[0] if mixup.dim() == 2 else -1
        check.shape(fn, "mixup", mixup, f"(K*{batch}, {self.num_classes})", rows > 0 and rows % batch == 0 and mixup.shape[1] == self.num_classes)
        if mixup.dtype != inputs.dtype:
            raise TypeError(f"{fn}: mixup has dtype {mixup.dtype} but inputs has {inputs.dtype}; they must match")
        check.floating(fn, "target_re", target_re)
        check.shape(fn, "target_re", target_re, f"{tuple(mixup.shape)} like mixup", target_re.shape == mixup.shape)
        check.same_device(fn, "inputs", inputs, targets=targets, mixup=mixup, target_re=target_re)
        num_mix = rows // batch
        if isinstance(lam, torch.Tensor) and lam.numel() not in (num_mix, num_mix * batch):
            raise ValueError(f"{fn}: lam has {lam.numel()} values but mixup holds {num_mix} mixes of {batch} samples")

        rel = target_re.detach().amax(dim=1).to(accumulation_dtype(inputs.dtype)).view(num_mix, batch)
        rel.masked_fill_(rel >= 1 - _ONE_TOLERANCE, 1.0)  # rel is amax's own new tensor (or its copy)
        out = resolve(fn, "auto", inputs.device).loss(inputs, mixup, targets, rel, self.options)
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
