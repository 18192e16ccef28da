"""CutMix in Triton (SPEC §2): ``out[k*B + b]`` is ``x[b]`` with the box ``boxes[k, b]`` pasted from
``x[index[k, b]]``.

``x`` and the result are dense in one order, contiguous (C, H, W) or channels-last (H, W, C)
(``image_memory_format``), so an element's offset within its image is the same in both, and its
pixel is ``(offset // row_stride % H, offset // col_stride % W)`` with the strides of H and W in
that order. The forward program for (output image, block of offsets) reads each element once,
from ``x[b]`` or from the partner, in one launch. The backward is a gather through the inverse
permutation, in one launch:

    grad_x[b] = sum_k g[k*B + b] outside box (k, b)  +  sum_k g[k*B + j] inside box (k, j),  j = inv[k, b]

each sum in k order (as the reference's autograd sums them), so every output element is written
once by one program — deterministic, no atomics. An index outside [0, B) reads zeros.
"""

import torch
import triton
import triton.language as tl

from .._types import image_memory_format
from . import eager, launch
from .mix import inverse_permutation, mix_launch_config, program_block
from .op_args import check_paste_boxes_args


@triton.jit
def _in_box(boxes_ptr, box, offsets, channels, height, width, CHANNELS_LAST: tl.constexpr):
    """Which ``offsets`` of an image lie in box number ``box`` (``k*B + b``) of the contiguous
    ``(K, B, 4)`` boxes: the pixel of an offset follows from the strides of H and W."""
    top = tl.load(boxes_ptr + 4 * box)
    bottom = tl.load(boxes_ptr + 4 * box + 1)
    left = tl.load(boxes_ptr + 4 * box + 2)
    right = tl.load(boxes_ptr + 4 * box + 3)
    row_stride = width * channels if CHANNELS_LAST else width
    col_stride = channels if CHANNELS_LAST else 1
    rows = offsets // row_stride % height
    cols = offsets // col_stride % width
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


@triton.jit
def _paste_boxes_kernel(
    x_ptr,
    boxes_ptr,
    index_ptr,
    out_ptr,
    batch,
    image,
    channels,
    height,
    width,
    stride_index_k,
    stride_index_b,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)  # the output image, k*B + b
    b = r % batch
    offsets, mask = program_block(image, BLOCK)
    inside = _in_box(boxes_ptr, r, offsets, channels, height, width, CHANNELS_LAST)
    partner = tl.load(index_ptr + (r // batch) * stride_index_k + b * stride_index_b)
    # An index outside the batch (never checked on the hot path) reads zeros, not memory.
    in_batch = (partner >= 0) & (partner < batch)
    own = tl.load(x_ptr + b * image + offsets, mask=mask & ~inside, other=0.0)
    taken = tl.load(x_ptr + partner * image + offsets, mask=mask & inside & in_batch, other=0.0)
    tl.store(out_ptr + r * image + offsets, tl.where(inside, taken, own), mask=mask)


@triton.jit
def _paste_boxes_backward_kernel(
    grad_ptr,
    boxes_ptr,
    inverse_ptr,
    out_ptr,
    batch,
    image,
    num_mix,
    channels,
    height,
    width,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    acc_ty = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    offsets, mask = program_block(image, BLOCK)
    own = tl.zeros([BLOCK], acc_ty)
    partners = tl.zeros([BLOCK], acc_ty)
    for k in range(num_mix):
        mine = k * batch + b
        outside = ~_in_box(boxes_ptr, mine, offsets, channels, height, width, CHANNELS_LAST)
        own += tl.load(grad_ptr + mine * image + offsets, mask=mask & outside, other=0.0).to(acc_ty)
        theirs = k * batch + tl.load(inverse_ptr + mine)  # the mix that took b as its partner
        inside = _in_box(boxes_ptr, theirs, offsets, channels, height, width, CHANNELS_LAST)
        partners += tl.load(grad_ptr + theirs * image + offsets, mask=mask & inside, other=0.0).to(acc_ty)
    tl.store(out_ptr + b * image + offsets, (own + partners).to(out_ptr.dtype.element_ty), mask=mask)


def _dense_images(images: torch.Tensor, rows: int):
    """``images`` dense in its CutMix layout, an empty ``(rows, C, H, W)`` result in the same
    layout, and the geometry the kernels take: elements per image, C, H, W, channels-last."""
    memory_format = image_memory_format(images)
    dense = images.contiguous(memory_format=memory_format)
    _, channels, height, width = images.shape
    out = torch.empty((rows, channels, height, width), dtype=images.dtype, device=images.device,
                      memory_format=memory_format)
    geometry = (channels * height * width, channels, height, width)
    return dense, out, geometry, memory_format == torch.channels_last


def _paste_boxes(x: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """All K CutMix mixes of ``x`` ``(B, C, H, W)``, as ``(K*B, C, H, W)`` mix-major, in one launch."""
    check_paste_boxes_args("paste_boxes", x, boxes, index, per_mix_rows=False)
    num_mix, batch = index.shape
    dense, out, (image, *geometry), channels_last = _dense_images(x, num_mix * batch)
    if out.numel():
        config = mix_launch_config(image)
        launch.launcher(_paste_boxes_kernel)[(num_mix * batch, triton.cdiv(image, config["BLOCK"]))](
            dense, boxes.contiguous(), index, out, batch, image, *geometry, *index.stride(),
            CHANNELS_LAST=channels_last, **config,
        )
    return out


def _paste_boxes_backward(grad: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`paste_boxes` with respect to ``x``, ``(B, C, H, W)``, from ``grad`` ``(K*B, C, H, W)``."""
    check_paste_boxes_args("paste_boxes_backward", grad, boxes, index, per_mix_rows=True)
    num_mix, batch = index.shape
    dense, out, (image, *geometry), channels_last = _dense_images(grad, batch)
    if out.numel():
        config = mix_launch_config(image)
        launch.launcher(_paste_boxes_backward_kernel)[(batch, triton.cdiv(image, config["BLOCK"]))](
            dense, boxes.contiguous(), inverse_permutation(index), out, batch, image, num_mix, *geometry,
            CHANNELS_LAST=channels_last, **config,
        )
    return out


def _setup_context(ctx, inputs, output):
    _, boxes, index = inputs
    ctx.save_for_backward(boxes, index)


def _backward(ctx, grad):
    boxes, index = ctx.saved_tensors
    return eager.call(paste_boxes_backward, grad, boxes, index), None, None


def _backward_of_backward(ctx, grad):
    """paste_boxes_backward is paste_boxes' adjoint, so its derivative is paste_boxes (double backward)."""
    boxes, index = ctx.saved_tensors
    return eager.call(paste_boxes, grad, boxes, index), None, None


paste_boxes = eager.triton_op("rankmixup_triton::paste_boxes", _paste_boxes, setup_context=_setup_context,
                              backward=_backward)
paste_boxes_backward = eager.triton_op("rankmixup_triton::paste_boxes_backward", _paste_boxes_backward,
                                       setup_context=_setup_context, backward=_backward_of_backward)
