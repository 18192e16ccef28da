"""How the Triton backend launches its kernels.

A compiled kernel is launched through ``torch.library.wrap_triton``, so that torch.compile and
torch.export trace the launch into their graphs, except in an op's direct eager call
(:func:`direct`). A kernel that Triton's interpreter runs
(``TRITON_INTERPRET=1``, the CPU tests) is launched as it is: torch 2.11 refuses to wrap one
("wrap_triton only works on functions annotated with triton.jit"), and no torch can trace one
(fake tensors have no data for the interpreter to run on), so wrapping would add nothing.
"""

import contextlib
import threading

import triton
from torch.library import wrap_triton


def interpreted(kernel) -> bool:
    """Whether Triton's interpreter runs ``kernel``: Triton reads TRITON_INTERPRET when a kernel
    is decorated, and then makes an ``InterpretedFunction`` instead of a ``JITFunction``."""
    return not isinstance(kernel, triton.runtime.JITFunction)


def block_config(size: int, max_block: int, max_warps: int = 8) -> dict:
    """``BLOCK`` and ``num_warps`` of a one-dimensional tile over ``size`` elements: the next power
    of two up to ``max_block``, and a warp per 256 of its lanes (1 to ``max_warps``)."""
    block = static(min(triton.next_power_of_2(max(size, 1)), max_block))
    return dict(BLOCK=block, num_warps=max(1, min(max_warps, block // 256)))


def static(value) -> int:
    """A launch configuration's ``value`` as a Python int. Traced by torch.compile with dynamic
    shapes, a size is a SymInt, and so is what is computed from it; a SymInt ``num_warps`` cannot
    be written into Inductor's generated launcher (it fails there). ``int`` guards the graph on
    this value, which wrap_triton does for a constexpr tile size anyway."""
    return int(value)


def launcher(kernel):
    """``kernel`` ready for ``[grid](...)``: traceable when compiled; as it is when interpreted
    or inside :func:`direct`."""
    return kernel if interpreted(kernel) or getattr(_launches, "direct", False) else wrap_triton(kernel)


# Per thread: another thread may be tracing an op meanwhile.
_launches = threading.local()


@contextlib.contextmanager
def direct():
    """Within it, kernels launch as they are rather than through wrap_triton, whose launch in
    eager mode is a higher-order op's dispatch (the eager ops: eager.py; torch.library's
    triton_op does the same for the op's own eager call)."""
    outer = getattr(_launches, "direct", False)
    _launches.direct = True
    try:
        yield
    finally:
        _launches.direct = outer
