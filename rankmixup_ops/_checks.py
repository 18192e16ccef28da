"""Argument checking shared by every public function (SPEC §9).

Every check here reads only tensor metadata (shape, dtype, device) and so costs no host
synchronisation; the checks that must read tensor *values* (label range, permutations, lam
range) live in :func:`validate_values` and run only when asked (``validate=True`` or the
environment variable ``RANKMIXUP_VALIDATE=1``).

Messages name the calling function and the argument: ``"rankmixup_loss: targets must be ..."``.

The tensor checks run on every call of the public functions (the loss's scalar option checks
once per distinct set of values: ``functional.loss_options``), where at the paper's shapes the
kernels take tens of microseconds; so each one makes the common case (an int64 or floating
tensor, a Python float or int) a single cheap test and builds messages only on failure.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

import torch


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return f"{type(value).__name__} {value!r}"


def tensor(fn: str, name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {_describe(value)}")
    return value


def floating(fn: str, name: str, value) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and value.dtype in FLOAT_DTYPES:
        return value
    tensor(fn, name, value)
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: {name} must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got {_describe(value)}"
        )
    return value


def integer(fn: str, name: str, value) -> torch.Tensor:
    """An integer tensor (bool excluded), returned as int64."""
    if isinstance(value, torch.Tensor) and value.dtype == torch.int64:
        return value
    tensor(fn, name, value)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{fn}: {name} must be an integer tensor, got {_describe(value)}")
    return value.long()


def shape(fn: str, name: str, value: torch.Tensor, expected: str, ok: bool) -> None:
    if not ok:
        raise shape_error(fn, name, value, expected)


def shape_error(fn: str, name: str, value: torch.Tensor, expected: str) -> ValueError:
    """The error :func:`shape` raises, for callers that format ``expected`` only on failure."""
    return ValueError(f"{fn}: {name} must have shape {expected}, got {_describe(value)}")


def same_device(fn: str, reference_name: str, reference: torch.Tensor, **others) -> None:
    device = reference.device
    for name, value in others.items():
        if value.device != device:
            raise ValueError(
                f"{fn}: {name} is on {value.device} but {reference_name} is on "
                f"{device}; all tensors must be on one device"
            )


def choice(fn: str, name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def real(fn: str, name: str, value, *, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite Python/NumPy real in ``[low, high]``, returned as float."""
    if type(value) is not float:  # a Python float, the common case, needs no ABC check
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{fn}: {name} must be a real number, got {_describe(value)}")
        value = float(value)
    if not abs(value) < math.inf:  # not math.isfinite: torch.compile cannot trace it on a symbolic float
        raise ValueError(f"{fn}: {name} must be finite, got {value}")
    if not low <= value <= high:
        raise ValueError(f"{fn}: {name} must be in [{low}, {high}], got {value}")
    return value


def integral(fn: str, name: str, value, *, low: int | None = None) -> int:
    """A Python integer, ``>= low`` when ``low`` is given."""
    if type(value) is not int:  # a Python int, the common case, needs no ABC check
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{fn}: {name} must be an int, got {_describe(value)}")
        value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{fn}: {name} must be >= {low}, got {value}")
    return value


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def int64(fn: str, name: str, value) -> int:
    """A Python integer that fits in int64, as the operators' ``int`` arguments must."""
    value = integral(fn, name, value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{fn}: {name} must fit in int64, got {value}")
    return value


def flag(fn: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {_describe(value)}")
    return value


def mixing(fn: str, lam, index, *, batch: int | None, device: torch.device, dtype: torch.dtype = torch.float32):
    """Checks ``index`` ``(K, B)`` and ``lam`` ``(K,)`` or ``(K, B)``.

    ``lam`` may also be a Python number or sequence (as the reference code passes it).
    Returns ``(lam, index)`` as ``(K, B)`` in ``dtype`` (the accumulation dtype of the data it
    mixes or scores: float64 for float64, else float32) and int64 ``(K, B)``.
    """
    index = pairing_index(fn, index, batch=batch)
    num_mix, index_batch = index.shape
    if not isinstance(lam, torch.Tensor):
        lam = _lam_tensor(fn, lam, device, dtype)
    floating(fn, "lam", lam)
    lam_shape = lam.shape
    if lam_shape != (num_mix, index_batch) and lam_shape != (num_mix,):
        raise shape_error(fn, "lam", lam, f"({num_mix},) or ({num_mix}, {index_batch}) to match index")
    if lam.device != index.device:  # tested first: building same_device's keyword dict costs more
        same_device(fn, "index", index, lam=lam)
    if lam.dtype != dtype:
        lam = lam.to(dtype)
    if len(lam_shape) == 1:
        lam = lam.unsqueeze(1).expand(num_mix, index_batch)
    return lam, index


def pairing_index(fn: str, index, *, batch: int | None) -> torch.Tensor:
    """Checks ``index`` ``(K, B)``, K >= 1, B >= 1 (and ``batch`` when given); returns it as int64."""
    index = integer(fn, "index", index)
    if index.dim() != 2 or index.numel() == 0:
        raise shape_error(fn, "index", index, "(K, B) with K >= 1 and B >= 1")
    if batch is not None and index.shape[1] != batch:
        raise shape_error(fn, "index", index, f"(K, {batch}) to match the batch")
    return index


def boxes(fn: str, value, *, num_mix: int, batch: int) -> torch.Tensor:
    """Checks CutMix ``boxes`` ``(K, B, 4)`` of an integer dtype; returns them as int64."""
    value = integer(fn, "boxes", value)
    if value.shape != (num_mix, batch, 4):
        raise shape_error(fn, "boxes", value, f"({num_mix}, {batch}, 4) (top, bottom, left, right) to match index")
    return value


def _lam_tensor(fn: str, lam, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A Python number or sequence of numbers as a 1-D tensor of ``dtype`` on ``device``."""
    if isinstance(lam, (bool, str)) or not isinstance(lam, (numbers.Real, Sequence)):
        raise TypeError(f"{fn}: lam must be a tensor, a number or a sequence of numbers, got {_describe(lam)}")
    try:
        return torch.as_tensor(lam, dtype=dtype, device=device).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{fn}: lam must be a tensor, a number or a sequence of numbers ({error})") from None


def validation_requested(validate: bool) -> bool:
    return validate or os.environ.get("RANKMIXUP_VALIDATE", "0") not in ("", "0")


def validate_values(fn: str, *, lam=None, index=None, targets=None, num_classes=None, ignore_index=None, boxes=None,
                    image_size=None):
    """The checks that read tensor values, and so synchronise with the device."""
    if lam is not None and not bool(((lam >= 0) & (lam <= 1)).all()):
        raise ValueError(f"{fn}: lam must lie in [0, 1] (validate=True found a value outside)")
    if index is not None:
        expected = torch.arange(index.shape[1], device=index.device)
        if not bool((index.sort(dim=1).values == expected).all()):
            raise ValueError(f"{fn}: every row of index must be a permutation of 0..B-1 (validate=True)")
    if targets is not None:
        in_range = (targets >= 0) & (targets < num_classes)
        if ignore_index is not None:
            in_range |= targets == ignore_index
        if not bool(in_range.all()):
            raise ValueError(
                f"{fn}: targets must lie in [0, {num_classes}) or equal ignore_index={ignore_index} "
                "(validate=True found one outside)"
            )
    if boxes is not None:
        height, width = image_size
        top, bottom, left, right = boxes.unbind(-1)
        inside = (0 <= top) & (top <= bottom) & (bottom <= height) & (0 <= left) & (left <= right) & (right <= width)
        if not bool(inside.all()):
            raise ValueError(
                f"{fn}: every box must satisfy 0 <= top <= bottom <= {height} and 0 <= left <= right <= {width} "
                "(validate=True found one that does not)"
            )
