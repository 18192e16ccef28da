"""The compiled CUDA backend: what only it has. (The matrix it shares with the CPU backend,
against the reference, is test_compiled_backends.py.)

Everywhere (no GPU needed): the extension was built with CUDA kernels when it could be, it
registers a CUDA kernel for every operator it registers for the CPU, and build_info() names
the GPU architectures compiled for.

With a GPU (marked gpu): many mixes per sample and the shared-memory limit, ignored rows never
read, NaN instead of out-of-bounds reads for bad labels and indices, bitwise determinism, the
current stream, and CUDA-graph capture (no host sync).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch
from backend_cases import (
    RANKINGS,
    REDUCTIONS,
    close,
    gen,
    mix_problem,
    options,
    problem,
    reference_backend,
    run,
    run_mix,
)

from rankmixup_ops import reference
from rankmixup_ops.backends import BackendUnavailable

try:
    from rankmixup_ops import _extension, compiled

    INFO = _extension.build_info()
except BackendUnavailable as error:  # pragma: no cover - `make test` always builds it
    pytest.skip(f"compiled extension unavailable: {error}", allow_module_level=True)

OPS = ("loss", "loss_backward", "mix", "mix_backward")
HAS_CUDA_KERNELS = "cuda" in INFO["backends"]
needs_kernels = pytest.mark.skipif(not HAS_CUDA_KERNELS, reason="extension built without CUDA kernels")
CUDA = compiled.load_backend("cuda") if HAS_CUDA_KERNELS else None


def gpu(test):
    """Marks a test that runs CUDA kernels: `make gpu-check` selects these (-m gpu)."""
    for mark in (pytest.mark.gpu, needs_kernels,
                 pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")):
        test = mark(test)
    return test


# --- everywhere: the build -------------------------------------------------------------------


@pytest.mark.skipif(
    os.environ.get("RANKMIXUP_BUILD_CUDA") == "0" or torch.version.cuda is None
    or not (os.environ.get("CUDA_HOME") or shutil.which("nvcc")),
    reason="no CUDA toolkit and CUDA build of torch to compile kernels with",
)
def test_cuda_kernels_are_built_when_they_can_be():
    """CI has nvcc and a CUDA torch but no GPU: the kernels must still compile and link."""
    assert HAS_CUDA_KERNELS, f"nvcc and a CUDA build of torch are present, yet the extension has {INFO['backends']}"


@needs_kernels
def test_every_cpu_operator_has_a_cuda_kernel():
    cpu_ops = sorted(
        name for name in torch._C._dispatch_get_registrations_for_dispatch_key("CPU") if name.startswith("rankmixup::")
    )
    assert {f"rankmixup::{op}" for op in OPS} <= set(cpu_ops)
    # loss_with_grad and its scaling are CPU-only by design: on the GPU, autograd runs loss and
    # loss_backward (docs/DESIGN.md, "Decisions"), and must never reach for them.
    cpu_only = {"rankmixup::loss_with_grad", "rankmixup::scale_grads_"}
    for name in cpu_ops:  # a kernel of its own, or a composite that covers CUDA
        has_cuda = torch._C._dispatch_has_computed_kernel_for_dispatch_key(name, "CUDA")
        assert has_cuda != (name in cpu_only), name
    for op in OPS:  # this backend's four ops have kernels of their own
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rankmixup::{op}", "CUDA"), op


@needs_kernels
def test_build_info_names_the_architectures():
    arch_list = INFO["cuda_arch_list"]
    assert all(re.fullmatch(r"\d+\.\d+a?(\+PTX)?", arch) for arch in re.split(r"[;\s]+", arch_list)), arch_list
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:  # setup.py's default: Ampere, Hopper, PTX for newer GPUs
        assert arch_list == "8.0;9.0+PTX"


# --- with a GPU: the loss, what only a GPU shows ---------------------------------------------


@gpu
@pytest.mark.parametrize("num_mix,classes", [(40, 7), (300, 7), (6, 5000)])
def test_loss_many_mixes(num_mix, classes):
    """More rows per sample than teams per block: the teams loop over a sample's rows."""
    prob = problem(5, num_mix, classes, seed=num_mix, device="cuda")
    for mode, score in RANKINGS:
        opts = options(mode, score, "mean")
        close(run(CUDA, *prob, opts), run(reference_backend("cuda"), *prob, opts))


@gpu
def test_loss_too_many_mixes_raise():
    logits, mix_logits, targets, lam, index = problem(2, 1000, 2, device="cuda")
    with pytest.raises(RuntimeError, match="shared memory"):
        CUDA.loss(logits, mix_logits, targets, lam, index, options())


@gpu
def test_ignored_rows_never_read():
    logits, mix_logits, targets, lam, index = problem(6, 3, 9, ignore="none", seed=2, device="cuda")
    targets[[1, 4]] = -100
    poison = torch.tensor([float("nan"), float("inf"), -float("inf")], device="cuda").repeat(3)
    logits[[1, 4]] = poison
    mix_logits[[7, 10, 13, 16]] = poison  # rows k*B + b of the same samples
    for mode, score in RANKINGS:
        loss, _, _, grad_logits, grad_mix = run(CUDA, logits, mix_logits, targets, lam, index,
                                                options(mode, score, "none"))
        assert torch.isfinite(loss).all() and loss[[1, 4]].eq(0).all()
        assert grad_logits[[1, 4]].eq(0).all() and grad_mix.view(3, 6, 9)[:, [1, 4]].eq(0).all()
        assert torch.isfinite(grad_logits).all() and torch.isfinite(grad_mix).all()


@gpu
def test_bad_targets_give_nan_not_a_fault():
    """A label outside [0, C) cannot be reported without a host sync: its sample is NaN."""
    logits, mix_logits, targets, lam, index = problem(4, 1, 5, ignore="none", seed=9, device="cuda")
    targets[0], targets[2] = 5, -3
    loss = run(CUDA, logits, mix_logits, targets, lam, index, options(reduction="none"))[0]
    assert loss[[0, 2]].isnan().all() and torch.isfinite(loss[[1, 3]]).all()
    torch.cuda.synchronize()  # no device-side fault


@gpu
def test_forward_only_and_retain_graph():
    logits, mix_logits, targets, lam, index = problem(8, 3, 10, seed=6, device="cuda")
    opts = options()
    with torch.no_grad():
        no_grad = CUDA.loss(logits, mix_logits, targets, lam, index, opts)
    torch.testing.assert_close(no_grad.loss, reference_backend("cuda").loss(logits, mix_logits, targets, lam, index,
                                                                           opts).loss)
    raw = logits.clone().requires_grad_()  # only one input needs a gradient
    loss = CUDA.loss(raw, mix_logits, targets, lam, index, opts).loss
    loss.backward(retain_graph=True)
    first = raw.grad.clone()
    (3 * loss).backward()
    torch.testing.assert_close(raw.grad, 4 * first)


@gpu
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_is_deterministic(reduction):
    """No floating-point atomics: the same inputs give the same bits."""
    prob = problem(300, 3, 1000, seed=21, device="cuda")
    first = run(CUDA, *prob, options(reduction=reduction))
    for _ in range(3):
        for a, b in zip(run(CUDA, *prob, options(reduction=reduction)), first):
            assert torch.equal(a, b)


@gpu
def test_loss_runs_on_the_current_stream():
    """Inputs written on a side stream just before the call must be what the kernels read."""
    prob = problem(64, 3, 1000, seed=22, device="cuda")
    expected = CUDA.loss(*prob, options(reduction="none")).loss
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # the copy below lands long after a wrong-stream kernel ran
        late = [t.clone() for t in prob]
        actual = CUDA.loss(*late, options(reduction="none")).loss
    stream.synchronize()
    assert torch.equal(actual, expected)


@gpu
def test_forward_and_backward_capture_in_a_cuda_graph():
    """No host synchronisation in either direction: both ops record into a CUDA graph."""
    logits, mix_logits, targets, lam, index = problem(16, 3, 33, seed=23, device="cuda")
    args = (logits, mix_logits, targets, lam, index, "mndcg", "prob", 1.0, 0.3, 1.5, -100, 0.1, "mean")
    eager = torch.ops.rankmixup.loss(*args)
    eager_grads = torch.ops.rankmixup.loss_backward(torch.ones((), device="cuda"), logits, mix_logits, targets,
                                                     eager[3], eager[4], -100)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture, as torch.cuda.graphs advises
        torch.ops.rankmixup.loss(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.rankmixup.loss(*args)
        grads = torch.ops.rankmixup.loss_backward(torch.ones((), device="cuda"), logits, mix_logits, targets, out[3],
                                                  out[4], -100)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip((*out, *grads), (*eager, *eager_grads)):
        assert torch.equal(a, b)


# --- with a GPU: mixup -----------------------------------------------------------------------


@gpu
def test_mix_bad_index_gives_nan_not_a_fault():
    x, lam, index = mix_problem(4, 2, (3,), per_sample=False, seed=3, device="cuda")
    out = CUDA.mix(x, lam, index + 1)  # index B is out of range: that row is NaN, no read
    assert out.view(2, 4, 3)[index + 1 == 4].isnan().all() and out.view(2, 4, 3)[index + 1 < 4].isfinite().all()
    index[1] = 0  # in range, but not a permutation: rows of grad_x without a partner are NaN
    grad_x = run_mix(CUDA.mix, x, lam, index, torch.ones(8, 3, device="cuda"))[1]
    assert grad_x[1:].isnan().all() and grad_x[0].isfinite().all()
    torch.cuda.synchronize()


@gpu
def test_mix_is_deterministic():
    x, lam, index = mix_problem(64, 4, (3, 16, 16), per_sample=True, seed=24, device="cuda")
    grad = torch.randn(256, 3, 16, 16, generator=gen(2)).cuda()
    first = run_mix(CUDA.mix, x, lam, index, grad)
    for a, b in zip(run_mix(CUDA.mix, x, lam, index, grad), first):
        assert torch.equal(a, b)
