"""Out-of-distribution detection by confidence: how well a score computed from the logits
separates in-distribution inputs (the positive class) from out-of-distribution ones.

Every metric is a function of the ROC and precision-recall points at the distinct score values
(one threshold per distinct value, so tied scores move together, as scikit-learn counts them):

- ``auroc``: area under the ROC curve (trapezoids), the probability that an in-distribution
  input scores above an out-of-distribution one, ties counting one half;
- ``aupr_in``: average precision with in-distribution as the positive class,
  ``sum_n (R_n - R_{n-1}) P_n`` over the thresholds from high to low (scikit-learn's
  ``average_precision_score``);
- ``aupr_out``: the same with out-of-distribution as the positive class and the score negated;
- ``fpr95``: the false-positive rate (out-of-distribution inputs taken for in-distribution) at
  the highest threshold whose true-positive rate reaches 95%.
"""

from __future__ import annotations

import torch

from .. import _checks as check

__all__ = ["OOD_METRICS", "OOD_SCORES", "ood_metrics"]

OOD_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
# Higher means "more in-distribution" for each: the max softmax probability (Hendrycks &
# Gimpel), the max logit, and the negative energy logsumexp(z) (Liu et al.).
OOD_SCORES = ("msp", "max_logit", "energy")


def _score(logits: torch.Tensor, score: str) -> torch.Tensor:
    z = logits.to(torch.float64)
    if score == "msp":
        return torch.softmax(z, dim=1).amax(dim=1)
    if score == "max_logit":
        return z.amax(dim=1)
    return torch.logsumexp(z, dim=1)


def _curve(positive: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """True and false positives at each distinct threshold, from the highest score down (the
    last point counts everything positive), as float64."""
    scores = torch.cat([positive, negative])
    is_positive = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)])
    scores, order = scores.sort(descending=True, stable=True)
    is_positive = is_positive[order]
    _, counts = torch.unique_consecutive(scores, return_counts=True)
    last_of_each = counts.cumsum(0) - 1  # a threshold takes in a whole group of tied scores
    true_pos = is_positive.cumsum(0)[last_of_each]
    false_pos = (1 - is_positive).cumsum(0)[last_of_each]
    return true_pos, false_pos


def _average_precision(true_pos: torch.Tensor, false_pos: torch.Tensor) -> torch.Tensor:
    recall = true_pos / true_pos[-1]
    precision = true_pos / (true_pos + false_pos)
    recall_steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return (recall_steps * precision).sum()


def ood_metrics(id_logits: torch.Tensor, ood_logits: torch.Tensor, *, score: str = "msp") -> dict[str, torch.Tensor]:
    """Out-of-distribution detection metrics of a confidence score (definitions above and in
    ``docs/metrics.md``), in-distribution as the positive class.

    Args:
        id_logits: ``(N, C)`` logits of in-distribution inputs, ``N >= 1``, ``C >= 2``.
        ood_logits: ``(M, C)`` logits of out-of-distribution inputs, ``M >= 1``, same C and
            device.
        score: ``"msp"`` (max softmax probability), ``"max_logit"`` or ``"energy"``
            (``logsumexp`` of the logits); computed in float64.

    Returns:
        ``{"auroc", "aupr_in", "aupr_out", "fpr95"}``, each a 0-dim float64 tensor on the
        logits' device. Exact with ties.
    """
    fn = "ood_metrics"
    score = check.choice(fn, "score", score, OOD_SCORES)
    for name, logits in (("id_logits", id_logits), ("ood_logits", ood_logits)):
        check.floating(fn, name, logits)
        if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
            raise check.shape_error(fn, name, logits, "(N, C) with N >= 1 and C >= 2 classes")
    if ood_logits.shape[1] != id_logits.shape[1]:
        raise check.shape_error(fn, "ood_logits", ood_logits, f"(M, {id_logits.shape[1]}) to match id_logits")
    check.same_device(fn, "id_logits", id_logits, ood_logits=ood_logits)

    id_score, ood_score = _score(id_logits.detach(), score), _score(ood_logits.detach(), score)
    if bool(id_score.isnan().any() | ood_score.isnan().any()):  # it would rank as a threshold of its own
        raise ValueError(f"{fn}: the {score} score is NaN for some input (a NaN logit, or +inf in msp's softmax)")
    true_pos, false_pos = _curve(id_score, ood_score)
    tpr = true_pos / id_score.numel()
    fpr = false_pos / ood_score.numel()
    zero = tpr.new_zeros(1)
    tpr0, fpr0 = torch.cat([zero, tpr]), torch.cat([zero, fpr])
    auroc = ((fpr0[1:] - fpr0[:-1]) * (tpr0[1:] + tpr0[:-1]) / 2).sum()
    # The first threshold (from the top) whose TPR reaches 95%: TPR rises to 1, so one exists.
    fpr95 = fpr[torch.searchsorted(tpr, tpr.new_tensor([0.95])).clamp(max=tpr.numel() - 1)].squeeze(0)
    out_true_pos, out_false_pos = _curve(-ood_score, -id_score)
    return {
        "auroc": auroc,
        "aupr_in": _average_precision(true_pos, false_pos),
        "aupr_out": _average_precision(out_true_pos, out_false_pos),
        "fpr95": fpr95,
    }
