"""Mixup generation: sampling ``(lam, index)`` on the device, the mix op (SPEC §2), mixing at a
hidden layer, and CutMix (sampling boxes, the paste op)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from . import _checks as check
from ._types import MixupBatch, accumulation_dtype, image_memory_format
from .backends import resolve

__all__ = ["sample_mixup", "mix", "mixup", "mix_at", "sample_cutmix", "paste_boxes", "cutmix"]


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
    device = _sampling_device(fn, device, generator)

    lam_shape = (num_mix, batch_size if per_sample else 1)
    lam = _beta(alpha, lam_shape, device, generator) if alpha > 0 else torch.ones(lam_shape, device=device)
    index = _permutations(num_mix, batch_size, device, generator)
    return lam.expand(num_mix, batch_size).contiguous(), index


def _sampling_device(fn: str, device, generator) -> torch.device:
    """The device to draw on: ``device``, else the generator's, else the default device."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is None:
        # torch.empty(()) lands on the default device; torch.get_default_device() would be the
        # direct way, but torch.compile cannot trace it.
        device = generator.device if generator is not None else torch.empty(()).device
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"{fn}: generator is on {generator.device} but device is {device}")
    return device


def _beta(alpha: float, shape: tuple[int, ...], device: torch.device, generator) -> torch.Tensor:
    """float32 ``Beta(alpha, alpha)`` draws of ``shape``, ``alpha > 0``.

    ``G1 / (G1 + G2)`` for ``G ~ Gamma(alpha)``, from the logarithms of the Gammas:
    ``log G = log Gamma(alpha + 1) + log(U) / alpha`` (Marsaglia and Tsang's boost for alpha < 1).
    Drawn directly, G underflows for small alpha (float32's below 1e-38 about as often as
    ``U < 1e-38 ** alpha``: a quarter of the pairs at alpha = 1e-3), and both underflowing gave
    lam = 1/2 exactly where Beta puts its mass near 0 and 1; the log-ratio never does.
    """
    draws = (2, *shape)
    boosted = torch._standard_gamma(torch.full(draws, alpha + 1.0, dtype=torch.float64, device=device),
                                    generator=generator)
    # 1 - U lies in (0, 1]: its log is finite.
    uniform = 1 - torch.rand(draws, dtype=torch.float64, device=device, generator=generator)
    log_gamma = boosted.log() + uniform.log() / alpha
    return torch.sigmoid(log_gamma[0] - log_gamma[1]).float()


def _copies(x: torch.Tensor, num_mix: int) -> torch.Tensor:
    """``num_mix`` copies of ``x`` ``(B, *feat)`` as ``(K*B, *feat)``, mix-major: the mixes not
    applied, exactly (mix with coefficient 1 turns a value NaN wherever the partner's is not
    finite, 0 * inf)."""
    return x.unsqueeze(0).expand(num_mix, *x.shape).reshape(num_mix * x.shape[0], *x.shape[1:])


def _permutations(num_mix: int, batch_size: int, device: torch.device, generator) -> torch.Tensor:
    """``(K, B)`` int64, each row an independent uniform permutation of 0..B-1."""
    # Sorting i.i.d. uniforms gives a uniform permutation per row in one launch; float64 keys
    # make ties (which would bias the draw) vanishingly rare.
    keys = torch.rand(num_mix, batch_size, device=device, dtype=torch.float64, generator=generator)
    return keys.argsort(dim=1)


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
    cutmix_alpha: float = 0.0,
    cutmix_minmax: tuple[float, float] | None = None,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> MixupBatch:
    """Samples ``num_mix`` mixes of the batch ``x`` and builds them: mixup (``alpha > 0``),
    CutMix (``cutmix_alpha > 0`` or ``cutmix_minmax``; ``x`` then ``(B, C, H, W)``), or both,
    each mix one or the other, with timm's ``Mixup`` switching options.

    Returns ``MixupBatch(inputs, lam, index)``: ``inputs`` ``(K*B, *feat)`` mix-major, and the
    ``lam``/``index`` the loss needs (a CutMix's ``lam`` area-corrected, as :func:`cutmix`'s). The
    defaults are the paper's M-NDCG setting (K=3, alpha=2, mixup only).

    - ``cutmix_alpha``: CutMix's box size from ``Beta(cutmix_alpha, cutmix_alpha)``
      (:func:`sample_cutmix`); 0 turns CutMix off.
    - ``cutmix_minmax``: ``(low, high)`` with ``0 <= low < high <= 1``: box sides drawn uniformly
      between these fractions of the image's, instead of from ``cutmix_alpha`` (turns CutMix on).
    - ``prob``: the probability that a mix is applied; one that is not keeps ``lam = 1`` (its
      rows are ``x`` itself).
    - ``switch_prob``: with mixup and CutMix both on, the probability that a mix is a CutMix.
    - ``per_sample``: coefficients, boxes and both choices drawn per mix and sample (timm's
      ``mode="elem"``) rather than per mix (timm's ``mode="batch"``).

    Everything is drawn on ``x.device`` from ``generator``, with no host synchronisation. When
    both kinds can occur, every mix is built both ways (``mix`` and ``paste_boxes``) and each row
    taken from the one of its kind: three passes instead of one. A channels-last ``x`` gives
    channels-last mixes when CutMix is on (``paste_boxes`` keeps the layout), contiguous ones
    from mixup alone (``mix``).
    """
    fn = "mixup"
    check.floating(fn, "x", x)
    check.shape(fn, "x", x, "(B, *feat) with B >= 1", x.dim() >= 1 and x.shape[0] >= 1)
    # Checked here too, so that a bad one is named as an argument of this function.
    num_mix = check.integral(fn, "num_mix", num_mix, low=1)
    alpha = check.real(fn, "alpha", alpha)
    per_sample = check.flag(fn, "per_sample", per_sample)
    _sampling_device(fn, x.device, generator)
    cutmix_alpha = check.real(fn, "cutmix_alpha", cutmix_alpha, low=0.0)
    cutmix_minmax = cutmix_minmax_option(fn, "cutmix_minmax", cutmix_minmax)
    prob = check.real(fn, "prob", prob, low=0.0, high=1.0)
    switch_prob = check.real(fn, "switch_prob", switch_prob, low=0.0, high=1.0)
    lam, index = sample_mixup(x.shape[0], num_mix, alpha, per_sample=per_sample, device=x.device, generator=generator)
    with_cutmix = cutmix_alpha > 0 or cutmix_minmax is not None
    if not with_cutmix and alpha <= 0:  # mixing off: every mix is x itself
        return MixupBatch(_copies(x, num_mix), lam, index)
    if not with_cutmix and prob == 1.0:  # the paper's setting: no further draw
        return MixupBatch(mix(x, lam, index, backend=backend), lam, index)

    draws = (num_mix, x.shape[0] if per_sample else 1)
    applied = _coins(prob, draws, x.device, generator)
    if not with_cutmix:
        lam = torch.where(applied, lam, 1.0)
        kept = ~applied.expand(index.shape).reshape(-1, *([1] * (x.dim() - 1)))
        return MixupBatch(torch.where(kept, _copies(x, num_mix), mix(x, lam, index, backend=backend)), lam, index)

    _check_images(fn, x, to_cut=True)
    height, width = x.shape[2:]
    boxes, cut_lam = _cutmix_boxes(height, width, draws, cutmix_alpha, cutmix_minmax, x.device, generator)
    with_mixup = alpha > 0 and switch_prob < 1
    is_cut = _coins(switch_prob if alpha > 0 else 1.0, draws, x.device, generator)
    pasted = applied & is_cut
    boxes = torch.where(pasted[..., None], boxes, 0).expand(*index.shape, 4).contiguous()  # empty: no paste
    mix_lam = torch.where(applied & ~is_cut, lam, 1.0)
    lam = torch.where(pasted, cut_lam, mix_lam).expand(index.shape).contiguous()
    inputs = paste_boxes(x, boxes, index, backend=backend)
    if with_mixup:
        # Each mix (each row) is wholly one kind: the mixups' rows come from mix, the others
        # (CutMixes, and mixes not applied: empty boxes) from paste_boxes, exactly x outside
        # their boxes. (mix with coefficient 1 would turn a pixel NaN wherever the partner's is
        # not finite, 0 * inf.)
        is_mixup = (applied & ~is_cut).expand(index.shape).reshape(-1, *([1] * (x.dim() - 1)))
        mixed = mix(x, mix_lam, index, backend=backend)
        inputs = torch.where(is_mixup, mixed, inputs).contiguous(memory_format=image_memory_format(x))
    return MixupBatch(inputs, lam, index)


def _coins(p: float, shape: tuple[int, int], device: torch.device, generator) -> torch.Tensor:
    """Bool draws of ``shape``, each True with probability ``p`` (none drawn for p = 0 or 1)."""
    if p in (0.0, 1.0):
        return torch.full(shape, p == 1.0, device=device)
    return torch.rand(shape, device=device, generator=generator) < p


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


# --- CutMix: a box of the partner pasted into each sample ----------------------------------------


def sample_cutmix(
    height: int,
    width: int,
    batch_size: int,
    num_mix: int,
    alpha: float,
    *,
    minmax: tuple[float, float] | None = None,
    per_sample: bool = False,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draws CutMix boxes, their mixing coefficients and partners for ``num_mix`` mixes of a batch
    of ``height x width`` images.

    Per mix (or, with ``per_sample=True``, per mix and sample) the box is CutMix's: ``lam0 ~
    Beta(alpha, alpha)``, a cut of ``floor(H * sqrt(1 - lam0))`` by ``floor(W * sqrt(1 - lam0))``
    centred on a uniform pixel ``(cy, cx)``, rows ``[cy - cut_h // 2, cy + cut_h // 2)`` and
    columns likewise, clipped to the image. Returns ``(boxes, lam, index)``: ``boxes`` int64
    ``(K, B, 4)`` as (top, bottom, left, right), half-open; ``lam`` ``(K, B)`` float32, the share
    of the image the sample keeps after clipping, ``1 - box_area / (H * W)``; ``index`` ``(K, B)``
    int64, K uniform permutations (as :func:`sample_mixup` draws them).

    With ``minmax = (low, high)`` (timm's ``cutmix_minmax``, ``0 <= low < high <= 1``) the box's
    height and width are instead drawn uniformly from ``[floor(H * low), floor(H * high))`` and
    likewise for the width (at least one value each), and its place uniformly among those inside
    the image; ``alpha`` is not used then.

    Drawn on ``device`` (default: the generator's device, else the current default device) from
    ``generator`` when given, with no host synchronisation; a seeded generator reproduces the draw.
    """
    fn = "sample_cutmix"
    height = check.integral(fn, "height", height, low=1)
    width = check.integral(fn, "width", width, low=1)
    batch_size = check.integral(fn, "batch_size", batch_size, low=1)
    num_mix = check.integral(fn, "num_mix", num_mix, low=1)
    minmax = cutmix_minmax_option(fn, "minmax", minmax)
    alpha = _cutmix_alpha(fn, alpha) if minmax is None else check.real(fn, "alpha", alpha)
    per_sample = check.flag(fn, "per_sample", per_sample)
    device = _sampling_device(fn, device, generator)

    shape = (num_mix, batch_size if per_sample else 1)
    boxes, lam = _cutmix_boxes(height, width, shape, alpha, minmax, device, generator)
    return (boxes.expand(num_mix, batch_size, 4).contiguous(), lam.expand(num_mix, batch_size).contiguous(),
            _permutations(num_mix, batch_size, device, generator))


def _cutmix_boxes(height: int, width: int, shape: tuple[int, int], alpha: float, minmax, device, generator):
    """``(boxes, lam)`` of ``shape`` CutMix draws (see :func:`sample_cutmix`): int64 ``(*shape, 4)``
    and the float32 area-corrected coefficients."""
    if minmax is None:
        cut_ratio = (1 - _beta(alpha, shape, device, generator).double()).sqrt()
        rows = _box_sides(height, cut_ratio, torch.randint(height, shape, device=device, generator=generator))
        cols = _box_sides(width, cut_ratio, torch.randint(width, shape, device=device, generator=generator))
    else:
        rows = _minmax_sides(height, minmax, shape, device, generator)
        cols = _minmax_sides(width, minmax, shape, device, generator)
    boxes = torch.stack([*rows, *cols], dim=-1)
    area = (boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2])
    return boxes, (1 - area.double() / (height * width)).float()


def _minmax_sides(size: int, minmax: tuple[float, float], shape, device, generator):
    """First and one-past-last row (or column) of boxes whose side is uniform in
    ``[floor(size * low), floor(size * high))`` (at least one value), placed uniformly inside."""
    low = int(size * minmax[0])
    high = max(int(size * minmax[1]), low + 1)
    uniform = torch.rand((2, *shape), device=device, dtype=torch.float64, generator=generator)
    cut = low + (uniform[0] * (high - low)).long()
    start = (uniform[1] * (size - cut + 1)).long()
    return start, start + cut


def cutmix_minmax_option(fn: str, name: str, value) -> tuple[float, float] | None:
    """None, or a checked ``(low, high)`` with ``0 <= low < high <= 1``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"{fn}: {name} must be None or a pair (low, high) of numbers, got {value!r}")
    low = check.real(fn, f"{name}[0]", value[0], low=0.0, high=1.0)
    high = check.real(fn, f"{name}[1]", value[1], low=0.0, high=1.0)
    if not low < high:
        raise ValueError(f"{fn}: {name} must have low < high, got {tuple(value)}")
    return low, high


def _box_sides(size: int, cut_ratio: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and one-past-last row (or column) of boxes of ``floor(size * cut_ratio)`` around
    ``centre``, clipped to ``[0, size]``: half the cut on either side, as CutMix's rand_bbox."""
    half = (size * cut_ratio).floor().long() // 2
    return (centre - half).clamp(0, size), (centre + half).clamp(0, size)


def paste_boxes(
    x: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, *, validate: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """``out[k*B + b]`` is ``x[b]`` with the box ``boxes[k, b]`` pasted from ``x[index[k, b]]``:
    the K CutMix mixes of the images ``x`` ``(B, C, H, W)``, shape ``(K*B, C, H, W)``.

    ``boxes`` int64 ``(K, B, 4)`` holds (top, bottom, left, right), rows ``[top, bottom)`` and
    columns ``[left, right)``; only the part of a box inside the image is pasted, so an empty
    box leaves ``x[b]`` as it is. ``index`` is ``(K, B)``. Differentiable in ``x``. A
    channels-last ``x`` gives a channels-last result; any other layout a contiguous one.
    ``validate=True`` (or ``RANKMIXUP_VALIDATE=1``) also checks the values, synchronising with
    the device: every box within the image, every row of ``index`` a permutation.
    """
    fn = "paste_boxes"
    _check_images(fn, x)
    index = check.pairing_index(fn, index, batch=x.shape[0])
    boxes = check.boxes(fn, boxes, num_mix=index.shape[0], batch=x.shape[0])
    check.same_device(fn, "x", x, boxes=boxes, index=index)
    if check.validation_requested(check.flag(fn, "validate", validate)):
        check.validate_values(fn, index=index, boxes=boxes, image_size=x.shape[2:])
    return resolve(fn, backend, x.device).paste_boxes(x, boxes, index)


def cutmix(
    x: torch.Tensor,
    num_mix: int = 1,
    alpha: float = 1.0,
    *,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> MixupBatch:
    """Samples ``num_mix`` CutMix mixes of the images ``x`` ``(B, C, H, W)`` (:func:`sample_cutmix`)
    and builds them (:func:`paste_boxes`).

    Returns ``MixupBatch(inputs, lam, index)``: ``inputs`` ``(K*B, C, H, W)`` mix-major, in
    ``x``'s memory format when that is channels-last; ``lam`` the area-corrected share of
    ``x[b]`` in each mix, which the loss takes as mixup's ``lam``.
    """
    fn = "cutmix"
    _check_images(fn, x, to_cut=True)
    # Checked here too, so that a bad one is named as an argument of this function.
    num_mix = check.integral(fn, "num_mix", num_mix, low=1)
    alpha = _cutmix_alpha(fn, alpha)
    per_sample = check.flag(fn, "per_sample", per_sample)
    _sampling_device(fn, x.device, generator)
    batch, _, height, width = x.shape
    boxes, lam, index = sample_cutmix(height, width, batch, num_mix, alpha, per_sample=per_sample, device=x.device,
                                      generator=generator)
    return MixupBatch(paste_boxes(x, boxes, index, backend=backend), lam, index)


def _cutmix_alpha(fn: str, alpha) -> float:
    """A checked CutMix ``alpha``: Beta(alpha, alpha) needs alpha > 0 (no "off" value, unlike mixup's)."""
    alpha = check.real(fn, "alpha", alpha)
    if alpha <= 0:
        raise ValueError(f"{fn}: alpha must be > 0, got {alpha}")
    return alpha


def _check_images(fn: str, x, *, to_cut: bool = False) -> None:
    """``x`` floating ``(B, C, H, W)``, B >= 1; ``to_cut``: boxes will be drawn in it, each
    around one of its pixels, so H, W >= 1 too (pasting boxes into empty images is fine)."""
    check.floating(fn, "x", x)
    images = x.dim() == 4 and x.shape[0] >= 1
    if to_cut:
        check.shape(fn, "x", x, "(B, C, H, W) with B, H, W >= 1", images and x.shape[2] >= 1 and x.shape[3] >= 1)
    else:
        check.shape(fn, "x", x, "(B, C, H, W) with B >= 1", images)
