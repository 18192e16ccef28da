"""Loads the compiled extension ``rankmixup_ops._C`` (built by setup.py from csrc/).

Importing ``_C`` registers the ``torch.ops.rankmixup`` operators with their C++ kernels; the
backend objects built on them live in :mod:`rankmixup_ops.compiled`.
"""

from __future__ import annotations

import functools

from ._types import BackendUnavailable

BUILD_HINT = "build it with `make setup`, or `pip install --no-build-isolation -e .` in the source tree"


@functools.cache
def extension():
    """The ``_C`` module; raises BackendUnavailable saying why when it cannot be loaded."""
    try:
        from . import _C
    except ModuleNotFoundError:
        raise BackendUnavailable(f"the compiled extension rankmixup_ops._C is not built; {BUILD_HINT}") from None
    except ImportError as error:  # built, but against another torch (undefined symbols, ABI)
        raise BackendUnavailable(f"the compiled extension rankmixup_ops._C does not load ({error}); rebuild it: {BUILD_HINT}") from None
    return _C


def build_info() -> dict:
    """What the compiled extension contains: ``backends`` (kernels compiled, e.g. ``["cpu"]``),
    ``cuda_arch_list``, ``openmp``, ``torch_version``, ``compiler``; and ``cpu_row_loops``, the
    CPU row loops this process runs: ``"avx512 packs"`` on an AVX-512 (x86-64-v4) CPU with a GCC
    build, else ``"openmp simd"`` (also under ``ATEN_CPU_CAPABILITY=avx2`` or ``default``, read
    once, at the first kernel call)."""
    return extension().build_info()
