"""The compiled backends: ``torch.ops.rankmixup`` operators from the C++ extension, with the
fake (meta) implementations torch.compile needs and their autograd formulas.

Operators (schemas in csrc/ops.cpp):

- ``loss(logits, mix_logits, targets, rel, mode, score, ce_weight, alpha, margin, ignore_index,
  label_smoothing, reduction) -> (loss, ce, rank, row_coefs, row_argmax)``: the fused loss, one
  read of every row; ``row_coefs`` (K+1, B, 5) and ``row_argmax`` (K+1, B) are what the
  backward needs of each row (its log-sum-exp and gradient terms), a few numbers per row.
- ``loss_backward(grad_loss, logits, mix_logits, targets, row_coefs, row_argmax, ignore_index)
  -> (grad_logits, grad_mix_logits)``: one more read of every row, one write of its gradient.

Why not write the gradient in the forward (as Liger-Kernel does)? Autograd then needs a second
pass to scale it by ``grad_output`` (scaling the saved buffer in place breaks AOTAutograd), so
that design moves more bytes (read, write, read, write) than this one (read; read, write), and
keeps two logits-sized buffers alive between forward and backward.
- ``mix(x, lam, index)`` and ``mix_backward(grad, lam, index)``.
"""

from __future__ import annotations

import torch

from ._extension import extension
from ._types import LossOutput

extension()  # registers the operators (raises BackendUnavailable if the build is missing)
ops = torch.ops.rankmixup
ROW_COEFS = 5  # kRowCoefs in csrc/include/rankmixup/sample_loss.h


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("rankmixup::loss")
def _loss_fake(logits, mix_logits, targets, rel, mode, score, ce_weight, alpha, margin, ignore_index,
               label_smoothing, reduction):
    batch, num_classes = logits.shape
    torch._check(rel.dim() == 2 and rel.shape[1] == batch, lambda: "rankmixup::loss: rel must be (K, B)")
    torch._check(tuple(mix_logits.shape) == (rel.shape[0] * batch, num_classes),
                 lambda: "rankmixup::loss: mix_logits must be (K*B, C)")
    torch._check(tuple(targets.shape) == (batch,), lambda: "rankmixup::loss: targets must be (B,)")
    acc = _accumulation_dtype(logits.dtype)
    values = [logits.new_empty((batch,) if reduction == "none" else (), dtype=acc) for _ in range(3)]
    rows = (rel.shape[0] + 1, batch)
    return (*values, logits.new_empty((*rows, ROW_COEFS), dtype=acc), logits.new_empty(rows, dtype=torch.int64))


@torch.library.register_fake("rankmixup::loss_backward")
def _loss_backward_fake(grad_loss, logits, mix_logits, targets, row_coefs, row_argmax, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format), torch.empty_like(
        mix_logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("rankmixup::mix")
def _mix_fake(x, lam, index):
    torch._check(lam.shape == index.shape and x.shape[0] == index.shape[1],
                 lambda: "rankmixup::mix: x (B, ...), lam and index (K, B)")
    return x.new_empty((index.numel(), *x.shape[1:]))


@torch.library.register_fake("rankmixup::mix_backward")
def _mix_backward_fake(grad, lam, index):
    torch._check(grad.shape[0] == index.numel(), lambda: "rankmixup::mix_backward: grad must be (K*B, ...)")
    return grad.new_empty((index.shape[1], *grad.shape[1:]))


def _loss_setup_context(ctx, inputs, output):
    logits, mix_logits, targets, *_ = inputs
    _, ce, rank, row_coefs, row_argmax = output
    ctx.mark_non_differentiable(ce, rank, row_coefs, row_argmax)
    ctx.ignore_index = inputs[9]
    ctx.save_for_backward(logits, mix_logits, targets, row_coefs, row_argmax)


def _loss_backward(ctx, grad_loss, _ce, _rank, _row_coefs, _row_argmax):
    grad_logits, grad_mix = ops.loss_backward(grad_loss, *ctx.saved_tensors, ctx.ignore_index)
    return grad_logits, grad_mix, *([None] * 10)


torch.library.register_autograd("rankmixup::loss", _loss_backward, setup_context=_loss_setup_context)


def _mix_setup_context(ctx, inputs, output):
    x, lam, index = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, lam, index)


def _mix_backward(ctx, grad):
    x, lam, index = ctx.saved_tensors
    grad_x = ops.mix_backward(grad, lam, index) if ctx.needs_input_grad[0] else None
    grad_lam = None
    if ctx.needs_input_grad[1]:  # rare (lam is sampled, not learned): plain PyTorch suffices
        acc = _accumulation_dtype(x.dtype)
        num_mix, batch = index.shape
        diff = (x.unsqueeze(0) - x[index]).to(acc).reshape(num_mix, batch, -1)
        grad_lam = (diff * grad.to(acc).reshape(num_mix, batch, -1)).sum(-1).to(lam.dtype)
    return grad_x, grad_lam, None


torch.library.register_autograd("rankmixup::mix", _mix_backward, setup_context=_mix_setup_context)


class CompiledBackend:
    """The backend object (see :mod:`rankmixup_ops.backends`) over the compiled operators,
    for tensors of one device type."""

    def __init__(self, device_type: str):
        self.name = device_type
        self.device_type = device_type

    def __repr__(self) -> str:
        return f"CompiledBackend({self.device_type!r})"

    def unsupported(self, device: torch.device) -> str | None:
        if device.type != self.device_type:
            return f"its kernels run on {self.device_type} tensors, not {device.type}"
        return None

    @staticmethod
    def loss(logits, mix_logits, targets, rel, *, mode, ce_weight, alpha, margin, score, ignore_index,
             label_smoothing, reduction) -> LossOutput:
        loss, ce, rank, _, _ = ops.loss(logits, mix_logits, targets, rel, mode, score, ce_weight, alpha, margin,
                                        ignore_index, label_smoothing, reduction)
        return LossOutput(loss, ce, rank)

    @staticmethod
    def mix(x, lam, index):
        return ops.mix(x, lam, index)
