"""Argument checks of the Triton operators, as csrc/op_args.h's of the C++ ones: shapes, dtypes
and devices, so that no launch reads or writes outside a tensor when an operator is called
directly (``torch.ops.rankmixup_triton.*``) with arguments the public functions would have
refused. Values (labels, partners, lam) are not checked: the kernels mask an out-of-range label
or partner (docs/errors.md says what each gives).

A wrong shape, device or option raises ``ValueError``, a wrong dtype ``TypeError``; each message
names the operator and the argument. They run on fake tensors too, when torch.compile traces an
operator, so a compiled call fails before anything runs too (Dynamo wraps the error in a
``RuntimeError`` that carries the message).

Every call of the public API passes through them too, after its own checks; they build a
message only on failure.
"""

from __future__ import annotations

from typing import NoReturn

import torch

from .._types import accumulation_dtype

_MODES, _SCORES = ("mrl", "mndcg"), ("logit", "prob")


def _fail(error: type, op: str, name: str, wanted: str, tensor: torch.Tensor) -> NoReturn:
    raise error(f"rankmixup_triton::{op}: {name} must be {wanted}, got {tuple(tensor.shape)} {tensor.dtype}")


def _int64(op: str, name: str, tensor: torch.Tensor, shape: tuple) -> None:
    if tensor.dtype != torch.int64:
        _fail(TypeError, op, name, f"int64 {shape}", tensor)
    if tensor.shape != shape:
        _fail(ValueError, op, name, f"int64 {shape}", tensor)


def _scalar(op: str, name: str, tensor: torch.Tensor | None, dtype: torch.dtype) -> None:
    if tensor is None:
        return
    if tensor.dtype != dtype:
        _fail(TypeError, op, name, f"a {dtype} scalar", tensor)
    if tensor.numel() != 1:
        _fail(ValueError, op, name, f"a {dtype} scalar", tensor)


def _index(op: str, index: torch.Tensor) -> torch.Size:
    """index int64 (K, B), non-empty; returns (K, B)."""
    if index.dtype != torch.int64:
        _fail(TypeError, op, "index", "int64 (K, B), non-empty", index)
    if index.dim() != 2 or index.numel() == 0:
        _fail(ValueError, op, "index", "int64 (K, B), non-empty", index)
    return index.shape


def _lam(op: str, lam: torch.Tensor, batch: int, dtype: torch.dtype, num_mix: int | None = None) -> None:
    """lam (K, B) in ``dtype``, the data's accumulation dtype; K = ``num_mix`` when given, else >= 1."""
    if lam.dtype != dtype:
        _fail(TypeError, op, "lam", f"{dtype} (K, B)", lam)
    if lam.dim() != 2 or lam.shape[1] != batch or (lam.shape[0] < 1 if num_mix is None else lam.shape[0] != num_mix):
        mixes = "K >= 1" if num_mix is None else f"K = {num_mix}"
        _fail(ValueError, op, "lam", f"(K, B) with B = {batch} and {mixes}", lam)


def _one_device(op: str, names: tuple[str, ...], *tensors: torch.Tensor | None) -> None:
    """Every tensor given (None: an absent optional one) on the first's device."""
    device = tensors[0].device
    for name, tensor in zip(names[1:], tensors[1:]):
        if tensor is not None and tensor.device != device:
            raise ValueError(f"rankmixup_triton::{op}: {name} is on {tensor.device} but {names[0]} on {device}; "
                             "all tensors must be on one device")


def check_fused_loss_args(logits, mix_logits, targets, lam, index, mode, score, block_c, weight, ce_rescale) -> None:
    op = "fused_loss"
    dtype = logits.dtype
    if not dtype.is_floating_point:
        _fail(TypeError, op, "logits", "floating (B, C), non-empty", logits)
    if logits.dim() != 2 or logits.numel() == 0:
        _fail(ValueError, op, "logits", "floating (B, C), non-empty", logits)
    batch, num_classes = logits.shape
    acc = accumulation_dtype(dtype)
    _lam(op, lam, batch, acc)
    num_mix = lam.shape[0]
    if index is not None:
        _int64(op, "index", index, (num_mix, batch))
    if mix_logits.dtype != dtype:
        _fail(TypeError, op, "mix_logits", f"{dtype} (K*B, C), as logits", mix_logits)
    if mix_logits.shape != (num_mix * batch, num_classes):
        _fail(ValueError, op, "mix_logits", f"(K*B, C) = {(num_mix * batch, num_classes)}", mix_logits)
    _int64(op, "targets", targets, (batch,))
    if weight is not None:
        if weight.dtype != acc:
            _fail(TypeError, op, "weight", f"{acc} ({num_classes},)", weight)
        if weight.shape != (num_classes,) or not weight.is_contiguous():
            _fail(ValueError, op, "weight", f"contiguous ({num_classes},)", weight)
    _scalar(op, "ce_rescale", ce_rescale, acc)
    _one_device(op, ("logits", "mix_logits", "targets", "lam", "index", "weight", "ce_rescale"), logits, mix_logits,
                targets, lam, index, weight, ce_rescale)
    if mode not in _MODES:
        raise ValueError(f"rankmixup_triton::{op}: mode must be 'mrl' or 'mndcg', got {mode!r}")
    if score not in _SCORES:
        raise ValueError(f"rankmixup_triton::{op}: score must be 'logit' or 'prob', got {score!r}")
    if block_c < 0 or block_c & (block_c - 1):
        raise ValueError(f"rankmixup_triton::{op}: block_c must be 0 or a power of two, got {block_c}")


def check_fused_loss_backward_args(grad, grad_loss) -> None:
    op = "fused_loss_backward"
    # The scaling kernel reads and writes row r at r * C: grad is the forward's own buffer.
    if not grad.is_floating_point():
        _fail(TypeError, op, "grad", "a contiguous floating ((K+1)*B, C)", grad)
    if grad.dim() != 2 or not grad.is_contiguous():
        _fail(ValueError, op, "grad", "a contiguous floating ((K+1)*B, C)", grad)
    # Row r is scaled by grad_loss[r % B]: B must divide the rows.
    if not grad_loss.is_floating_point():
        _fail(TypeError, op, "grad_loss", "floating (B,)", grad_loss)
    if grad_loss.dim() != 1 or grad_loss.shape[0] < 1 or grad.shape[0] % grad_loss.shape[0]:
        _fail(ValueError, op, "grad_loss", f"(B,) with B dividing grad's {grad.shape[0]} rows", grad_loss)
    _one_device(op, ("grad", "grad_loss"), grad, grad_loss)


def check_reduce_loss_args(loss, ce, rank, targets, ce_scale) -> None:
    op = "reduce_loss"
    dtype, shape = loss.dtype, loss.shape
    if not dtype.is_floating_point:
        _fail(TypeError, op, "loss", "floating (B,), non-empty", loss)
    if len(shape) != 1 or shape[0] == 0:
        _fail(ValueError, op, "loss", "floating (B,), non-empty", loss)
    # The kernel reads the per-sample values as contiguous.
    for name, values in (("loss", loss), ("ce", ce), ("rank", rank)):
        if values.dtype != dtype:
            _fail(TypeError, op, name, f"{dtype} (B,), as loss", values)
        if values.shape != shape or not values.is_contiguous():
            _fail(ValueError, op, name, f"contiguous {tuple(shape)}, as loss", values)
    _int64(op, "targets", targets, tuple(shape))
    _scalar(op, "ce_scale", ce_scale, dtype)
    _one_device(op, ("loss", "ce", "rank", "targets", "ce_scale"), loss, ce, rank, targets, ce_scale)


def check_mix_args(op: str, data, lam, index, *, per_mix_rows: bool) -> None:
    """``mix`` (``data`` is x, ``(B, ...)``) and ``mix_backward`` (``data`` is grad, ``(K*B, ...)``)."""
    name = "grad" if per_mix_rows else "x"
    num_mix, batch = _index(op, index)
    rows = num_mix * batch if per_mix_rows else batch
    if not data.is_floating_point():
        _fail(TypeError, op, name, f"floating with {rows} rows", data)
    if data.dim() == 0 or data.shape[0] != rows:
        _fail(ValueError, op, name, f"floating with {rows} rows ({'K*B' if per_mix_rows else 'B'})", data)
    _lam(op, lam, batch, accumulation_dtype(data.dtype), num_mix)
    _one_device(op, (name, "lam", "index"), data, lam, index)


def check_paste_boxes_args(op: str, images, boxes, index, *, per_mix_rows: bool) -> None:
    """``paste_boxes`` (``images`` is x, ``(B, C, H, W)``) and ``paste_boxes_backward`` (grad,
    ``(K*B, C, H, W)``)."""
    name = "grad" if per_mix_rows else "x"
    num_mix, batch = _index(op, index)
    rows = num_mix * batch if per_mix_rows else batch
    if not images.is_floating_point():
        _fail(TypeError, op, name, f"floating (rows, C, H, W) with {rows} rows", images)
    if images.dim() != 4 or images.shape[0] != rows:
        _fail(ValueError, op, name, f"floating (rows, C, H, W) with {rows} rows", images)
    _int64(op, "boxes", boxes, (num_mix, batch, 4))
    _one_device(op, (name, "boxes", "index"), images, boxes, index)
