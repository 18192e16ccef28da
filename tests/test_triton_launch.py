"""How the Triton backend launches its kernels (rankmixup_ops/triton/launch.py), on every tested
torch: an interpreted kernel directly (torch 2.11's ``wrap_triton`` refuses one), a compiled
one through ``wrap_triton``, so that tracing puts the launch itself into the graph, as
torch.compile needs on a GPU. Tracing needs no GPU, so both paths are tested here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from rankmixup_ops.triton import launch, loss, mix, reduce  # noqa: E402

KERNELS = [loss._fused_loss_kernel, loss._scale_rows_kernel, reduce._reduce_kernel, mix._mix_kernel,
           mix._mix_backward_kernel]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernels are compiled, not interpreted")
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda kernel: kernel.__name__)
def test_interpreted_kernels_are_launched_directly(kernel):
    assert launch.interpreted(kernel)
    assert launch.launcher(kernel) is kernel


# Functionalised fake tracing, as torch.compile's AOT autograd does it: each triton_op's body
# runs with fake tensors and its launch becomes a triton_kernel_wrapper_functional node.
TRACE_EVERY_OP = textwrap.dedent(
    """
    import torch
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx
    from rankmixup_ops.triton import launch, loss, mix, reduce

    assert not launch.interpreted(loss._fused_loss_kernel)
    B, K, C = 4, 2, 10
    x, lam, index = torch.randn(B, 3, 5), torch.rand(K, B), torch.stack([torch.randperm(B)] * K)
    calls = {
        "fused_loss": (loss.fused_loss, torch.randn(B, C), torch.randn(K * B, C), torch.randint(0, C, (B,)),
                       lam, index, "mndcg", "logit", -100, 1.0, 0.1, 2.0, 0.0, True, 0),
        "fused_loss_backward": (loss.fused_loss_backward, torch.randn((K + 1) * B, C), torch.rand(B)),
        "reduce_loss": (reduce.reduce_loss, torch.rand(B), torch.rand(B), torch.rand(B), torch.randint(0, C, (B,)),
                        -100, True),
        "mix": (mix.mix, x, lam, index),
        "mix_backward": (mix.mix_backward, torch.randn(K * B, 3, 5), lam, index),
    }
    for name, (op, *args) in calls.items():
        graph = make_fx(dispatch_functionalize(op), tracing_mode="fake")(*args).code
        print(name, graph.count("triton_kernel_wrapper_functional("))
    """
)


def test_compiled_kernels_are_traced_into_the_graph():
    environ = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", TRACE_EVERY_OP], env=environ, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    launches = dict(line.split() for line in result.stdout.splitlines())
    assert launches == {"fused_loss": "1", "fused_loss_backward": "1", "reduce_loss": "1", "mix": "1",
                        "mix_backward": "1"}
