"""Out-of-distribution metrics (rankmixup_ops.metrics.ood) against scikit-learn, with and
without tied scores. Fresh random logits on every run (the seed is in the failure message)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankmixup_ops.metrics import OOD_METRICS, OOD_SCORES, ood_metrics

sk_metrics = pytest.importorskip("sklearn.metrics")

SEED = torch.seed() % 2**31


def _logits(n: int, m: int, c: int, *, ties: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """In-distribution logits more peaked than out-of-distribution ones; with ``ties``, rounded
    to a coarse grid so that many scores coincide, across the two sets too."""
    gen = torch.Generator().manual_seed(SEED + seed)
    id_logits = torch.randn(n, c, generator=gen, dtype=torch.float64) * 3
    ood_logits = torch.randn(m, c, generator=gen, dtype=torch.float64) * 2
    if ties:
        id_logits, ood_logits = id_logits.round(), ood_logits.round()
    return id_logits, ood_logits


def _score(logits: torch.Tensor, score: str) -> np.ndarray:
    if score == "msp":
        values = logits.softmax(dim=1).amax(dim=1)
    elif score == "max_logit":
        values = logits.amax(dim=1)
    else:
        values = logits.logsumexp(dim=1)
    return values.numpy()


def _sklearn(id_logits, ood_logits, score: str) -> dict[str, float]:
    s_id, s_ood = _score(id_logits, score), _score(ood_logits, score)
    scores = np.concatenate([s_id, s_ood])
    is_id = np.concatenate([np.ones_like(s_id), np.zeros_like(s_ood)])
    fpr, tpr, _ = sk_metrics.roc_curve(is_id, scores, drop_intermediate=False)
    return {
        "auroc": sk_metrics.roc_auc_score(is_id, scores),
        "aupr_in": sk_metrics.average_precision_score(is_id, scores),
        "aupr_out": sk_metrics.average_precision_score(1 - is_id, -scores),
        "fpr95": fpr[np.searchsorted(tpr, 0.95, side="left")],
    }


@pytest.mark.parametrize("score", OOD_SCORES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("n,m,c", [(1, 1, 2), (5, 3, 4), (300, 200, 10)])
def test_matches_scikit_learn(n, m, c, ties, score):
    id_logits, ood_logits = _logits(n, m, c, ties=ties, seed=n + m + c)
    result = ood_metrics(id_logits, ood_logits, score=score)
    assert set(result) == set(OOD_METRICS)
    expected = _sklearn(id_logits, ood_logits, score)
    for name in OOD_METRICS:
        assert result[name].dtype == torch.float64 and result[name].shape == ()
        assert result[name].item() == pytest.approx(expected[name], abs=1e-12), f"seed {SEED}: {name}"


def test_ties_are_counted_as_scikit_learn_counts_them():
    """Every score tied across the two sets: no threshold separates them, AUROC is one half."""
    same = torch.zeros(4, 3)
    result = ood_metrics(same, same[:2])
    assert result["auroc"].item() == 0.5
    assert result["fpr95"].item() == 1.0
    assert result["aupr_in"].item() == pytest.approx(4 / 6)


def test_perfect_separation():
    id_logits = torch.tensor([[9.0, 0.0], [0.0, 8.0]])
    ood_logits = torch.tensor([[0.1, 0.0], [0.0, 0.2], [0.3, 0.3]])
    result = ood_metrics(id_logits, ood_logits)
    assert {name: value.item() for name, value in result.items()} == {
        "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_narrow_logits_are_scored_in_float64(dtype):
    id_logits, ood_logits = (t.to(dtype) for t in _logits(50, 40, 5, ties=False, seed=7))
    result = ood_metrics(id_logits, ood_logits)
    expected = _sklearn(id_logits.double(), ood_logits.double(), "msp")
    assert result["auroc"].item() == pytest.approx(expected["auroc"], abs=1e-12)


def test_bad_input_names_the_argument():
    id_logits, ood_logits = torch.randn(4, 3), torch.randn(5, 3)
    cases = [
        ((id_logits[:, :1], ood_logits[:, :1]), {}, ValueError, "ood_metrics: id_logits must have shape"),
        ((id_logits, ood_logits[:0]), {}, ValueError, "ood_metrics: ood_logits must have shape"),
        ((id_logits, ood_logits[:, :2]), {}, ValueError, "ood_logits must have shape \\(M, 3\\)"),
        ((id_logits[0], ood_logits), {}, ValueError, "id_logits must have shape"),
        ((id_logits.long(), ood_logits), {}, TypeError, "id_logits must be a floating tensor"),
        ((id_logits, ood_logits.to("meta")), {}, ValueError, "ood_logits is on meta"),
        ((id_logits, ood_logits), {"score": "entropy"}, ValueError, "score must be one of"),
        ((id_logits.index_fill(0, torch.tensor([1]), float("nan")), ood_logits), {}, ValueError, "score is NaN"),
    ]
    for args, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            ood_metrics(*args, **kwargs)
