"""rankmixup_ops: fused RankMixup training ops for PyTorch.

RankMixup (Noh et al., ICCV 2023) calibrates a classifier by training on a batch and K mixup
copies of it with ``loss = CE(raw) + alpha * rank``, where the rank term asks raw samples to be
more confident than their mixes (MRL) or the mixes' confidences to follow their mixing
coefficients (M-NDCG). See SPEC.md for the exact definitions.
"""

from . import compat, metrics, reference
from ._types import LossOutput, MixupBatch
from .backends import BackendStatus, BackendUnavailable, available_backends
from .functional import mndcg_loss, mrl_loss, rankmixup_loss, soft_targets
from .mixup import cutmix, mix, mix_at, mixup, paste_boxes, sample_cutmix, sample_mixup
from .modules import Mixup, RankMixupLoss

__version__ = "0.1.0"

__all__ = [
    "BackendStatus",
    "BackendUnavailable",
    "LossOutput",
    "Mixup",
    "MixupBatch",
    "RankMixupLoss",
    "available_backends",
    "compat",
    "cutmix",
    "metrics",
    "mix",
    "mix_at",
    "mixup",
    "mndcg_loss",
    "mrl_loss",
    "paste_boxes",
    "rankmixup_loss",
    "reference",
    "sample_cutmix",
    "sample_mixup",
    "soft_targets",
]
