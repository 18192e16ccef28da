"""The loss's reduction in Triton: the fused kernel's per-sample loss, ce and rank summed (and,
for a mean, divided by the count of valid samples) in one program, one launch. In PyTorch ops
the same reduction took about a dozen launches (the count, its clamp and reciprocal, three sums
and three products), each with the fixed cost of a launch (not yet timed on a GPU).

The sums are taken in float64, in a fixed order, so the result is deterministic. The backward
is one product: every sample's loss gets ``grad_output * scale``, ``scale`` the fourth output
(``1 / n_valid`` for a mean, 1 for a sum), which the fused kernel's backward reads by stride.
"""

import torch
import triton
import triton.language as tl

from . import eager, launch
from .op_args import check_reduce_loss_args

# Samples per step of the program's loop: the paper's batches in one or two steps.
MAX_BLOCK = 1024


@triton.jit
def _reduce_kernel(loss_ptr, ce_ptr, rank_ptr, targets_ptr, ce_scale_ptr, loss_out, ce_out, rank_out, scale_out,
                   batch, stride_targets, ignore_index, MEAN: tl.constexpr, CE_SCALED: tl.constexpr,
                   BLOCK: tl.constexpr):
    """``sum(loss) * s``, ``sum(ce) * s_ce``, ``sum(rank) * s`` and ``s`` into the four scalars:
    ``s = 1 / max(n_valid, 1)`` for a mean, else 1; ``s_ce = ce_scale[0]`` when CE_SCALED (a
    weighted mean's), else ``s``."""
    offsets = tl.arange(0, BLOCK)
    loss_sum = tl.zeros([BLOCK], tl.float64)
    ce_sum = tl.zeros([BLOCK], tl.float64)
    rank_sum = tl.zeros([BLOCK], tl.float64)
    valid = tl.zeros([BLOCK], tl.int32)
    for start in range(0, batch, BLOCK):
        i = start + offsets
        live = i < batch
        loss_sum += tl.load(loss_ptr + i, mask=live, other=0.0).to(tl.float64)
        ce_sum += tl.load(ce_ptr + i, mask=live, other=0.0).to(tl.float64)
        rank_sum += tl.load(rank_ptr + i, mask=live, other=0.0).to(tl.float64)
        if MEAN:
            # int64: a strided targets' offsets may pass 2**31.
            target = tl.load(targets_ptr + i.to(tl.int64) * stride_targets, mask=live, other=ignore_index)
            valid += (live & (target != ignore_index)).to(tl.int32)
    if MEAN:
        # A mean over nothing is 0, never NaN.
        scale = 1.0 / tl.maximum(tl.sum(valid, axis=0), 1).to(tl.float64)
    else:
        scale = tl.full([], 1.0, tl.float64)
    ce_scale = tl.load(ce_scale_ptr).to(tl.float64) if CE_SCALED else scale
    out_ty = loss_out.dtype.element_ty
    tl.store(loss_out, (tl.sum(loss_sum, axis=0) * scale).to(out_ty))
    tl.store(ce_out, (tl.sum(ce_sum, axis=0) * ce_scale).to(out_ty))
    tl.store(rank_out, (tl.sum(rank_sum, axis=0) * scale).to(out_ty))
    tl.store(scale_out, scale.to(out_ty))


def reduce_launch_config(batch: int) -> dict:
    """Sample block and warps of the reduction's one program."""
    return launch.block_config(batch, MAX_BLOCK, max_warps=4)


def _reduce_loss(
    loss: torch.Tensor,
    ce: torch.Tensor,
    rank: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    mean: bool,
    ce_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-sample ``(B,)`` loss, ce and rank (contiguous, one dtype) reduced: ``(loss, ce,
    rank, scale)``, four scalars of their dtype. ``mean``: over the samples whose target is not
    ``ignore_index``; else the sum. ``ce_scale``: a scalar that replaces the mean's divisor for
    ce (the weighted mean's), or None."""
    check_reduce_loss_args(loss, ce, rank, targets, ce_scale)
    # Four outputs, not views of one buffer: a view's backward would scatter into zeros.
    out = [torch.empty((), device=loss.device, dtype=loss.dtype) for _ in range(4)]
    launch.launcher(_reduce_kernel)[(1,)](
        loss,
        ce,
        rank,
        targets,
        loss if ce_scale is None else ce_scale,  # (unread when None)
        *out,
        loss.shape[0],
        targets.stride(0),
        ignore_index,
        MEAN=mean,
        CE_SCALED=ce_scale is not None,
        **reduce_launch_config(loss.shape[0]),
    )
    return tuple(out)


def _setup_context(ctx, inputs, output):
    ctx.batch = inputs[0].shape[0]
    ctx.save_for_backward(output[3])
    # Only the loss carries a gradient: ce, rank and the scale are constants, and autograd
    # fills no zeros for them on every backward.
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, grad_ce, grad_rank, grad_scale):
    if grad_loss is None:
        return (None,) * 7
    (scale,) = ctx.saved_tensors
    # d loss / d loss[b] = scale for every sample; ce, rank and the scale are constants.
    return (grad_loss * scale).expand(ctx.batch), None, None, None, None, None, None


reduce_loss = eager.triton_op("rankmixup_triton::reduce_loss", _reduce_loss, setup_context=_setup_context,
                              backward=_backward)
