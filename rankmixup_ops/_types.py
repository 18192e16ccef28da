"""Result types shared by the public API and every backend."""

from __future__ import annotations

from typing import NamedTuple

import torch


class LossOutput(NamedTuple):
    """What the RankMixup losses return.

    ``loss`` carries the gradient; ``ce`` and ``rank`` are its two parts, detached, for logging
    (``loss = ce + alpha * rank``). With ``reduction="none"`` all three are ``(B,)``.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    rank: torch.Tensor


class MixupBatch(NamedTuple):
    """A mixed batch: ``inputs`` is ``(K*B, *feat)`` mix-major, with the ``lam`` ``(K, B)`` and
    ``index`` ``(K, B)`` that made it (pass both on to the loss)."""

    inputs: torch.Tensor
    lam: torch.Tensor
    index: torch.Tensor
