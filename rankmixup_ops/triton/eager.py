"""The Triton ops, and the same ops called directly in eager mode.

Each op of this backend is a ``torch.library.triton_op``, which torch.compile and torch.export
trace into, opcheck checks and ``__torch_dispatch__`` modes see. Called in eager mode, such an
op goes through torch.library: the dispatcher, the autograd function register_autograd
generates, a frame with Dynamo disabled, the schema's defaults filled in, wrap_triton's launch.
Timed on the 2-core CPU with the kernel launches stubbed (so, what a GPU's host runs too),
that came to about 80 us of a fused_loss call whose body does 24 us of work (docs/DESIGN.md).

:func:`triton_op` registers the op and keeps, beside it, its body with its own setup_context
and backward as a ``torch.autograd.Function`` whose forward launches the kernels as they are.
:func:`call` takes that direct form for plain tensors in plain eager mode: not under
torch.compile, torch.export or torch.jit.trace, with no ``__torch_function__`` mode (so not
under ``torch.device(...)`` or a default device either) nor ``__torch_dispatch__`` mode active
(fake and functional tensors, make_fx, which see a torch.library op but not a direct launch),
no torch.func transform, and no tensor subclass, nn.Parameter included, among the arguments
(the rule of compiled._entry, for the C++ operators, plus the dispatch modes, the transforms
and the tracer). Everything else gets the op. Both forms run the same functions, so they
compute the same thing, gradients included; forward-mode AD, which neither implements, the
direct form refuses ("You must implement the jvp function") where the op gives no tangent.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.library import CustomOpDef
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import launch

# Each op's direct form (triton_op).
_DIRECT: dict[CustomOpDef, Callable] = {}


def triton_op(name: str, body: Callable, *, setup_context: Callable | None = None,
              backward: Callable | None = None) -> CustomOpDef:
    """``torch.library.triton_op(name)`` over ``body`` (which mutates nothing), with its
    autograd when ``backward`` is given, and its direct form for :func:`call`."""
    op = torch.library.triton_op(name, mutates_args=())(body)
    if backward is None:
        _DIRECT[op] = _launching(body)
    else:
        op.register_autograd(backward, setup_context=setup_context)
        _DIRECT[op] = _autograd_function(name, body, setup_context, backward)
    return op


def call(op: CustomOpDef, *args):
    """``op(*args)``, run directly where that is the same call (see the module's docstring).
    ``args`` must be all of the op's arguments, in order: setup_context and backward see them
    as the op would hand them over."""
    if torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled() or torch.jit.is_tracing():
        return op(*args)
    # torch.func's transforms (vmap batches an op by a loop; the direct form's old-style
    # autograd.Function is refused under them) and __torch_dispatch__ modes.
    if torch._C._are_functorch_transforms_active() or _get_current_dispatch_mode() is not None:
        return op(*args)
    for arg in args:  # a loop, not all(): no generator object per call
        if isinstance(arg, torch.Tensor) and type(arg) is not torch.Tensor:
            return op(*args)
    return _DIRECT[op](*args)


def _launching(body: Callable) -> Callable:
    def run(*args):
        with launch.direct():
            return body(*args)

    return run


def _autograd_function(name: str, body: Callable, setup_context: Callable, backward: Callable) -> Callable:
    run = _launching(body)

    def forward(ctx, *args):
        output = run(*args)
        setup_context(ctx, args, output)
        return output

    function = type(f"Direct_{name.replace('::', '_')}", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward)})
    return function.apply
