"""Test-session setup shared by every test module."""

import os

import torch

# Without a GPU, Triton kernels can only run under its interpreter, which Triton reads when a
# kernel is defined: set it before any test module imports the Triton backend.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
