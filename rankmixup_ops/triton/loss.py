"""The fused RankMixup loss in Triton: ``ce_weight * CE + alpha * rank`` per sample, and its
gradient, in one launch (SPEC §5, §6).

One program owns sample ``b``: its raw row ``logits[b]`` as a ``(1, BLOCK_C)`` tile and its K
mix rows ``mix_logits[k*B + b]`` as a ``(KP, BLOCK_C)`` tile (``KP`` is K rounded up to a power
of two; the extra rows are masked). Keeping the two apart gives every load a single base
pointer, which Triton needs to prove alignment and issue 16-byte vector loads.

A first sweep over the classes, in chunks of ``BLOCK_C``, keeps an online max / first argmax /
sum of exponentials per row; the per-sample CE, MRL and M-NDCG values and the gradient
coefficients of every row follow from those few numbers; a second sweep writes each row's
gradient as

    grad[c] = P * softmax[c] + M * [c == argmax] + T * [c == target] + U * w[c]

(CE gives P, T, U on the raw row, ``w`` its class weights, all 1 when unweighted; a max-logit
score gives M; a confidence gives P and M).

The kernel writes the gradient of the *per-sample* loss; the reduction (sum or mean over
valid samples) is a second, one-program launch over the per-sample values (``reduce.py``), so
autograd hands the backward a per-sample ``grad_output`` (``1/n_valid`` for a mean) and the
backward is one scaling pass. A weighted mean divides the CE by the valid targets' summed
weights instead: the kernel then scales each sample's CE by ``n_valid / sum of weights`` (a
device scalar, from a few PyTorch ops) before the mean. No value ever travels to the host.
"""

import torch
import triton
import triton.language as tl

from .._types import LossOptions, LossOutput, accumulation_dtype
from . import eager, launch
from .op_args import check_fused_loss_args, check_fused_loss_backward_args
from .reduce import reduce_loss

# The row budget of one program: next_power_of_2(K + 1) rows of BLOCK_C classes hold at most
# this many values, 16 a thread at 8 warps — enough loads in flight without spilling (checked
# by tools/triton_aot_check.py).
MAX_TILE = 4096


@triton.jit
def _load_rows(row_ptrs, cols, live, num_classes, acc_ty: tl.constexpr):
    """A ``(rows, BLOCK_C)`` chunk in ``acc_ty``; dead rows read as 0, columns past C as -inf.

    Dead rows (ignored sample, padding) are never read: their values, maybe non-finite,
    must reach nothing.
    """
    col_ok = cols < num_classes
    z = tl.load(row_ptrs[:, None] + cols[None, :], mask=live[:, None] & col_ok[None, :], other=0.0)
    return tl.where(col_ok[None, :], z.to(acc_ty), float("-inf"))


@triton.jit
def _online_softmax(z, cols, row_max, row_arg, row_sum):
    """Folds a chunk into each row's running max, first argmax and sum of exp(z - max)."""
    chunk_max = tl.max(z, axis=1)
    chunk_arg = tl.min(tl.where(z == chunk_max[:, None], cols[None, :], 2147483647), axis=1)
    # Strictly greater: on a tie the earlier chunk (lower class index) keeps the argmax.
    row_arg = tl.where(chunk_max > row_max, chunk_arg, row_arg)
    new_max = tl.maximum(row_max, chunk_max)
    # While every logit so far is -inf (masked classes), z - new_max would be NaN: shift by 0
    # instead, every exp then being exp(-inf) = 0.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    row_sum = row_sum * tl.exp(row_max - shift) + tl.sum(tl.exp(z - shift[:, None]), axis=1)
    return new_max, row_arg, row_sum


@triton.jit
def _store_grad(out_ptrs, z, cols, num_classes, row_max, log_sum, row_arg, p_coef, m_coef, u_term, t_coef, target,
                store_rows):
    """``grad = P * softmax + M * [c == argmax] + U + T * [c == target]`` for a chunk of rows
    (``u_term`` the constant term, per row or per row and class), the softmax taken as
    ``exp((z - max) - log(sumexp))``, as torch's log_softmax takes it: not ``exp(z - lse)``, whose
    float log-sum-exp is off by eps * |max|."""
    grad = p_coef[:, None] * tl.exp((z - row_max[:, None]) - log_sum[:, None]) + u_term
    grad += tl.where(cols[None, :] == row_arg[:, None], m_coef[:, None], 0.0)
    grad += tl.where(cols[None, :] == target, t_coef[:, None], 0.0)
    mask = store_rows[:, None] & (cols < num_classes)[None, :]
    tl.store(out_ptrs[:, None] + cols[None, :], grad.to(out_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _fused_loss_kernel(
    logits_ptr,
    mix_ptr,
    targets_ptr,
    lam_ptr,
    index_ptr,
    weight_ptr,
    ce_rescale_ptr,
    loss_ptr,
    ce_ptr,
    rank_ptr,
    grad_ptr,
    batch,
    num_classes,
    stride_logits,
    stride_mix,
    stride_targets,
    stride_lam_k,
    stride_lam_b,
    stride_index_k,
    stride_index_b,
    ignore_index,
    # float64 so that float64 inputs see the hyperparameters unrounded (compiled kernels; the
    # interpreter passes Python floats as float32 whatever the annotation); cast once below.
    ce_weight: "fp64",
    alpha: "fp64",
    margin: "fp64",
    label_smoothing: "fp64",
    K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MNDCG: tl.constexpr,
    SCORE_PROB: tl.constexpr,
    SMOOTHING: tl.constexpr,
    PAIRED: tl.constexpr,
    WEIGHTED: tl.constexpr,
    RESCALE_CE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
):
    acc_ty = tl.float64 if logits_ptr.dtype.element_ty == tl.float64 else tl.float32
    ce_weight = tl.cast(ce_weight, acc_ty)
    alpha = tl.cast(alpha, acc_ty)
    margin = tl.cast(margin, acc_ty)
    label_smoothing = tl.cast(label_smoothing, acc_ty)

    b = tl.program_id(0).to(tl.int64)  # row offsets are int64: rows * C may pass 2**31
    target = tl.load(targets_ptr + b * stride_targets)
    valid = target != ignore_index
    one = tl.arange(0, 1)  # the raw row is a 1-row tile, so one code path serves both tiles
    raw_ptrs = logits_ptr + b * stride_logits + one
    raw_live = (one == 0) & valid
    k = tl.arange(0, KP)
    is_mix = k < K
    mix_ptrs = mix_ptr + (k.to(tl.int64) * batch + b) * stride_mix
    mix_live = is_mix & valid

    # Sweep 1: online max, first argmax and sum of exp(z - max) of every row.
    raw_max = tl.full([1], float("-inf"), acc_ty)
    raw_arg = tl.zeros([1], tl.int32)
    raw_sum = tl.zeros([1], acc_ty)
    z_target = tl.zeros([1], acc_ty)
    z_total = tl.zeros([1], acc_ty)  # sum_c w_c z_c (w = 1 unweighted), with smoothing
    w_target = tl.zeros([1], acc_ty)
    w_total = tl.zeros([1], acc_ty)
    mix_max = tl.full([KP], float("-inf"), acc_ty)
    mix_arg = tl.zeros([KP], tl.int32)
    mix_sum = tl.zeros([KP], acc_ty)
    for start in range(0, num_classes, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        z = _load_rows(raw_ptrs, cols, raw_live, num_classes, acc_ty)
        raw_max, raw_arg, raw_sum = _online_softmax(z, cols, raw_max, raw_arg, raw_sum)
        z_target += tl.sum(tl.where(cols[None, :] == target, z, 0.0), axis=1)
        if WEIGHTED:
            w = tl.load(weight_ptr + cols, mask=cols < num_classes, other=0.0).to(acc_ty)
            w_target += tl.sum(tl.where(cols == target, w, 0.0), axis=0)
            w_total += tl.sum(w, axis=0)
            if SMOOTHING:
                z_total += tl.sum(tl.where((cols < num_classes)[None, :], w[None, :] * z, 0.0), axis=1)
        elif SMOOTHING:
            # Only summed when smoothing is on: 0 * (-inf) would turn a plain CE into NaN.
            z_total += tl.sum(tl.where((cols < num_classes)[None, :], z, 0.0), axis=1)
        z = _load_rows(mix_ptrs, cols, mix_live, num_classes, acc_ty)
        mix_max, mix_arg, mix_sum = _online_softmax(z, cols, mix_max, mix_arg, mix_sum)

    # Each mix's relevance (SPEC §3), from lam and the partner's label when PAIRED, else lam
    # itself. A partner outside the batch is not read, and poisons its sample as a label outside
    # [0, C) does (checking would need a host synchronisation).
    lam = tl.load(lam_ptr + k.to(tl.int64) * stride_lam_k + b * stride_lam_b, mask=is_mix, other=1.0).to(acc_ty)
    if PAIRED:
        partner = tl.load(index_ptr + k.to(tl.int64) * stride_index_k + b * stride_index_b, mask=is_mix, other=0)
        in_batch = (partner >= 0) & (partner < batch)
        partner_target = tl.load(targets_ptr + partner * stride_targets, mask=is_mix & in_batch, other=0)
        # max(lam, 1 - lam) as a where: NaN for a NaN lam, as on the other backends.
        rel = tl.where(partner_target == target, 1.0, tl.where(lam > 1.0 - lam, lam, 1.0 - lam))
        partner_outside = tl.sum(tl.where(is_mix & ~in_batch, 1, 0), axis=0) > 0
    else:
        rel = lam

    # As on the compiled backends (SPEC §9): a row of -inf only, and a valid label outside
    # [0, C) (checking it would need a host synchronisation; validate=True does it up front),
    # poison their sample: loss and gradients NaN.
    label_ok = (target >= 0) & (target < num_classes)
    poisoned = valid & ~label_ok
    if PAIRED:
        poisoned = poisoned | (valid & partner_outside)
    raw_sum = tl.where((raw_max == float("-inf")) | poisoned, float("nan"), raw_sum)
    mix_sum = tl.where(mix_max == float("-inf"), float("nan"), mix_sum)
    raw_conf = 1.0 / raw_sum  # max softmax = exp(max - max) / sumexp
    raw_log_sum = tl.log(raw_sum)
    mix_log_sum = tl.log(mix_sum)
    mix_conf = 1.0 / mix_sum

    # CE of the raw row, as F.cross_entropy (class weights and label smoothing included):
    # w_y (1 - ls) (lse - z_y) + (ls / C) sum_c w_c (lse - z_c), written with differences from
    # the max so that its error scales with the CE, not with the logits (as
    # csrc/include/rankmixup/sample_loss.h).
    if WEIGHTED:
        target_share = w_target * (1.0 - label_smoothing)
        weight_per_class = w_total / num_classes  # 1 when unweighted
        lse_weight = target_share + label_smoothing * weight_per_class
        ce = lse_weight * tl.log(raw_sum) + target_share * (raw_max - z_target)
        if SMOOTHING:
            ce += label_smoothing * (raw_max * weight_per_class - z_total / num_classes)
        if RESCALE_CE:
            ce_weight = ce_weight * tl.load(ce_rescale_ptr).to(acc_ty)
    else:
        target_share = 1.0 - label_smoothing + tl.zeros([1], acc_ty)
        lse_weight = 1.0 + tl.zeros([1], acc_ty)
        ce = tl.log(raw_sum) + target_share * (raw_max - z_target)
        if SMOOTHING:
            ce += label_smoothing * (raw_max - z_total / num_classes)

    # The rank term: its value, and d(alpha * rank)/d(conf) and /d(max logit) of every row.
    if MNDCG:
        # List position of mix k: 2 + #{mixes j before it: rel_j > rel_k, or equal with j < k};
        # the raw sample holds position 1, whose discount 1/log2(2) is 1.
        rel_j = rel[None, :]
        rel_k = rel[:, None]
        before = is_mix[None, :] & ((rel_j > rel_k) | ((rel_j == rel_k) & (k[None, :] < k[:, None])))
        discount = 1.0 / tl.log2(tl.sum(before.to(acc_ty), axis=1) + 3.0)
        dcg = raw_conf + tl.sum(tl.where(is_mix, mix_conf * discount, 0.0), axis=0)
        idcg = 1.0 + tl.sum(tl.where(is_mix, rel * discount, 0.0), axis=0)
        over = idcg > dcg
        rank = 1.0 - tl.where(over, dcg / idcg, idcg / dcg)
        d_gain = alpha * tl.where(over, -1.0 / idcg, idcg / (dcg * dcg))  # per unit discount
        raw_conf_coef = d_gain
        mix_conf_coef = d_gain * discount
        raw_max_coef = tl.zeros([1], acc_ty)
        mix_max_coef = tl.zeros([KP], acc_ty)
    else:
        if SCORE_PROB:
            raw_score = raw_conf
            mix_score = mix_conf
        else:
            # The max ignores a NaN logit, the sum of exps does not: take the NaN from there,
            # so that it reaches the loss (SPEC §9).
            raw_score = tl.where(raw_sum != raw_sum, raw_sum, raw_max)
            mix_score = tl.where(mix_sum != mix_sum, mix_sum, mix_max)
        hinge = mix_score - raw_score + margin
        keep = is_mix & (rel < 1.0)
        # where(hinge < 0) rather than maximum(): a NaN hinge must stay NaN.
        rank = tl.sum(tl.where(keep, tl.where(hinge < 0.0, 0.0, hinge), 0.0), axis=0) / K
        mix_coef = tl.where(keep & (hinge > 0.0), alpha / K, 0.0)  # relu'(0) = 0
        raw_coef = -tl.sum(mix_coef, axis=0) + tl.zeros([1], acc_ty)
        zero_raw = tl.zeros([1], acc_ty)
        zero_mix = tl.zeros([KP], acc_ty)
        raw_conf_coef = raw_coef if SCORE_PROB else zero_raw
        mix_conf_coef = mix_coef if SCORE_PROB else zero_mix
        raw_max_coef = zero_raw if SCORE_PROB else raw_coef
        mix_max_coef = zero_mix if SCORE_PROB else mix_coef

    ce = tl.where(valid, ce, 0.0)
    rank = tl.where(valid, rank, 0.0)
    tl.store(ce_ptr + b + one, ce)
    tl.store(rank_ptr + b + one, rank)
    tl.store(loss_ptr + b + one, ce_weight * ce + alpha * rank)

    if WRITE_GRAD:
        # d conf/dz = conf * (onehot(argmax) - softmax); d max/dz = onehot(argmax).
        # An ignored sample gets all-zero coefficients, hence rows of exact zeros.
        ce_coef = tl.where(valid, ce_weight, 0.0)
        raw_p = tl.where(valid, ce_coef * lse_weight - raw_conf_coef * raw_conf, 0.0)
        raw_m = tl.where(valid, raw_max_coef + raw_conf_coef * raw_conf, 0.0)
        mix_p = tl.where(valid, -mix_conf_coef * mix_conf, 0.0)
        mix_m = tl.where(valid, mix_max_coef + mix_conf_coef * mix_conf, 0.0)
        raw_t = -ce_coef * target_share
        raw_u = -ce_coef * label_smoothing / num_classes + tl.zeros([1], acc_ty)
        no_term = tl.zeros([KP], acc_ty)
        # Output rows: raw b first, then mix k at (k + 1) * B + b.
        raw_out = grad_ptr + b * num_classes + one
        mix_out = grad_ptr + ((k + 1).to(tl.int64) * batch + b) * num_classes
        # Sweep 2: every gradient row (the logits are read again, mostly from cache).
        for start in range(0, num_classes, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            z = _load_rows(raw_ptrs, cols, raw_live, num_classes, acc_ty)
            if WEIGHTED:  # the smoothing term's constant is per class: U * w[c]
                w = tl.load(weight_ptr + cols, mask=cols < num_classes, other=0.0).to(acc_ty)
                raw_u_term = raw_u[:, None] * w[None, :]
            else:
                raw_u_term = raw_u[:, None]
            _store_grad(raw_out, z, cols, num_classes, raw_max, raw_log_sum, raw_arg, raw_p, raw_m, raw_u_term, raw_t,
                        target, one == 0)
            z = _load_rows(mix_ptrs, cols, mix_live, num_classes, acc_ty)
            _store_grad(mix_out, z, cols, num_classes, mix_max, mix_log_sum, mix_arg, mix_p, mix_m, no_term[:, None],
                        no_term, -1, is_mix)


@triton.jit
def _scale_rows_kernel(grad_ptr, scale_ptr, out_ptr, batch, num_classes, stride_scale, BLOCK: tl.constexpr):
    """``out[r] = grad[r] * scale[r % batch]`` for the contiguous ``(rows, num_classes)`` ``grad``."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < num_classes
    scale = tl.load(scale_ptr + (row % batch) * stride_scale)
    offsets = row * num_classes + cols
    grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, (grad.to(scale.dtype) * scale).to(out_ptr.dtype.element_ty), mask=mask)


def loss_launch_config(num_mix: int, num_classes: int, block_c: int = 0) -> dict:
    """The compile-time configuration of a fused-loss launch: tile shape and warps.

    ``block_c`` caps the chunk width (a power of two); 0 picks the widest chunk the tile
    allows, so that small class counts take a single chunk.
    """
    rows = launch.static(triton.next_power_of_2(num_mix + 1))
    widest = max(16, MAX_TILE // rows)
    block = launch.static(min(triton.next_power_of_2(num_classes), block_c or widest, widest))
    kp = launch.static(triton.next_power_of_2(num_mix))
    return dict(KP=kp, BLOCK_C=block, num_warps=max(1, min(8, rows * block // 256)))


def _check_tiles_fit(mode: str, num_mix: int, config: dict) -> None:
    """A program holds a sample's K+1 rows in one tile of ``next_power_of_2(K+1) x BLOCK_C``
    and, for M-NDCG, its ranking in one of ``KP x KP``; Triton caps a tile's elements (2**20):
    at most 1024 mixes per sample for M-NDCG, and 65535 for MRL on 16 classes or more."""
    rows = triton.next_power_of_2(num_mix + 1)
    largest = max(rows * config["BLOCK_C"], config["KP"] ** 2 if mode == "mndcg" else 0)
    if largest > tl.TRITON_MAX_TENSOR_NUMEL:
        raise ValueError(f"rankmixup_loss: mix_logits holds K = {num_mix} mixes per sample, which the triton "
                         f"backend's {mode} kernel would hold in a tile of {largest} elements, more than Triton's "
                         f"{tl.TRITON_MAX_TENSOR_NUMEL}")


def scale_launch_config(num_classes: int) -> dict:
    """Class block and warps of the backward's scaling launch."""
    return launch.block_config(num_classes, 2048)


def _fused_loss(
    logits: torch.Tensor,
    mix_logits: torch.Tensor,
    targets: torch.Tensor,
    lam: torch.Tensor,
    index: torch.Tensor | None,
    mode: str,
    score: str,
    ignore_index: int,
    ce_weight: float,
    alpha: float,
    margin: float,
    label_smoothing: float,
    need_grad: bool,
    block_c: int,
    weight: torch.Tensor | None = None,
    ce_rescale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample ``(loss, ce, rank)`` in float32 (float64 for float64 logits), and the
    gradient of the per-sample loss as one ``((K+1)*B, C)`` buffer in the logits' dtype —
    raw rows first, then mix-major mix rows — or an empty buffer when ``need_grad`` is False.

    ``lam`` (K, B) in the accumulation dtype, any strides; with ``index`` (K, B) int64, the
    partners, each mix's relevance is derived in the kernel; with None, ``lam`` holds the
    relevances themselves.

    ``weight``: class weights ``(C,)`` in the accumulation dtype, or None. ``ce_rescale``: a
    scalar by which each sample's CE is multiplied in its loss (not in ``ce``), or None."""
    check_fused_loss_args(logits, mix_logits, targets, lam, index, mode, score, block_c, weight, ce_rescale)
    batch, num_classes = logits.shape
    num_mix = lam.shape[0]
    # Rows may have any stride; classes are read contiguously (a copy only for column-strided input).
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    mix_logits = mix_logits if mix_logits.stride(1) == 1 else mix_logits.contiguous()
    acc = accumulation_dtype(logits.dtype)
    loss, ce, rank = (torch.empty(batch, device=logits.device, dtype=acc) for _ in range(3))
    grad_rows = (num_mix + 1) * batch if need_grad else 0
    grad = torch.empty(grad_rows, num_classes, device=logits.device, dtype=logits.dtype)
    config = loss_launch_config(num_mix, num_classes, block_c)
    _check_tiles_fit(mode, num_mix, config)
    launch.launcher(_fused_loss_kernel)[(batch,)](
        logits,
        mix_logits,
        targets,
        lam,
        targets if index is None else index,  # (unread without partners)
        logits if weight is None else weight,  # (unread when unweighted)
        logits if ce_rescale is None else ce_rescale,
        loss,
        ce,
        rank,
        grad,
        batch,
        num_classes,
        logits.stride(0),
        mix_logits.stride(0),
        targets.stride(0),
        lam.stride(0),
        lam.stride(1),
        0 if index is None else index.stride(0),
        0 if index is None else index.stride(1),
        ignore_index,
        ce_weight,
        alpha,
        margin,
        label_smoothing,
        K=num_mix,
        MNDCG=mode == "mndcg",
        SCORE_PROB=score == "prob",
        SMOOTHING=label_smoothing > 0,
        PAIRED=index is not None,
        WEIGHTED=weight is not None,
        RESCALE_CE=ce_rescale is not None,
        WRITE_GRAD=need_grad,
        **config,
    )
    return loss, ce, rank, grad


def _fused_loss_backward(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """``grad`` ``((K+1)*B, C)`` with row ``r`` scaled by ``grad_loss[r % B]`` (new tensor)."""
    check_fused_loss_backward_args(grad, grad_loss)
    out = torch.empty_like(grad)
    rows, num_classes = grad.shape
    if rows:
        config = scale_launch_config(num_classes)
        grid = (rows, triton.cdiv(num_classes, config["BLOCK"]))
        launch.launcher(_scale_rows_kernel)[grid](
            grad, grad_loss, out, grad_loss.shape[0], num_classes, grad_loss.stride(0), **config
        )
    return out


fused_loss_backward = eager.triton_op("rankmixup_triton::fused_loss_backward", _fused_loss_backward)


def _setup_context(ctx, inputs, output):
    logits = inputs[0]
    ctx.batch = logits.shape[0]
    ctx.mix_shape = inputs[1].shape
    # The logits and mix logits only for their place in the graph under create_graph
    # (_differentiable_once). In eager mode: a reference to tensors the caller usually still
    # holds, as the C++ loss keeps them; so, as there, modifying them in place before the backward
    # is refused, and saved-tensor hooks (save_on_cpu) pack them too. A compiled backward never
    # reads them, and torch.compile saves nothing for them.
    ctx.save_for_backward(output[3], logits, inputs[1])
    # Only the loss carries a gradient, as in the C++ loss op: ce and rank are its parts for
    # logging, the gradient rows internal. Nor does autograd fill zeros for those three outputs
    # on every backward (the gradient rows' a buffer the size of all the logits).
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, grad_ce, grad_rank, grad_grad):
    grad, logits, mix_logits = ctx.saved_tensors
    # No gradient rows (need_grad False): autograd still calls the backward when another input
    # (lam, say, in a direct call) requires grad, and the logits get none.
    if grad_loss is None or grad.shape[0] == 0:
        return (None,) * 16
    # grad_loss may be an expanded (stride-0) view of a scalar: the kernel reads it by stride.
    scaled = eager.call(fused_loss_backward, grad, grad_loss)
    grad_logits = scaled[: ctx.batch]
    grad_mix = scaled[ctx.batch :].view(ctx.mix_shape)
    if torch.is_grad_enabled():  # create_graph=True
        grad_logits, grad_mix = _differentiable_once(grad_logits, grad_mix, logits, mix_logits, grad_loss)
    return (grad_logits, grad_mix) + (None,) * 14  # one per input of fused_loss


def _differentiable_once(grad_logits, grad_mix, logits, mix_logits, grad_loss):
    """The gradients under create_graph, hung off an error node (the one @once_differentiable
    builds) with edges to the logits and the incoming gradient: fused_loss_backward has no
    derivative, and without this a second derivative (a gradient penalty) would silently leave
    the loss's part out. Why so: differentiable_once in csrc/autograd.cpp, the same for the C++
    loss."""
    inputs = (grad_logits, grad_mix, logits, mix_logits, grad_loss)
    return torch._C._functions.DelayedError(_NO_SECOND_DERIVATIVE, len(inputs))(*inputs)[:2]


_NO_SECOND_DERIVATIVE = (
    "rankmixup_ops: the loss is differentiable once; a derivative of its gradient (after "
    "create_graph=True) is not implemented on this backend: backend='reference' has one"
)


fused_loss = eager.triton_op("rankmixup_triton::fused_loss", _fused_loss, setup_context=_setup_context,
                             backward=_backward)


def rankmixup_loss(logits, mix_logits, targets, lam, index, options: LossOptions, block_c: int = 0) -> LossOutput:
    """The backend's loss over checked inputs, reduced as
    :func:`rankmixup_ops.reference.rankmixup_loss_from_relevance` reduces.

    ``block_c`` caps the chunk width over classes (a power of two; 0 chooses) — tests set it
    small to exercise the chunked path on small class counts.
    """
    need_grad = torch.is_grad_enabled() and (logits.requires_grad or mix_logits.requires_grad)
    ce_scale = ce_rescale = None
    if options.reduction == "mean" and options.weight is not None:
        # The divisors stay on the device; a mean over nothing is 0, never NaN.
        count = (targets != options.ignore_index).sum().to(accumulation_dtype(logits.dtype))
        weight_sum = _valid_weight_sum(targets, options)
        ce_scale = torch.where(weight_sum != 0, 1 / weight_sum, 0)
        ce_rescale = ce_scale * count  # the per-sample losses are then averaged over count
    loss, ce, rank, _ = eager.call(
        fused_loss,
        logits,
        mix_logits,
        targets,
        lam,
        index,
        options.mode,
        options.score,
        options.ignore_index,
        float(options.ce_weight),
        float(options.alpha),
        float(options.margin),
        float(options.label_smoothing),
        need_grad,
        block_c,
        options.weight,
        ce_rescale,
    )
    if options.reduction == "none":
        return LossOutput(loss, ce, rank)
    loss, ce, rank, _ = eager.call(reduce_loss, loss, ce, rank, targets, options.ignore_index,
                                   options.reduction == "mean", ce_scale)
    return LossOutput(loss, ce, rank)


def _valid_weight_sum(targets: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The weighted mean's CE divisor: the summed class weights of the valid targets."""
    valid = targets != options.ignore_index
    weight = options.weight
    return torch.where(valid, weight[targets.clamp(0, weight.shape[0] - 1)], 0).sum()
