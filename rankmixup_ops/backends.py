"""Backend registry: which implementations this install has, and which one a call uses.

A backend is an object with the methods of :class:`Backend`, over *checked* arguments (see
:mod:`rankmixup_ops.functional`). Each lives in a module of its own, which provides it the same
way: ``load_backend(name) -> Backend``, raising :class:`BackendUnavailable` with the reason
when it cannot run in this install (:data:`_MODULES`). ``reference`` is always there.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple, Protocol

import torch

from ._types import BackendUnavailable, LossOptions, LossOutput

BACKENDS = ("reference", "cpu", "cuda", "triton")


class Backend(Protocol):
    """What every backend provides (the contract of reference.py, compiled.py and triton/)."""

    name: str
    # The native module whose eager_loss and eager_compat_loss run a common loss call whole (see
    # csrc/eager_loss.h and EagerFrontEnd), or None. Only the compiled backends have one.
    eager: ModuleType | None

    def unsupported(self, device: torch.device) -> str | None:
        """Why the backend cannot run on ``device``, or None when it can."""

    def soft_relevance(self, soft_targets: torch.Tensor, num_mix: int, dtype: torch.dtype) -> torch.Tensor:
        """``rel`` (K, B) in ``dtype`` read off mixed soft targets (K*B, C): see
        :func:`rankmixup_ops.reference.soft_relevance` (the drop-in classes' relevance)."""

    def loss(self, logits: torch.Tensor, mix_logits: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor,
             index: torch.Tensor | None, options: LossOptions) -> LossOutput:
        """The loss over ``logits`` (B, C), ``mix_logits`` (K*B, C) and int64 ``targets`` (B,), each
        mix's relevance (SPEC §3) derived from ``lam`` (K, B) and its partners, int64 ``index``
        (K, B); with ``index`` None, ``lam`` holds the relevances themselves. Not differentiable
        in ``lam``."""

    def mix(self, x: torch.Tensor, lam: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``(K*B, *feat)`` mixes of ``x`` (B, *feat) with ``lam`` (K, B) in x's accumulation dtype
        and int64 ``index`` (K, B)."""

    def paste_boxes(self, x: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``(K*B, C, H, W)`` CutMix mixes of the images ``x`` (B, C, H, W): int64 ``boxes`` (K, B, 4)
        pasted from the partners of int64 ``index`` (K, B); channels-last for a channels-last ``x``
        (:func:`rankmixup_ops._types.image_memory_format`)."""


class BackendStatus(NamedTuple):
    available: bool
    reason: str


# The module that provides each backend, and what to do when it cannot be imported.
_MODULES = {
    "reference": ("reference", "it is part of the package"),
    "cpu": ("compiled", "rebuild the package"),
    "cuda": ("compiled", "rebuild the package"),
    "triton": ("triton", "pip install triton (CUDA GPUs; CPU tensors only under TRITON_INTERPRET=1)"),
}


def _import_backend(name: str) -> Backend:
    """``rankmixup_ops.<module>.load_backend(name)``; an ImportError (a missing dependency)
    becomes the reason it is unavailable."""
    module, remedy = _MODULES[name]
    try:
        return importlib.import_module(f"{__package__}.{module}").load_backend(name)
    except ImportError as error:
        raise BackendUnavailable(f"the {name} backend cannot be imported ({error}); {remedy}") from error


# The order `auto` tries backends in, per device type, fastest first.
_AUTO_ORDER = {"cuda": ("triton", "cuda"), "cpu": ("cpu",)}


# Loaded backends (or the BackendUnavailable each raised), filled on first use.
_LOADED: dict[str, Backend | BackendUnavailable] = {}


def _load(name: str) -> Backend | BackendUnavailable:
    """The backend object, or the BackendUnavailable it raised (cached either way)."""
    if name not in _LOADED:
        try:
            _LOADED[name] = _import_backend(name)
        except BackendUnavailable as error:
            _LOADED[name] = error
    return _LOADED[name]


def available_backends() -> dict[str, BackendStatus]:
    """Every backend this package knows, whether this install has it (and why not if not), and
    for an installed one, which tensors it runs on.

    >>> available_backends()["reference"]
    BackendStatus(available=True, reason='pure PyTorch, always available')
    """
    statuses = {}
    for name in BACKENDS:
        loaded = _load(name)
        if isinstance(loaded, BackendUnavailable):
            statuses[name] = BackendStatus(False, str(loaded))
        elif name == "reference":
            statuses[name] = BackendStatus(True, "pure PyTorch, always available")
        else:
            statuses[name] = BackendStatus(True, _serves(loaded))
    return statuses


def _serves(backend) -> str:
    """'installed; runs on cuda tensors (no CUDA device is visible)', and the like."""
    devices = [kind for kind in ("cpu", "cuda") if backend.unsupported(torch.device(kind)) is None]
    reason = f"installed; runs on {' and '.join(devices) or 'no'} tensors"
    if "cuda" in devices and not torch.cuda.is_available():
        reason += " (no CUDA device is visible)"
    return reason


@functools.cache
def _warn_fallback(device_type: str) -> None:
    """Said once per device type per process."""
    reasons = "; ".join(str(_load(name)) for name in _AUTO_ORDER.get(device_type, ()))
    warnings.warn(
        f"rankmixup_ops: no compiled backend for {device_type} tensors, using the pure-PyTorch "
        f"reference ({reasons or 'none exists for this device'}). See available_backends().",
        RuntimeWarning,
        stacklevel=5,
    )


def check_name(fn: str, backend) -> str:
    """``backend`` if it is ``"auto"`` or a backend's name (installed or not), else ValueError."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"{fn}: backend must be 'auto' or one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backend


def resolve(fn: str, backend: str, device: torch.device):
    """The backend object that will run a call on ``device``; raises ValueError for unknown
    names and BackendUnavailable for a named backend that cannot run here."""
    return _LOADED[_choose(fn, backend, device)]


# The name each (backend, device) resolved to. Loaded backends never change, so neither does
# the choice; remembering it spares every call the search.
_CHOSEN: dict[tuple[str, torch.device], str] = {}


# Choosing imports modules and may warn, which torch.compile cannot trace; its answer depends
# only on these constant arguments, so under torch.compile it runs once, at trace time.
@torch.compiler.assume_constant_result
def _choose(fn: str, backend: str, device: torch.device) -> str:
    check_name(fn, backend)  # before the lookup: backend may be unhashable
    key = (backend, device)
    if key not in _CHOSEN:
        _CHOSEN[key] = _pick(fn, backend, device)
    return _CHOSEN[key]


def _usable(name: str, device: torch.device) -> bool:
    loaded = _load(name)
    return not isinstance(loaded, BackendUnavailable) and loaded.unsupported(device) is None


def _pick(fn: str, backend: str, device: torch.device) -> str:
    if backend == "auto":
        for name in _AUTO_ORDER.get(device.type, ()):
            if _usable(name, device):
                return name
        _warn_fallback(device.type)
        return _load("reference").name
    loaded = _load(backend)
    if isinstance(loaded, BackendUnavailable):
        raise BackendUnavailable(f"{fn}: backend {backend!r} is not available: {loaded}")
    reason = loaded.unsupported(device)
    if reason is not None:
        raise ValueError(f"{fn}: backend {backend!r} cannot run on {device}: {reason}")
    return backend


class EagerFrontEnd(NamedTuple):
    """The native front ends of the loss (csrc/eager_loss.h) for calls naming one backend, bound
    to the device types on which those calls run a backend that has them. Each takes a call's
    arguments as given (and the checked LossOptions) and returns ``(loss, ce, rank)`` (a
    LossOutput from ``loss``, a plain tuple from ``compat_loss``, as the drop-ins return), or
    None for a call it does not take whole, which the checked Python path then takes."""

    loss: Callable  # functional.loss_call's: (logits, mix_logits, targets, lam, index, options, validate)
    compat_loss: Callable  # the drop-in classes': (inputs, targets, mixup, target_re, lam, num_classes, options)


# The eager front ends of each backend name (eager_front_end), filled on first use.
_EAGER: dict[str, EagerFrontEnd | None] = {}


def eager_front_end(backend) -> EagerFrontEnd | None:
    """The native front ends for calls naming ``backend``, or None where those calls run no
    backend that has them (an unknown name included: the checked path refuses it), and under
    torch.compile, which traces the checked path instead."""
    if type(backend) is not str or torch.compiler.is_compiling():
        return None
    if backend not in _EAGER:
        _EAGER[backend] = _bind_eager(backend)
    return _EAGER[backend]


def _bind_eager(backend: str) -> EagerFrontEnd | None:
    native, serves = None, {"cpu": False, "cuda": False}
    # No CUDA tensor exists without CUDA: loading the backends of "cuda" (Triton first) would
    # only cost the first call an import.
    for device_type in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        device = torch.device(device_type)
        names = _AUTO_ORDER.get(device_type, ()) if backend == "auto" else (backend,) if backend in BACKENDS else ()
        chosen = next((name for name in names if _usable(name, device)), None)
        serves[device_type] = chosen is not None and _load(chosen).eager is not None
        if serves[device_type]:
            native = _load(chosen).eager
    if native is None:
        return None
    flags = (serves["cpu"], serves["cuda"])
    return EagerFrontEnd(functools.partial(native.eager_loss, LossOutput, *flags),
                         functools.partial(native.eager_compat_loss, *flags))
