"""The compiled backends: ``torch.ops.rankmixup`` operators from the C++ extension, with the
fake (meta) implementations torch.compile needs. Their autograd is registered in C++
(csrc/autograd.cpp), once for every device. Eager calls on plain tensors enter them through
``_C``'s direct entry points rather than the torch.ops binding (see ``_entry``).

Operators (schemas in csrc/ops.cpp):

- ``loss(logits, mix_logits, targets, lam, index, *options) -> (loss, ce, rank, row_coefs,
  row_argmax)``, ``options`` the nine fields of :class:`LossOptions` in their order (the class
  weights last, ``Tensor? weight=None``): the fused loss, one read of every row, each mix's
  relevance (SPEC §3) derived in the kernel from ``lam`` and the partners ``index``; with
  ``index`` None, ``lam`` holds the relevances themselves (the drop-in classes'). ``row_coefs``
  (K+1, B, 5) and ``row_argmax`` (K+1, B) are what the backward needs of each row (its max and
  gradient terms), a few numbers per row.
- ``loss_backward(grad_loss, logits, mix_logits, targets, row_coefs, row_argmax, ignore_index,
  weight=None) -> (grad_logits, grad_mix_logits)``: one more read of every row, one write of its
  gradient.

- ``loss_with_grad(...same arguments as loss...) -> (the loss op's five outputs, grad_logits,
  grad_mix_logits)``: the gradients for ``grad_output = 1``, in the accumulation dtype, written
  from the forward's own exps.
  CPU only: autograd calls it there for float32/float64 logits when a gradient will be wanted,
  and its backward scales them in place with ``scale_grads_``. The CPU is bound by the exp (one
  per logit this way, two with a separate backward); a GPU is bound by memory, where writing the
  gradient in the forward and scaling it later moves more bytes (read, write, read, write) than
  loss + loss_backward (read; read, write), so CUDA keeps the two ops. The price on the CPU: two
  logits-sized buffers live from forward to backward.
- ``scale_grads_(grad_logits, grad_mix_logits, grad_loss, targets, ignore_index) -> ()``: that
  scaling by ``grad_output``, in place, with the rows of ignored samples kept zero whatever
  ``grad_output`` holds; rows whose factor is exactly 1 stay as ``loss_with_grad`` wrote them
  (CPU).
- ``soft_relevance(soft_targets, num_mix, dtype) -> rel``: the relevances read off mixed soft targets
  (what the drop-in classes are given), each row's largest entry snapped to 1 within 4 float32
  epsilons, in one op (a CPU kernel; an ATen composite elsewhere and for fake tensors).
- ``mix(x, lam, index)`` and ``mix_backward(grad, lam, index)``.
- ``paste_boxes(x, boxes, index)`` and ``paste_boxes_backward(grad, boxes, index)``: CutMix.
"""

from __future__ import annotations

import torch

from ._extension import build_info, extension
from ._types import BackendUnavailable, LossOptions, LossOutput, accumulation_dtype, image_memory_format

_C = extension()  # registers the operators (raises BackendUnavailable if the build is missing)
ops = torch.ops.rankmixup
ROW_COEFS = 5  # kRowCoefs in csrc/include/rankmixup/sample_loss.h


@torch.library.register_fake("rankmixup::loss")
def _loss_fake(logits, mix_logits, targets, lam, index, *options):
    reduction = LossOptions(*options).reduction  # the schema's options, in LossOptions' order
    batch, num_classes = logits.shape
    torch._check(lam.dim() == 2 and lam.shape[1] == batch, lambda: "rankmixup::loss: lam must be (K, B)")
    torch._check(index is None or index.shape == lam.shape, lambda: "rankmixup::loss: index must be (K, B), as lam")
    torch._check(tuple(mix_logits.shape) == (lam.shape[0] * batch, num_classes),
                 lambda: "rankmixup::loss: mix_logits must be (K*B, C)")
    torch._check(tuple(targets.shape) == (batch,), lambda: "rankmixup::loss: targets must be (B,)")
    acc = accumulation_dtype(logits.dtype)
    values = [logits.new_empty((batch,) if reduction == "none" else (), dtype=acc) for _ in range(3)]
    rows = (lam.shape[0] + 1, batch)
    return (*values, logits.new_empty((*rows, ROW_COEFS), dtype=acc), logits.new_empty(rows, dtype=torch.int64))


@torch.library.register_fake("rankmixup::loss_with_grad")
def _loss_with_grad_fake(logits, mix_logits, targets, lam, index, *options):
    outputs = _loss_fake(logits, mix_logits, targets, lam, index, *options)
    acc = accumulation_dtype(logits.dtype)
    return (*outputs, logits.new_empty(logits.shape, dtype=acc), mix_logits.new_empty(mix_logits.shape, dtype=acc))


@torch.library.register_fake("rankmixup::scale_grads_")
def _scale_grads_fake(grad_logits, grad_mix_logits, grad_loss, targets, ignore_index):
    return None


@torch.library.register_fake("rankmixup::loss_backward")
def _loss_backward_fake(grad_loss, logits, mix_logits, targets, row_coefs, row_argmax, ignore_index, weight=None):
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


@torch.library.register_fake("rankmixup::paste_boxes")
def _paste_boxes_fake(x, boxes, index):
    torch._check(x.dim() == 4 and x.shape[0] == index.shape[1] and boxes.shape == (*index.shape, 4),
                 lambda: "rankmixup::paste_boxes: x (B, C, H, W), boxes (K, B, 4), index (K, B)")
    return torch.empty((index.numel(), *x.shape[1:]), dtype=x.dtype, device=x.device,
                       memory_format=image_memory_format(x))


@torch.library.register_fake("rankmixup::paste_boxes_backward")
def _paste_boxes_backward_fake(grad, boxes, index):
    torch._check(grad.dim() == 4 and grad.shape[0] == index.numel(),
                 lambda: "rankmixup::paste_boxes_backward: grad must be (K*B, C, H, W)")
    return torch.empty((index.shape[1], *grad.shape[1:]), dtype=grad.dtype, device=grad.device,
                       memory_format=image_memory_format(grad))


def _entry(*tensors):
    """Where to call an operator from: ``_C``'s direct entry points (the same dispatcher call,
    without the torch.ops binding's boxing of every argument: a few microseconds a call at the
    paper's shapes), or ``torch.ops.rankmixup``. The direct ones know nothing of
    ``__torch_function__``, so they serve only plain tensors in eager mode with no function
    mode active; torch.compile, torch.export, ``with torch.device(...)`` and tensor subclasses
    get torch.ops. (``__torch_dispatch__`` modes and subclasses, fake tensors among them, work
    either way: the dispatcher hands them the call.) None stands for an optional tensor not given."""
    if torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled():
        return ops
    for tensor in tensors:  # a loop, not all(): no generator object per call
        if type(tensor) is not torch.Tensor and tensor is not None:
            return ops
    return _C


class CompiledBackend:
    """The backend object (see :mod:`rankmixup_ops.backends`) over the compiled operators,
    for tensors of one device type."""

    # csrc/eager_loss.h: the loss's front ends for the common call, in one native call each.
    eager = _C

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
    def loss(logits, mix_logits, targets, lam, index, options: LossOptions) -> LossOutput:
        # LossOptions holds the options in the operator's schema order; a tensor subclass among
        # the class weights, too, needs the torch.ops call.
        entry = _entry(logits, mix_logits, targets, lam, index, options.weight)
        loss, ce, rank, _, _ = entry.loss(logits, mix_logits, targets, lam, index, *options)
        return LossOutput(loss, ce, rank)

    @staticmethod
    def soft_relevance(soft_targets, num_mix, dtype):
        return _entry(soft_targets).soft_relevance(soft_targets, num_mix, dtype)

    @staticmethod
    def mix(x, lam, index):
        return _entry(x, lam, index).mix(x, lam, index)

    @staticmethod
    def paste_boxes(x, boxes, index):
        return _entry(x, boxes, index).paste_boxes(x, boxes, index)


def load_backend(device_type: str) -> CompiledBackend:
    """The compiled backend for ``device_type`` ("cpu" or "cuda"), or BackendUnavailable when the
    extension was built without its kernels."""
    built = build_info()["backends"]
    if device_type not in built:
        raise BackendUnavailable(
            f"the compiled extension was built without {device_type} kernels (it has: {', '.join(built)})"
        )
    return CompiledBackend(device_type)
