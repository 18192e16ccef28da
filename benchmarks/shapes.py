"""What is measured: the benchmark cases (an op at one shape and dtype) of each size preset.

A case is one problem; every implementation is timed on it, forward and forward+backward.
Cases come out in priority order: when the time budget runs out, what was measured is what
matters most (the shapes of the issue's targets first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PAPER_CLASSES = (10, 100, 200)  # CIFAR-10, CIFAR-100, Tiny-ImageNet
LARGE_CLASSES = (1000, 32000, 128000)  # ImageNet, LLM-sized vocabularies
MODES = ("mndcg", "mrl")
PASSES = ("fwd", "fwd+bwd")

# Largest (K+1)*B*C of a case. 64k rows at C=32000 (2.1e9) fit; 64k rows at C=128000 (8.4e9)
# do not: each float32 intermediate of the eager reference would take 34 GB of an 80 GB GPU.
# On the CPU, a call of the eager reference must stay within seconds.
MAX_ELEMENTS = {"cuda": 2**31, "cpu": 2**24}


@dataclass(frozen=True)
class Case:
    """One problem. ``op`` "loss": logits (B, C) and mix_logits (K*B, C) in ``mode``.
    ``op`` "mix": x of shape (B, *feat) mixed K times into (K*B, *feat)."""

    op: str
    batch: int
    num_mix: int
    dtype: torch.dtype
    classes: int = 0  # loss only
    mode: str = ""  # loss only
    feat: tuple[int, ...] = ()  # mix only
    graph: bool = False  # small enough that launch overhead matters: also time a CUDA graph

    @property
    def label(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        if self.op == "loss":
            return f"loss-{self.mode} B={self.batch} K={self.num_mix} C={self.classes} {dtype}"
        feat = "x".join(map(str, self.feat))
        return f"mix B={self.batch} K={self.num_mix} x={feat} {dtype}"

    @property
    def elements(self) -> int:
        """Elements of the largest tensor family a pass touches: all K+1 rows of logits, or
        the input plus its K mixes."""
        per_row = self.classes if self.op == "loss" else math.prod(self.feat)
        return (self.num_mix + 1) * self.batch * per_row

    def floor_bytes(self, pass_: str) -> int:
        """The bytes a perfect kernel moves (see README: the floor). Loss forward reads every
        logit once, its backward writes every gradient once; mix forward reads x once and
        writes K mixes, its backward reads the K mix gradients and writes one x gradient."""
        size = torch.finfo(self.dtype).bits // 8
        return self.elements * size * (1 if pass_ == "fwd" else 2)


def _loss_cases(batches, num_mixes, classes, dtypes, *, graph):
    return [
        Case("loss", batch, num_mix, dtype, classes=c, mode=mode, graph=graph)
        for dtype in dtypes
        for batch in batches
        for c in classes
        for num_mix in num_mixes
        for mode in MODES
    ]


def _mix_cases(batch, feat, num_mixes, *, graph):
    return [Case("mix", batch, k, torch.float32, feat=feat, graph=graph) for k in num_mixes]


def full() -> list[Case]:
    """The issue's shapes, its targets first: the loss at B=4096, K=3, C=32000 in bfloat16 and
    the ImageNet-sized mix (bandwidth targets), then the paper's shapes (speedup targets), the
    other mixes, and the other large loss shapes: K=3 with B=4096 and B=16384 (16k and 64k
    rows of logits), C up to 128000, bfloat16 and float32."""
    target = _loss_cases([4096], [3], [32000], [torch.bfloat16], graph=False)
    large = _loss_cases([4096, 16384], [3], LARGE_CLASSES, [torch.bfloat16, torch.float32], graph=False)
    return [
        *target,
        *_mix_cases(256, (3, 224, 224), [3], graph=False),
        *_loss_cases([128], [1, 3], PAPER_CLASSES, [torch.float32], graph=True),
        *_mix_cases(256, (3, 224, 224), [1], graph=False),
        *_mix_cases(128, (3, 32, 32), [1, 3], graph=True),
        *[case for case in large if case not in target],
    ]


def headline() -> list[Case]:
    """What one GPU lease has time for (tools/gpu_check.sh, under a budget): the large
    bfloat16 loss first, then the paper's shapes, K=3 before K=1."""
    return [
        *_loss_cases([4096], [3], [32000], [torch.bfloat16], graph=False),
        *_loss_cases([128], [3, 1], PAPER_CLASSES, [torch.float32], graph=True),
    ]


def quick() -> list[Case]:
    """CI-sized, about a minute on a 2-core CPU: three paper shapes in both modes, one larger
    loss, and CIFAR mixup."""
    return [
        *_loss_cases([128], [3], [10, 100], [torch.float32], graph=True),
        *_loss_cases([128], [1], [10], [torch.float32], graph=True),
        Case("loss", 1024, 3, torch.float32, classes=1000, mode="mndcg"),
        *_mix_cases(128, (3, 32, 32), [3], graph=True),
    ]


def smoke() -> list[Case]:
    """Tiny shapes that exercise every code path in seconds (the harness's own test)."""
    return [
        *_loss_cases([8], [2], [10], [torch.float32], graph=True),
        *_mix_cases(8, (3, 4, 4), [2], graph=True),
    ]


PRESETS = {"full": full, "headline": headline, "quick": quick, "smoke": smoke}


def cases(preset: str, device_type: str) -> tuple[list[Case], list[tuple[Case, str]]]:
    """The cases of ``preset`` that fit ``device_type``, and the skipped ones with the reason."""
    kept, skipped = [], []
    limit = MAX_ELEMENTS[device_type]
    for case in PRESETS[preset]():
        if case.elements > limit:
            skipped.append((case, f"{case.elements:,} elements > {limit:,}, the size limit on {device_type}"))
        else:
            kept.append(case)
    return kept, skipped
