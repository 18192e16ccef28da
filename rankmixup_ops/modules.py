"""nn.Module front ends of the functional API."""

from __future__ import annotations

import torch
from torch import nn

from . import _checks as check
from ._types import LossOutput, MixupBatch
from .backends import check_name
from .functional import loss_call, loss_options
from .mixup import cutmix_minmax_option, mixup

__all__ = ["RankMixupLoss", "Mixup"]


class RankMixupLoss(nn.Module):
    """:func:`rankmixup_ops.rankmixup_loss` as a module; options are fixed at construction
    and checked there.

    >>> criterion = RankMixupLoss(mode="mndcg", alpha=0.1)
    >>> out = criterion(logits, mix_logits, targets, batch.lam, batch.index)  # doctest: +SKIP
    >>> out.loss.backward()  # doctest: +SKIP
    """

    def __init__(
        self,
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
    ):
        super().__init__()
        fn = "RankMixupLoss"
        options = loss_options(fn, mode, score, 1.0, alpha, margin, ignore_index, label_smoothing, reduction, weight)
        # The class weights are a buffer, as in nn.CrossEntropyLoss: .to() moves them and the
        # state dict holds them; the options take the buffer's current value at each call.
        self.register_buffer("weight", weight)
        self.options = options._replace(weight=None)
        self.validate = check.flag(fn, "validate", validate)
        self.backend = check_name(fn, backend)

    def forward(self, logits, mix_logits, targets, lam, index) -> LossOutput:
        options = self.options if self.weight is None else self.options._replace(weight=self.weight)
        return loss_call("RankMixupLoss", logits, mix_logits, targets, lam, index, options, self.validate,
                         self.backend)

    def extra_repr(self) -> str:
        options = self.options
        margin = f", margin={options.margin}, score={options.score!r}" if options.mode == "mrl" else ""
        weighted = ", weight=(class weights)" if self.weight is not None else ""
        return f"mode={options.mode!r}, alpha={options.alpha}{margin}, reduction={options.reduction!r}{weighted}"


class Mixup(nn.Module):
    """:func:`rankmixup_ops.mixup` as a module: ``Mixup(num_mix, alpha)(x) -> MixupBatch``, with
    timm's switching options (``cutmix_alpha``, ``cutmix_minmax``, ``prob``, ``switch_prob``;
    ``per_sample`` for timm's ``mode="elem"``), checked at construction.

    It mixes in training and in eval mode alike: RankMixup needs the mixes to compute its
    loss, and whether to compute a loss is the training loop's decision.
    """

    def __init__(
        self,
        num_mix: int = 3,
        alpha: float = 2.0,
        *,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: tuple[float, float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        per_sample: bool = False,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        fn = "Mixup"
        self.num_mix = check.integral(fn, "num_mix", num_mix, low=1)
        self.alpha = check.real(fn, "alpha", alpha)
        self.cutmix_alpha = check.real(fn, "cutmix_alpha", cutmix_alpha, low=0.0)
        self.cutmix_minmax = cutmix_minmax_option(fn, "cutmix_minmax", cutmix_minmax)
        self.prob = check.real(fn, "prob", prob, low=0.0, high=1.0)
        self.switch_prob = check.real(fn, "switch_prob", switch_prob, low=0.0, high=1.0)
        self.per_sample = check.flag(fn, "per_sample", per_sample)
        self.generator = generator
        self.backend = check_name(fn, backend)

    def forward(self, x: torch.Tensor) -> MixupBatch:
        return mixup(
            x,
            self.num_mix,
            self.alpha,
            cutmix_alpha=self.cutmix_alpha,
            cutmix_minmax=self.cutmix_minmax,
            prob=self.prob,
            switch_prob=self.switch_prob,
            per_sample=self.per_sample,
            generator=self.generator,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        cutmix = f", cutmix_alpha={self.cutmix_alpha}, cutmix_minmax={self.cutmix_minmax}" if (
            self.cutmix_alpha > 0 or self.cutmix_minmax is not None) else ""
        return (f"num_mix={self.num_mix}, alpha={self.alpha}{cutmix}, prob={self.prob}, "
                f"switch_prob={self.switch_prob}, per_sample={self.per_sample}")
