"""The public RankMixup code's loss values, re-derived from its formulas, for comparing with
this package where that code is not buggy (SPEC §5 lists where it is)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mrl_k1(inputs: torch.Tensor, mixup: torch.Tensor, margin: float) -> torch.Tensor:
    """Its MRL for K=1 with no same-class pair (its mask is then all ones):
    mean over the batch of relu(max mix logit - max raw logit + margin)."""
    return F.relu(mixup.max(dim=1).values - inputs.max(dim=1).values + margin).mean()


def mndcg(inputs: torch.Tensor, mixup: torch.Tensor, target_re: torch.Tensor, num_mix: int) -> torch.Tensor:
    """Its M-NDCG loss per sample, 1 - ndcg: softmax maxima as gains, the soft targets' maxima
    as relevances, mixes sorted by relevance with an (unstable) argsort."""
    batch = inputs.shape[0]
    mix_conf = mixup.view(num_mix, batch, -1).softmax(2).max(2).values.t()
    rel = target_re.view(num_mix, batch, -1).max(2).values.t()
    order = torch.argsort(rel, descending=True)
    gains = torch.cat([inputs.softmax(1).max(1, keepdim=True).values, mix_conf.gather(1, order)], 1)
    rels = torch.cat([torch.ones(batch, 1, dtype=inputs.dtype), rel.gather(1, order)], 1)
    discount = torch.log2(torch.arange(1, num_mix + 2, dtype=inputs.dtype) + 1)
    dcg, idcg = (gains / discount).sum(1), (rels / discount).sum(1)
    return 1 - torch.where(idcg > dcg, dcg / idcg, idcg / dcg)
