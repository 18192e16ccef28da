"""Pure-PyTorch reference implementation: the oracle every other backend answers to.

Written to be read next to SPEC.md, not to be fast. Autograd comes from PyTorch.
These functions assume their arguments were checked by :mod:`rankmixup_ops.functional`
(shapes, dtypes, devices); they do no checking of their own.

Shapes: ``B`` samples, ``C`` classes, ``K`` mixes per sample.
``logits`` is ``(B, C)``, ``mix_logits`` is ``(K*B, C)`` mix-major (row ``k*B + b`` is mix k
of sample b), ``lam`` is ``(K, B)``, ``index`` is ``(K, B)`` (row k a permutation of 0..B-1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._types import LossOptions, LossOutput, accumulation_dtype, image_memory_format

__all__ = [
    "mix",
    "paste_boxes",
    "box_mask",
    "soft_targets",
    "relevance",
    "soft_relevance",
    "rankmixup_loss",
    "rankmixup_loss_from_relevance",
]


def mix(x: torch.Tensor, lam: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[k*B + b] = lam[k,b] * x[b] + (1 - lam[k,b]) * x[index[k,b]]`` (SPEC §2)."""
    num_mix, batch = index.shape
    acc = accumulation_dtype(x.dtype)
    lam = lam.to(acc).reshape(num_mix, batch, *([1] * (x.dim() - 1)))
    xa = x.to(acc)
    mixed = lam * xa.unsqueeze(0) + (1 - lam) * xa[index]
    # Contiguous whatever x's layout, as the fused backends return it.
    return mixed.reshape(num_mix * batch, *x.shape[1:]).to(x.dtype).contiguous()


def paste_boxes(x: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[k*B + b]`` is ``x[b]`` with the part inside the image of the box ``boxes[k, b]``
    (top, bottom, left, right; half-open) taken from ``x[index[k, b]]`` (CutMix, SPEC §2)."""
    num_mix, batch = index.shape
    in_box = box_mask(boxes, *x.shape[-2:])
    # In the accumulation dtype, so that the gradient sums its terms there and rounds once.
    xa = x.to(accumulation_dtype(x.dtype))
    pasted = torch.where(in_box[:, :, None], xa[index], xa.unsqueeze(0))  # (K, B, C, H, W)
    out = pasted.reshape(num_mix * batch, *x.shape[1:]).to(x.dtype)
    return out.contiguous(memory_format=image_memory_format(x))


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(K, B, H, W)`` bool: which pixels of a ``height x width`` image each box of ``boxes``
    ``(K, B, 4)`` (top, bottom, left, right; half-open) covers."""
    top, bottom, left, right = (side[..., None] for side in boxes.unbind(-1))  # (K, B, 1) each
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    return ((rows >= top) & (rows < bottom))[..., :, None] & ((cols >= left) & (cols < right))[..., None, :]


def soft_targets(
    targets: torch.Tensor,
    lam: torch.Tensor,
    index: torch.Tensor,
    num_classes: int,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mixed soft labels ``lam*y[b] + (1-lam)*y[index]``, ``(K*B, num_classes)`` float32.

    ``y`` is the (optionally smoothed) one-hot target; a target outside ``[0, num_classes)``
    (an ignored sample) contributes a row of zeros.
    """
    num_mix, batch = index.shape
    classes = torch.arange(num_classes, device=targets.device)
    onehot = (targets.unsqueeze(1) == classes).float()
    in_range = onehot.sum(dim=1, keepdim=True)  # 1 for a real label, 0 for an ignored one
    smoothed = (1 - label_smoothing) * onehot + (label_smoothing / num_classes) * in_range
    lam = lam.float().unsqueeze(-1)
    mixed = lam * smoothed.unsqueeze(0) + (1 - lam) * smoothed[index]
    return mixed.reshape(num_mix * batch, num_classes)


def relevance(targets: torch.Tensor, lam: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rel[k,b]`` of SPEC §3: 1 when b and its partner share a class, else ``max(lam, 1-lam)``.

    It equals the largest entry of the mixed soft target. The MRL mask is ``rel < 1``:
    ``rel`` is exactly 1 when the classes match or ``lam`` is 0 or 1, the cases with no
    ranking signal.
    """
    same = targets.unsqueeze(0) == targets[index]
    return torch.where(same, torch.ones_like(lam), torch.maximum(lam, 1 - lam))


# lam*1 + (1-lam)*1 rounds to within a few ulps of 1 in float32.
SOFT_RELEVANCE_ONE_TOLERANCE = 4 * torch.finfo(torch.float32).eps


def soft_relevance(soft_targets: torch.Tensor, num_mix: int, dtype: torch.dtype) -> torch.Tensor:
    """``rel`` (K, B) in ``dtype`` read off mixed soft targets ``(K*B, C)``, as the RankMixup code
    reads it: each row's largest entry, which is exactly :func:`relevance` (its ``max(lam, 1-lam)``,
    or 1 for a same-class pair), except that a same-class pair's ``lam + (1-lam)`` may round a few
    ulps off 1: within 4 float32 epsilons of 1 counts as exactly 1."""
    rel = soft_targets.amax(dim=1).to(dtype).view(num_mix, -1)
    return rel.masked_fill(rel >= 1 - SOFT_RELEVANCE_ONE_TOLERANCE, 1.0)


def rankmixup_loss(
    logits: torch.Tensor,
    mix_logits: torch.Tensor,
    targets: torch.Tensor,
    lam: torch.Tensor,
    index: torch.Tensor,
    **options,
) -> LossOutput:
    """``CE(raw) + alpha * rank`` (SPEC §5); ``lam`` is ``(K, B)``; ``options`` are the fields of
    :class:`~rankmixup_ops._types.LossOptions` (``mode``, ``alpha``, ...), unchecked."""
    rel = relevance(targets, lam, index)
    return rankmixup_loss_from_relevance(logits, mix_logits, targets, rel, LossOptions(**options))


def rankmixup_loss_from_relevance(
    logits: torch.Tensor,
    mix_logits: torch.Tensor,
    targets: torch.Tensor,
    rel: torch.Tensor,
    options: LossOptions,
) -> LossOutput:
    """``ce_weight * CE + alpha * rank`` given the relevance ``rel`` (K, B) of every mix: all the
    pairing information the loss needs (SPEC §3; the compat classes read it off the reference
    code's soft targets); ``ce_weight=0`` gives the rank term alone."""
    mode, score, ce_weight, alpha, margin, ignore_index, label_smoothing, reduction, weight = options
    batch, _ = logits.shape
    num_mix = rel.shape[0]
    acc = accumulation_dtype(logits.dtype)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)

    # Ignored samples are replaced by zeros up front, so that their (possibly non-finite)
    # logits reach neither the loss nor the gradient: where() passes a clean 0 gradient back.
    z_raw = torch.where(valid.unsqueeze(1), logits.to(acc), 0)
    z_mix = torch.where(valid.view(1, batch, 1), mix_logits.to(acc).view(num_mix, batch, -1), 0)

    ce = F.cross_entropy(z_raw, safe_targets, weight=weight, reduction="none", label_smoothing=label_smoothing)
    if mode == "mrl":
        rank = _mrl(z_raw, z_mix, rel.to(acc), margin, score)
    else:
        rank = _mndcg(z_raw, z_mix, rel.to(acc))
    ce = torch.where(valid, ce, 0)
    rank = torch.where(valid, rank, 0)

    if reduction == "none":
        loss, ce_part, rank_part = ce_weight * ce + alpha * rank, ce, rank
    else:
        if reduction == "sum":
            ce_scale = rank_scale = 1.0
        else:
            # The CE's mean divides by the summed weights of the valid targets (their count when
            # unweighted), as F.cross_entropy's; a mean over nothing is 0 (zero gradient), never NaN.
            count = valid.sum().to(acc)
            ce_divisor = count if weight is None else torch.where(valid, weight[safe_targets], 0).sum()
            ce_scale, rank_scale = (torch.where(d != 0, 1 / d, 0) for d in (ce_divisor, count))
        ce_part, rank_part = ce.sum() * ce_scale, rank.sum() * rank_scale
        loss = ce_weight * ce_part + alpha * rank_part
    return LossOutput(loss, ce_part.detach(), rank_part.detach())


def _argmax_gather(values: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``values`` at the argmax of ``logits`` along the last dim; ties go to the lowest index
    (``argmax`` returns the first maximum), and so does the gradient."""
    return values.gather(-1, logits.argmax(dim=-1, keepdim=True)).squeeze(-1)


def _confidence(z: torch.Tensor) -> torch.Tensor:
    """``max_c softmax(z)_c``."""
    return _argmax_gather(torch.softmax(z, dim=-1), z)


def _mrl(z_raw, z_mix, rel, margin: float, score: str) -> torch.Tensor:
    """``(1/K) sum_k keep * relu(score(mix) - score(raw) + margin)`` per sample."""
    if score == "logit":
        s_raw, s_mix = _argmax_gather(z_raw, z_raw), _argmax_gather(z_mix, z_mix)
    else:
        s_raw, s_mix = _confidence(z_raw), _confidence(z_mix)
    keep = rel < 1
    hinge = torch.relu(s_mix - s_raw.unsqueeze(0) + margin)
    return torch.where(keep, hinge, 0).mean(dim=0)


def _mndcg(z_raw, z_mix, rel) -> torch.Tensor:
    """``1 - ndcg`` per sample over the list [raw, mixes by relevance descending]."""
    num_mix = rel.shape[0]
    # Stable: equal relevances keep their mix order k ascending (the reference code's
    # argsort does not promise this).
    order = torch.argsort(rel, dim=0, descending=True, stable=True)
    gains = torch.cat([_confidence(z_raw).unsqueeze(0), _confidence(z_mix).gather(0, order)])
    rels = torch.cat([torch.ones_like(rel[:1]), rel.gather(0, order)])
    positions = torch.arange(1, num_mix + 2, device=rel.device, dtype=rel.dtype)
    discount = (1 / torch.log2(positions + 1)).unsqueeze(1)
    dcg = (gains * discount).sum(dim=0)
    idcg = (rels * discount).sum(dim=0)
    ndcg = torch.where(idcg > dcg, dcg / idcg, idcg / dcg)
    return 1 - ndcg


class _ReferenceBackend:
    """This module as a backend (see :class:`rankmixup_ops.backends.Backend`): on any device,
    autograd by PyTorch."""

    name = "reference"
    eager = None

    @staticmethod
    def unsupported(device: torch.device) -> str | None:
        return None

    @staticmethod
    def loss(logits, mix_logits, targets, lam, index, options: LossOptions) -> LossOutput:
        rel = lam if index is None else relevance(targets, lam, index)
        return rankmixup_loss_from_relevance(logits, mix_logits, targets, rel, options)

    mix = staticmethod(mix)
    paste_boxes = staticmethod(paste_boxes)
    soft_relevance = staticmethod(soft_relevance)


def load_backend(name: str) -> _ReferenceBackend:
    """The reference backend (``name`` is ``"reference"``)."""
    return _ReferenceBackend()
