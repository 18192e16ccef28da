"""Mixup generation: sampling ``(lam, index)`` on the device, the mix op (SPEC §2), and mixing
at a hidden layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from . import _checks as check
from ._types import MixupBatch, accumulation_dtype
from .backends import resolve

__all__ = ["sample_mixup", "mix", "mixup", "mix_at"]


def sample_mixup(
    batch_size: int,
    num_mix: int,
    alpha: float,
    *,
    per_sample: bool = False,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws mixing coefficients and partners for ``num_mix`` mixes of a batch.

    ``lam`` ``(K, B)`` float32 is ``Beta(alpha, alpha)``, one value per mix (repeated over the
    batch) or, with ``per_sample=True``, one per sample; ``alpha <= 0`` gives ``lam = 1``
    (mixing off). ``index`` ``(K, B)`` int64 holds K independent uniform permutations.

    Everything is drawn on ``device`` (default: the generator's device, else the current
    default device) from ``generator`` when given, with no host synchronisation; a seeded
    generator reproduces the draw.
    """
    fn = "sample_mixup"
    batch_size = check.integral(fn, "batch_size", batch_size, low=1)
    num_mix = check.integral(fn, "num_mix", num_mix, low=1)
    alpha = check.real(fn, "alpha", alpha)
    per_sample = check.flag(fn, "per_sample", per_sample)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"sample_mixup: generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is None:
        # torch.empty(()) lands on the default device; torch.get_default_device() would be the
        # direct way, but torch.compile cannot trace it.
        device = generator.device if generator is not None else torch.empty(()).device
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"sample_mixup: generator is on {generator.device} but device is {device}")

    lam_shape = (num_mix, batch_size if per_sample else 1)
    if alpha > 0:
        # A Dirichlet over two components is Beta(alpha, alpha) in its first; unlike
        # torch.distributions.Beta, _sample_dirichlet takes a generator.
        concentration = torch.full((*lam_shape, 2), alpha, device=device)
        lam = torch._sample_dirichlet(concentration, generator=generator)[..., 0]
    else:
        lam = torch.ones(lam_shape, device=device)
    # Sorting i.i.d. uniforms gives a uniform permutation per row in one launch; float64 keys
    # make ties (which would bias the draw) vanishingly rare.
    keys = torch.rand(num_mix, batch_size, device=device, dtype=torch.float64, generator=generator)
    index = keys.argsort(dim=1)
    return lam.expand(num_mix, batch_size).contiguous(), index


def mix(x: torch.Tensor, lam, index: torch.Tensor, *, validate: bool = False, backend: str = "auto") -> torch.Tensor:
    """``out[k*B + b] = lam[k,b] * x[b] + (1 - lam[k,b]) * x[index[k,b]]``, shape ``(K*B, *x.shape[1:])``.

    Differentiable in ``x`` (and in ``lam``). ``lam`` is ``(K,)`` or ``(K, B)``; ``index``
    ``(K, B)``. Arithmetic is float32 (float64 for float64 ``x``); the result has ``x``'s dtype.
    ``validate=True`` (or ``RANKMIXUP_VALIDATE=1``) also checks the values, synchronising with the
    device: ``lam`` in [0, 1], every row of ``index`` a permutation.
    """
    fn = "mix"
    check.floating(fn, "x", x)
    check.shape(fn, "x", x, "(B, *feat) with B >= 1", x.dim() >= 1 and x.shape[0] >= 1)
    lam, index = check.mixing(fn, lam, index, batch=x.shape[0], device=x.device, dtype=accumulation_dtype(x.dtype))
    check.same_device(fn, "x", x, lam=lam, index=index)
    if check.validation_requested(check.flag(fn, "validate", validate)):
        check.validate_values(fn, lam=lam, index=index)
    return resolve(fn, backend, x.device).mix(x, lam, index)


def mixup(
    x: torch.Tensor,
    num_mix: int = 3,
    alpha: float = 2.0,
    *,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> MixupBatch:
    """Samples ``num_mix`` mixes of the batch ``x`` and builds them.

    Returns ``MixupBatch(inputs, lam, index)``: ``inputs`` ``(K*B, *feat)`` mix-major, and the
    ``lam``/``index`` the loss needs. The defaults are the paper's M-NDCG setting (K=3, alpha=2).
    """
    check.floating("mixup", "x", x)
    check.shape("mixup", "x", x, "(B, *feat) with B >= 1", x.dim() >= 1 and x.shape[0] >= 1)
    lam, index = sample_mixup(x.shape[0], num_mix, alpha, per_sample=per_sample, device=x.device, generator=generator)
    return MixupBatch(mix(x, lam, index, backend=backend), lam, index)


@contextlib.contextmanager
def mix_at(module: nn.Module, lam, index: torch.Tensor, *, backend: str = "auto") -> Iterator[None]:
    """Mixes at a hidden layer (manifold mixup; the RankMixup code's ``layer_mix``): inside the
    block, the output ``h`` (B, *feat) of ``module``'s first call becomes ``h`` followed by its K
    mixes, ``torch.cat([h, mix(h, lam, index)])`` (B + K*B rows, mix-major as :func:`mix` lays
    them out), so that the rest of the network runs on the raw samples and their mixes at once
    and returns the raw outputs followed by the mixes'.

    >>> lam, index = sample_mixup(len(x), 3, 2.0, device=x.device)
    >>> with mix_at(model.layer2, lam, index):  # doctest: +SKIP
    ...     out = model(x)  # (4*B, C)
    >>> loss = rankmixup_loss(out[:len(x)], out[len(x):], y, lam, index)  # doctest: +SKIP

    The layers after ``module`` see B + K*B rows in one batch: a BatchNorm there takes its
    statistics over the raw samples and the mixes together (as the reference code's single
    forward over ``torch.cat([x, mixed])`` does at the input). Use it on an eager model: a
    ``torch.compile``'d one does not run hooks added after compilation (the block then raises,
    since the module did not run). Differentiable in ``h`` through
    both its raw rows and its mixes. Raises RuntimeError if ``module`` runs twice inside the
    block (its second input would already hold the mixes), or not at all.
    """
    fn = "mix_at"
    if not isinstance(module, nn.Module):
        raise TypeError(f"{fn}: module must be a torch.nn.Module, got {type(module).__name__}")
    index = check.integer(fn, "index", index)
    calls = 0

    def hook(_module, _inputs, output):
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError(f"{fn}: {type(module).__name__} ran twice inside the block; it must run once per forward")
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"{fn}: {type(module).__name__} must output one tensor, got {type(output).__name__}")
        return torch.cat([output, mix(output, lam, index, backend=backend)])

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
    if calls == 0:
        raise RuntimeError(f"{fn}: {type(module).__name__} did not run inside the block: nothing was mixed")
