"""The Triton backend: the fused loss and the mix as ``torch.library.triton_op`` operators
(``rankmixup_triton::fused_loss``, ``::fused_loss_backward``, ``::reduce_loss``, ``::mix``,
``::mix_backward``, ``::paste_boxes``, ``::paste_boxes_backward``), which torch.compile traces
into, called directly in eager mode (eager.py).

Runs on CUDA tensors. CPU tensors run too when ``TRITON_INTERPRET=1`` was set before this
module was imported — Triton's interpreter, slow, meant for tests on machines without a GPU.
"""

import torch

from ..reference import soft_relevance
from . import eager
from .cutmix import paste_boxes as _paste_boxes_op
from .launch import interpreted
from .loss import rankmixup_loss
from .mix import _mix_kernel
from .mix import mix as _mix_op

_INTERPRETED = interpreted(_mix_kernel)


class TritonBackend:
    name = "triton"
    eager = None

    @staticmethod
    def unsupported(device: torch.device) -> str | None:
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            if _INTERPRETED:
                return None
            return (
                "Triton kernels run on CUDA tensors; CPU tensors only under Triton's interpreter "
                "(set TRITON_INTERPRET=1 before importing rankmixup_ops.triton; slow, for tests)"
            )
        return f"Triton kernels run on CUDA tensors, not {device.type}"

    loss = staticmethod(rankmixup_loss)

    @staticmethod
    def mix(x, lam, index):
        return eager.call(_mix_op, x, lam, index)

    @staticmethod
    def paste_boxes(x, boxes, index):
        return eager.call(_paste_boxes_op, x, boxes, index)

    # The drop-in classes' relevance: a row max over their soft targets, in PyTorch.
    soft_relevance = staticmethod(soft_relevance)


BACKEND = TritonBackend()


def load_backend(name: str) -> TritonBackend:
    """The Triton backend (``name`` is ``"triton"``); importing this module needs Triton."""
    return BACKEND
