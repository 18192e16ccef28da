"""The callables that are timed: for a case, an implementation and a pass, a function of no
arguments that runs the pass on inputs built once.

Implementations:

- ``reference``: the eager pure-PyTorch oracle (``rankmixup_ops.reference``), what a user
  would write by hand; the baseline of every speedup.
- ``torch.compile``: the same oracle under ``torch.compile`` (static shapes, compiled per case).
- each backend (``cpu``, ``cuda``, ``triton``): the public API (``rankmixup_loss`` / ``mix``)
  with ``backend=<name>``, argument checks included, since that is what a user calls.
- ``drop-in`` (loss only): the drop-in class of :mod:`rankmixup_ops.compat` for the mode
  (``RankMixup_MNDCG`` / ``RankMixup_MRL``), called as the RankMixup code calls its loss, with
  soft targets built once beforehand (its training loop builds them outside the loss too).
- ``op floor`` (loss only): the fused compiled operator of the device alone, through its C++
  autograd, on arguments prepared once (lam as (K, B), the options): no checks, no backend
  choice. What no front end over that operator can beat; the gap to it is the cost of the
  plumbing.

Forward runs with inputs that require gradients (the forward of a training step, which keeps
what the backward needs); forward+backward adds ``torch.autograd.grad`` of the loss (or of
the mixes against a fixed upstream gradient), so no ``.grad`` accumulates between calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

import rankmixup_ops
from rankmixup_ops import compat, reference
from rankmixup_ops._types import LossOptions, LossOutput, accumulation_dtype

from .shapes import Case

REFERENCE, COMPILED = "reference", "torch.compile"
DROP_IN, OP_FLOOR = "drop-in", "op floor"
LOSS_ONLY = (DROP_IN, OP_FLOOR)
_ORACLE = {"loss": reference.rankmixup_loss, "mix": reference.mix}
_PUBLIC = {"loss": rankmixup_ops.rankmixup_loss, "mix": rankmixup_ops.mix}


class Workload:
    """The inputs of one case on one device, and the timed callables over them.

    The ``torch.compile`` wrapper is made per workload, and the caller resets dynamo between
    cases, so each compiled function holds only its own case's graph (no recompilation limit,
    no guard checks over other shapes in the timed calls).
    """

    def __init__(self, case: Case, device: torch.device, seed: int = 0):
        self.case = case
        gen = torch.Generator(device).manual_seed(seed)
        # Paper's M-NDCG mixing, Beta(2, 2), one lam per mix.
        lam, index = rankmixup_ops.sample_mixup(case.batch, case.num_mix, 2.0, device=device, generator=gen)
        self._compiled: Callable | None = None
        rows = case.batch * (case.num_mix + 1)
        if case.op == "loss":
            # Spread like a partly trained network's logits: softmax neither flat nor one-hot.
            logits = torch.randn(rows, case.classes, device=device, generator=gen).mul_(3).to(case.dtype)
            self.wrt = (logits[: case.batch].detach().requires_grad_(), logits[case.batch :].detach().requires_grad_())
            targets = torch.randint(0, case.classes, (case.batch,), device=device, generator=gen)
            self.args, self.options = (*self.wrt, targets, lam, index), {"mode": case.mode}
            self.targets, self.lam, self.index = targets, lam, index
            self.grad_output = None  # a scalar loss
        else:
            x = torch.randn(rows, *case.feat, device=device, generator=gen).to(case.dtype)
            self.wrt = (x[: case.batch].detach().requires_grad_(),)
            self.args, self.options = (*self.wrt, lam, index), {}
            self.grad_output = x[case.batch :]  # the upstream gradient of the K mixes

    def supports(self, impl: str) -> bool:
        return self.case.op == "loss" or impl not in LOSS_ONLY

    def _function(self, impl: str) -> Callable:
        op = self.case.op
        if impl == REFERENCE:
            return _ORACLE[op]
        if impl == COMPILED:
            if self._compiled is None:
                self._compiled = torch.compile(_ORACLE[op], dynamic=False)
            return self._compiled
        if impl == DROP_IN:
            return self._drop_in()
        if impl == OP_FLOOR:
            return self._op_floor()
        return functools.partial(_PUBLIC[op], backend=impl)

    def _drop_in(self) -> Callable:
        """The compat class, with the options of rankmixup_loss's defaults, as a function of
        rankmixup_loss's arguments returning a LossOutput."""
        classes = self.case.classes
        if self.case.mode == "mrl":
            criterion = compat.RankMixup_MRL(num_classes=classes, margin=2.0, alpha=0.1)
        else:
            criterion = compat.RankMixup_MNDCG(num_classes=classes, alpha=0.1)
        target_re = rankmixup_ops.soft_targets(self.targets, self.lam, self.index, classes)
        num_mix = self.case.num_mix

        def call(logits, mix_logits, targets, lam, index, **options):
            return LossOutput(*criterion(logits, targets, mix_logits, target_re, num_mix))

        return call

    def _op_floor(self) -> Callable:
        """``torch.ops.rankmixup.loss`` entered directly (compiled._C), lam prepared once."""
        from rankmixup_ops import compiled  # only where the extension is built

        pairing_lam = self.lam.to(accumulation_dtype(self.case.dtype)).expand(self.index.shape)
        options = tuple(LossOptions(mode=self.case.mode))

        def call(logits, mix_logits, targets, lam, index, **_):
            return LossOutput(*compiled._C.loss(logits, mix_logits, targets, pairing_lam, index, *options)[:3])

        return call

    def step(self, impl: str, pass_: str) -> Callable[[], object]:
        function = self._function(impl)

        def forward():
            out = function(*self.args, **self.options)
            return out.loss if self.case.op == "loss" else out

        if pass_ == "fwd":
            return forward
        return lambda: torch.autograd.grad(forward(), self.wrt, self.grad_output)
