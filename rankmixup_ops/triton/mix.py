"""Mixup generation in Triton (SPEC §2): ``out[k*B + b] = lam[k,b]*x[b] + (1-lam[k,b])*x[index[k,b]]``.

``x`` is viewed as ``(B, F)`` (features flattened). The forward program for (sample b, feature
block) reads ``x[b]`` once and writes all K of its mixes. The backward is a gather, not a
scatter-add: with ``inv`` the inverse of each permutation row,

    grad_x[b] = sum_k lam[k,b] * g[k*B + b] + (1 - lam[k,j]) * g[k*B + j],   j = inv[k,b]

so every output element is written once by one program — deterministic, no atomics.
Arithmetic is float32 (float64 for float64 ``x``); results have ``x``'s dtype.
"""

import torch
import triton
import triton.language as tl

from . import eager, launch
from .op_args import check_mix_args

MAX_BLOCK = 2048


@triton.jit
def program_block(size, BLOCK: tl.constexpr):
    """This program's block of positions along a row of ``size`` (grid axis 1), int64, and which
    of them lie in the row."""
    positions = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return positions, positions < size


@triton.jit
def _mix_kernel(
    x_ptr,
    lam_ptr,
    index_ptr,
    out_ptr,
    batch,
    features,
    num_mix,
    stride_x,
    stride_lam_k,
    stride_lam_b,
    stride_index_k,
    stride_index_b,
    BLOCK: tl.constexpr,
):
    acc_ty = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    cols, mask = program_block(features, BLOCK)
    x_b = tl.load(x_ptr + b * stride_x + cols, mask=mask).to(acc_ty)
    for k in range(num_mix):
        lam = tl.load(lam_ptr + k * stride_lam_k + b * stride_lam_b).to(acc_ty)
        partner = tl.load(index_ptr + k * stride_index_k + b * stride_index_b)
        # An index outside the batch (never checked on the hot path) reads zeros, not memory.
        in_batch = (partner >= 0) & (partner < batch)
        x_j = tl.load(x_ptr + partner * stride_x + cols, mask=mask & in_batch, other=0.0).to(acc_ty)
        mixed = lam * x_b + (1.0 - lam) * x_j
        tl.store(out_ptr + (k * batch + b) * features + cols, mixed.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mix_backward_kernel(
    grad_ptr,
    lam_ptr,
    inverse_ptr,
    out_ptr,
    batch,
    features,
    num_mix,
    stride_grad,
    stride_lam_k,
    stride_lam_b,
    BLOCK: tl.constexpr,
):
    acc_ty = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    cols, mask = program_block(features, BLOCK)
    total = tl.zeros([BLOCK], acc_ty)
    for k in range(num_mix):
        lam_b = tl.load(lam_ptr + k * stride_lam_k + b * stride_lam_b).to(acc_ty)
        j = tl.load(inverse_ptr + k * batch + b)  # the sample whose mix k took b as partner
        lam_j = tl.load(lam_ptr + k * stride_lam_k + j * stride_lam_b).to(acc_ty)
        g_b = tl.load(grad_ptr + (k * batch + b) * stride_grad + cols, mask=mask).to(acc_ty)
        g_j = tl.load(grad_ptr + (k * batch + j) * stride_grad + cols, mask=mask).to(acc_ty)
        total += lam_b * g_b + (1.0 - lam_j) * g_j
    tl.store(out_ptr + b * features + cols, total.to(out_ptr.dtype.element_ty), mask=mask)


def mix_launch_config(features: int) -> dict:
    """Feature block and warps of a mix launch (forward and backward alike)."""
    return launch.block_config(features, MAX_BLOCK)


def _rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` as ``(rows, F)`` with unit feature stride (a copy only when it cannot be a view)."""
    flat = t.reshape(rows, -1) if t.numel() else t.reshape(rows, 0)
    return flat if flat.stride(1) == 1 or flat.shape[1] <= 1 else flat.contiguous()


def inverse_permutation(index: torch.Tensor) -> torch.Tensor:
    """``inverse[k, index[k, b]] = b``, contiguous ``(K, B)``. A sort rather than a scatter:
    whatever index holds (it is a permutation unless the caller lied), inverse stays in range
    and nothing faults."""
    return torch.argsort(index, dim=1).contiguous()


def _mix(x: torch.Tensor, lam: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """All K mixes of ``x`` ``(B, *feat)``, as ``(K*B, *feat)`` mix-major, in one launch."""
    check_mix_args("mix", x, lam, index, per_mix_rows=False)
    num_mix, batch = index.shape
    x2 = _rows(x, batch)
    features = x2.shape[1]
    out = torch.empty(num_mix * batch, *x.shape[1:], device=x.device, dtype=x.dtype)
    if features:
        config = mix_launch_config(features)
        grid = (batch, triton.cdiv(features, config["BLOCK"]))
        launch.launcher(_mix_kernel)[grid](
            x2,
            lam,
            index,
            out,
            batch,
            features,
            num_mix,
            x2.stride(0),
            lam.stride(0),
            lam.stride(1),
            index.stride(0),
            index.stride(1),
            **config,
        )
    return out


def _mix_backward(grad: torch.Tensor, lam: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`mix` with respect to ``x``, ``(B, *feat)``, from ``grad`` ``(K*B, *feat)``."""
    check_mix_args("mix_backward", grad, lam, index, per_mix_rows=True)
    num_mix, batch = index.shape
    g2 = _rows(grad, num_mix * batch)
    features = g2.shape[1]
    inverse = inverse_permutation(index)
    out = torch.empty(batch, *grad.shape[1:], device=grad.device, dtype=grad.dtype)
    if features:
        config = mix_launch_config(features)
        grid = (batch, triton.cdiv(features, config["BLOCK"]))
        launch.launcher(_mix_backward_kernel)[grid](
            g2,
            lam,
            inverse,
            out,
            batch,
            features,
            num_mix,
            g2.stride(0),
            lam.stride(0),
            lam.stride(1),
            **config,
        )
    return out


def _setup_context(ctx, inputs, output):
    x, lam, index = inputs
    # x only for a lam that requires grad (rare: lam is sampled, not learned).
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, lam, index)


def _lam_gradient(x: torch.Tensor, lam: torch.Tensor, index: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """d out[k*B + b] / d lam[k, b] = x[b] - x[index[k, b]], summed against grad over the features
    (as csrc/autograd.cpp), in float32 (float64 for float64 x)."""
    num_mix, batch = index.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    partners = x.index_select(0, index.reshape(-1)).reshape(num_mix, batch, -1)
    diff = (x.reshape(1, batch, -1) - partners).to(acc)
    return (diff * grad.to(acc).reshape(num_mix, batch, -1)).sum(-1).to(lam.dtype)


def _backward(ctx, grad):
    x, lam, index = ctx.saved_tensors
    grad_x = eager.call(mix_backward, grad, lam, index) if ctx.needs_input_grad[0] else None
    grad_lam = _lam_gradient(x, lam, index, grad) if ctx.needs_input_grad[1] else None
    return grad_x, grad_lam, None


def _save_pairing(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:])  # lam, index


def _backward_of_backward(ctx, grad):
    """mix_backward is mix's adjoint in grad, so its derivative there is mix (double backward)."""
    if ctx.needs_input_grad[1]:  # an error, not a silent zero
        raise RuntimeError("rankmixup: the derivative of mix's backward with respect to lam is not implemented")
    lam, index = ctx.saved_tensors
    return eager.call(mix, grad, lam, index), None, None


mix = eager.triton_op("rankmixup_triton::mix", _mix, setup_context=_setup_context, backward=_backward)
mix_backward = eager.triton_op("rankmixup_triton::mix_backward", _mix_backward, setup_context=_save_pairing,
                               backward=_backward_of_backward)
