"""How close a backend must come to the float64 reference computed on the same inputs (SPEC §6, §8).

Every backend accumulates in float32 (float64 for float64 inputs), returns the loss and its parts
in that accumulation dtype and the gradients in the input's dtype. So the loss may differ from
the exact value by float32 arithmetic error, and a gradient by that plus its rounding to the
input's dtype. Shared by the property and large-size tests.
"""

from __future__ import annotations

import torch

from rankmixup_ops.reference import accumulation_dtype

# The arithmetic error of the accumulation dtype, relative and absolute (gradients of a mean
# over a few samples are O(1), so an absolute floor of this size only matters near zero).
_ARITHMETIC = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-7, atol=1e-9)}


def output_tolerance(dtype: torch.dtype) -> dict:
    """rtol/atol for the loss, ce and rank of inputs of ``dtype`` (computed in float32 or float64)."""
    return dict(_ARITHMETIC[accumulation_dtype(dtype)])


def gradient_tolerance(dtype: torch.dtype) -> dict:
    """rtol/atol for a gradient (or any result, such as a mix) returned in ``dtype``: the
    arithmetic error, then two roundings.

    Two, each within eps relative whatever the rounding mode: the Triton backend stores the
    per-sample gradient in the input's dtype in the forward and rounds it again once scaled in
    the backward, and Triton's interpreter converts float32 to bfloat16 by truncation.
    """
    tolerance = output_tolerance(dtype)
    tolerance["rtol"] = max(tolerance["rtol"], 2 * torch.finfo(dtype).eps)
    return tolerance
