"""The compiled CPU backend: what only it has. (The matrix it shares with the CUDA backend,
against the reference, is test_compiled_backends.py.) Its row loops (blocks of samples, with
and without AVX-512 packs), threads, gradients written in the forward and scaled in place,
retain_graph and create_graph, the soft_relevance kernel, bad input, bfloat16 conversions, and the
direct entry points that skip the torch.ops binding. Fresh random inputs on every run; each
test reproduces from its seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from backend_cases import (
    RANKINGS,
    REDUCTIONS,
    close,
    gen,
    loss_args,
    mix_problem,
    options,
    problem,
    reference_backend,
    run,
    strided,
)

from rankmixup_ops import reference
from rankmixup_ops.backends import BackendUnavailable

try:
    from rankmixup_ops._extension import build_info
    from rankmixup_ops.compiled import load_backend

    CPU = load_backend("cpu")
    CPU_ROW_LOOPS = build_info()["cpu_row_loops"]
except BackendUnavailable as error:  # pragma: no cover - `make test` always builds it
    pytest.skip(f"compiled CPU backend unavailable: {error}", allow_module_level=True)


@pytest.mark.parametrize("classes", [1, 10, 16, 17])
@pytest.mark.parametrize("mode,score", RANKINGS)
def test_loss_blocks_of_samples(mode, score, classes):
    """Rows of up to 16 classes are scanned 16 samples at a time, one sample per vector lane
    (C=17 is the first the row-by-row scan takes): whole and partial blocks, a batch that two
    threads split at a sample which is no block boundary (B=300 at C >= 5: at 150), masked
    classes (-inf) and ignored samples among them all match the reference."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for batch in (37, 300):
            logits, mix_logits, targets, lam, index = problem(batch, 2, classes, seed=batch + classes)
            if classes > 1:  # targets are below C // 2: the last class is never one
                logits[::5, -1] = mix_logits[::3, -1] = float("-inf")
            for reduction in REDUCTIONS:
                opts = options(mode, score, reduction)
                prob = (logits, mix_logits, targets, lam, index)
                close(run(CPU, *prob, opts), run(reference_backend(), *prob, opts))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(CPU_ROW_LOOPS != "avx512 packs",
                    reason="this CPU runs the OpenMP-SIMD loops: the whole file tests them")
def test_loss_without_packs_matches_reference():
    """CPUs without AVX-512 run the OpenMP-SIMD row loops (csrc/cpu/row_ops.cpp), this one the
    packed loops: the tests of this file and the CPU half of the shared matrix again (less its
    inductor compile, which tests no row loop), in a process where ATEN_CPU_CAPABILITY=avx2
    turns the packs off (which build_info confirms there)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    confirm = "from rankmixup_ops._extension import build_info as b; assert b()['cpu_row_loops'] == 'openmp simd'"
    subprocess.run([sys.executable, "-c", confirm], env=env, check=True, timeout=120)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         str(Path(__file__).with_name("test_compiled_backends.py")), "-k", "not without_packs and not cuda and not inductor"],
        env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "skipped" not in tests.stdout.splitlines()[-1]


def test_ignored_rows_change_nothing():
    """Ignored samples' logits, whatever they hold, give a loss and gradients of exactly 0 and
    spoil no other sample (rows of at most 16 classes are read, in blocks; longer ones are not)."""
    logits, mix_logits, targets, lam, index = problem(6, 3, 9, ignore="none", seed=2)
    targets[[1, 4]] = -100  # (C=9: the block scan reads them; test_loss_options has C=17)
    for rows in ([1, 4], [7, 10, 13, 16]):  # raw rows, then mix rows k*B + b of the same samples
        (logits if rows[0] < 6 else mix_logits)[rows] = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(3)
    for mode, score in RANKINGS:
        loss, ce, rank, grad_logits, grad_mix = run(CPU, logits, mix_logits, targets, lam, index,
                                                    options(mode, score, "none"))
        assert torch.isfinite(loss).all() and loss[[1, 4]].eq(0).all()
        assert grad_logits[[1, 4]].eq(0).all() and grad_mix.view(3, 6, 9)[:, [1, 4]].eq(0).all()
        assert torch.isfinite(grad_logits).all() and torch.isfinite(grad_mix).all()


def test_forward_only_and_partial_grads():
    logits, mix_logits, targets, lam, index = problem(8, 3, 10, seed=6)
    opts = options()
    with torch.no_grad():
        no_grad = CPU.loss(logits, mix_logits, targets, lam, index, opts)
    expected = reference_backend().loss(logits, mix_logits, targets, lam, index, opts)
    torch.testing.assert_close(no_grad.loss, expected.loss)
    raw = logits.clone().requires_grad_()  # only one input needs a gradient
    CPU.loss(raw, mix_logits, targets, lam, index, opts).loss.backward()
    raw_ref = logits.clone().requires_grad_()
    expected = reference_backend().loss(raw_ref, mix_logits, targets, lam, index, opts)
    expected.loss.backward()
    torch.testing.assert_close(raw.grad, raw_ref.grad)


def test_retain_graph_backward_twice():
    logits, mix_logits, targets, lam, index = problem(8, 3, 10, seed=8)
    raw = logits.clone().requires_grad_()
    loss = CPU.loss(raw, mix_logits, targets, lam, index, options()).loss
    loss.backward(retain_graph=True)
    first = raw.grad.clone()
    (3 * loss).backward()
    torch.testing.assert_close(raw.grad, 4 * first)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_retain_graph_second_backward_recomputes(reduction, dtype):
    """For float32 the first backward scales the gradient the forward wrote and a second one
    (retain_graph) recomputes it with the loss_backward op; bfloat16 takes loss_backward both
    times. Either way both backwards give the same gradient. Per-sample weights of exactly 1
    (rows the first backward leaves as the forward wrote them) sit beside other weights."""
    logits, mix_logits, targets, lam, index = problem(8, 3, 21, dtype=dtype, seed=8)
    raw, mix = logits.clone().requires_grad_(), mix_logits.clone().requires_grad_()
    loss = CPU.loss(raw, mix, targets, lam, index, options(reduction=reduction)).loss
    weight = torch.rand(loss.shape, generator=gen(8)) + 0.5
    if reduction == "none":
        weight[::2] = 1.0
    loss.backward(weight, retain_graph=True)
    first = raw.grad.clone(), mix.grad.clone()
    raw.grad = mix.grad = None
    loss.backward(weight)
    tolerance = {} if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close((raw.grad, mix.grad), first, **tolerance)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ignored_rows_stay_zero_whatever_grad_output(reduction):
    """0 * inf is NaN: the scaling of the forward's gradients must not multiply ignored rows."""
    logits, mix_logits, targets, lam, index = problem(6, 2, 9, ignore="none", seed=18)
    targets[[1, 4]] = -100
    raw, mix = logits.clone().requires_grad_(), mix_logits.clone().requires_grad_()
    loss = CPU.loss(raw, mix, targets, lam, index, options(reduction=reduction)).loss
    loss.backward(torch.full_like(loss, float("inf")), retain_graph=True)
    first = raw.grad.clone(), mix.grad.clone()
    raw.grad = mix.grad = None
    loss.backward(torch.full_like(loss, float("inf")))  # the loss_backward op's path
    for grads in (first, (raw.grad, mix.grad)):
        assert grads[0][[1, 4]].eq(0).all() and grads[1].view(2, 6, 9)[:, [1, 4]].eq(0).all()


def test_create_graph_gives_the_first_derivative():
    """With create_graph the backward recomputes with the loss_backward op instead of scaling the
    forward's gradients (csrc/autograd.cpp); either way the first derivative is the reference's."""
    logits, mix_logits, targets, lam, index = problem(5, 2, 7, seed=19)
    raw = logits.clone().requires_grad_()
    loss = CPU.loss(raw, mix_logits, targets, lam, index, options()).loss
    (grad,) = torch.autograd.grad(loss, raw, create_graph=True)
    ref_raw = logits.clone().requires_grad_()
    expected = reference_backend().loss(ref_raw, mix_logits, targets, lam, index, options()).loss
    torch.testing.assert_close(grad, torch.autograd.grad(expected, ref_raw)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("classes", [1, 10, 33, 1000])
def test_loss_with_grad_equals_loss_then_backward(classes, dtype):
    """The CPU forward's gradients (autograd's path) against the loss_backward op's, both at
    grad_output = 1 and in float32 accumulation; non-contiguous logits and NaN rows included."""
    logits, mix_logits, targets, lam, index = problem(6, 3, classes, dtype=dtype, ignore="none", seed=17)
    logits = strided(logits, "transposed")
    mix_logits[4, 0] = float("nan")  # a poisoned mix row: its gradient is NaN on both paths
    args = (logits, mix_logits, targets, lam, index, "mndcg", "prob", 1.0, 0.3, 1.5, -100, 0.1, "mean")
    *outputs, grad_logits, grad_mix = torch.ops.rankmixup.loss_with_grad(*args)
    expected = torch.ops.rankmixup.loss(*args)
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want, equal_nan=True)
    acc = reference.accumulation_dtype(dtype)
    assert grad_logits.dtype == grad_mix.dtype == acc and grad_logits.is_contiguous()
    backward = torch.ops.rankmixup.loss_backward(torch.ones((), dtype=acc), logits.to(acc), mix_logits.to(acc),
                                                  targets, expected[3], expected[4], -100)
    torch.testing.assert_close((grad_logits, grad_mix), backward, rtol=1e-5, atol=1e-6, equal_nan=True)
    others = [0, 1, 2, 3, 5]  # the samples whose lists hold no NaN
    assert grad_mix[4].isnan().all() and torch.isfinite(grad_logits[others]).all()


def test_bad_targets_raise():
    logits, mix_logits, targets, lam, index = problem(4, 1, 5, ignore="none", seed=9)
    targets[0] = 5
    with pytest.raises(RuntimeError, match="outside"):
        CPU.loss(logits, mix_logits, targets, lam, index, options())


# --- mix ---------------------------------------------------------------------------------


def test_mix_bad_index_raises():
    x, lam, index = mix_problem(4, 2, (3,), per_sample=False, seed=3)
    with pytest.raises(RuntimeError, match="outside"):
        CPU.mix(x, lam, index + 1)
    index[1] = 0  # in range, but not a permutation: the gather-based backward needs one
    out = CPU.mix(x.requires_grad_(), lam, index)
    with pytest.raises(RuntimeError, match="not a permutation"):
        out.sum().backward()


def test_soft_relevance_rejects_what_it_cannot_read():
    """Direct calls of the op: the rows must split into num_mix mixes, and the output dtype is
    one the loss takes."""
    soft = torch.rand(6, 4)
    for args, message in [((soft, 4, torch.float32), "with K = num_mix"), ((soft, 0, torch.float32), "num_mix must"),
                          ((soft[:0], 2, torch.float32), "non-empty"), ((soft.long(), 2, torch.float32), "floating"),
                          ((soft, 2, torch.float16), "dtype must be float32 or float64")]:
        with pytest.raises(RuntimeError, match=message):
            CPU.soft_relevance(*args)


# --- operator registration -----------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_loss_with_grad(reduction):
    torch.library.opcheck(torch.ops.rankmixup.loss_with_grad.default, loss_args(reduction, requires_grad=False))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_scale_grads(reduction):
    args = loss_args(reduction, requires_grad=False)
    grad_logits, grad_mix = torch.ops.rankmixup.loss_with_grad(*args)[5:]
    grad_loss = torch.rand(5) + 0.5 if reduction == "none" else torch.tensor(1.5)
    torch.library.opcheck(torch.ops.rankmixup.scale_grads_.default, (grad_logits, grad_mix, grad_loss, args[2], -100))


def test_loss_backward_rejects_inputs_that_are_not_the_forwards():
    """Called directly with a mix_logits of another width, the backward op must refuse rather
    than index rows with the logits' C (which would run out of bounds)."""
    batch, num_mix, classes = 3, 2, 5
    logits = torch.randn(batch, classes)
    mix_logits = torch.randn(num_mix * batch, classes)
    targets = torch.tensor([0, 1, 2])
    rel = torch.full((num_mix, batch), 0.6)
    out = torch.ops.rankmixup.loss(logits, mix_logits, targets, rel, None, "mndcg", "logit", 1.0, 0.1, 2.0, -100, 0.0,
                                   "mean")
    row_coefs, row_argmax = out[3], out[4]
    narrow = torch.randn(num_mix * batch, classes - 2)
    with pytest.raises(RuntimeError, match="mix_logits must be"):
        torch.ops.rankmixup.loss_backward(torch.ones(()), logits, narrow, targets, row_coefs, row_argmax, -100)
    with pytest.raises(RuntimeError, match="targets must be int64"):
        torch.ops.rankmixup.loss_backward(torch.ones(()), logits, mix_logits, targets.int(), row_coefs, row_argmax, -100)
    # Forged columns: the CPU kernels write at a row's argmax and target.
    for forged in (-1, classes, -10**8):
        bad_argmax = row_argmax.clone()
        bad_argmax[1, 2] = forged
        with pytest.raises(RuntimeError, match="row_argmax must be the loss op's own output"):
            torch.ops.rankmixup.loss_backward(torch.ones(()), logits, mix_logits, targets, row_coefs, bad_argmax, -100)
        bad_targets = targets.clone()
        bad_targets[0] = forged
        with pytest.raises(RuntimeError, match="is outside"):
            torch.ops.rankmixup.loss_backward(torch.ones(()), logits, mix_logits, bad_targets, row_coefs, row_argmax, -100)


@pytest.mark.parametrize("classes", [10, 100])
def test_bfloat16_rows_convert_as_torch_does(classes):
    """bfloat16 rows are widened and the backward's gradients rounded by the kernels' own loops:
    the gradients must be, bit for bit, the float32 path's on the same (exactly widened) logits,
    rounded by torch (ties to even), and NaN where those are. (NaN bits differ: the kernels write
    c10::BFloat16's 0x7FC0, as the scalar conversion they replace did; torch's vectorised one
    keeps the sign and payload.)"""
    logits, mix_logits, targets, lam, index = problem(16, 2, classes, dtype=torch.bfloat16, ignore="none", seed=23)
    mix_logits[5, 3] = float("nan")
    args = (targets, lam, index, "mndcg", "prob", 1.0, 0.3, 1.5, -100, 0.1, "mean")
    grad_loss = torch.tensor(0.7)
    low = torch.ops.rankmixup.loss(logits, mix_logits, *args)
    grads_low = torch.ops.rankmixup.loss_backward(grad_loss, logits, mix_logits, targets, low[3], low[4], -100)
    wide = (logits.float(), mix_logits.float())
    high = torch.ops.rankmixup.loss(*wide, *args)
    torch.testing.assert_close(low[:4], high[:4], rtol=0, atol=0, equal_nan=True)
    grads_high = torch.ops.rankmixup.loss_backward(grad_loss, *wide, targets, high[3], high[4], -100)
    for got, want in zip(grads_low, grads_high):
        nan = want.isnan()
        assert nan.any() and torch.equal(got.isnan(), nan)
        assert got.view(torch.int16)[nan].eq(0x7FC0).all()
        assert torch.equal(got.view(torch.int16)[~nan], want.to(torch.bfloat16).view(torch.int16)[~nan])


class _FunctionLog(torch.overrides.TorchFunctionMode):
    """Records the functions a __torch_function__ mode is offered."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


class _DispatchLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the operators a __torch_dispatch__ mode is handed."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


class _Subclass(torch.Tensor):
    """A plain __torch_function__ subclass (what the direct entry points cannot honour)."""


def test_direct_entry_points_equal_torch_ops():
    """Eager calls on plain tensors go through _C's direct entry points, not torch.ops: the same
    kernels, so the same bits, forward and backward."""
    from rankmixup_ops import compiled

    logits, mix_logits, targets, lam, index = problem(20, 2, 10, seed=5)
    assert compiled._entry(logits, mix_logits, targets, lam, index) is compiled._C
    direct = run(CPU, logits, mix_logits, targets, lam, index, options())

    class ViaOps:  # the backend's loss, through torch.ops
        @staticmethod
        def loss(logits, mix_logits, targets, lam, index, opts):
            return compiled.LossOutput(*compiled.ops.loss(logits, mix_logits, targets, lam, index, *opts)[:3])

    for a, b in zip(direct, run(ViaOps, logits, mix_logits, targets, lam, index, options())):
        assert torch.equal(a, b)
    lam = torch.rand(2, 20, generator=gen(1))
    index = torch.stack([torch.randperm(20, generator=gen(2)) for _ in range(2)])
    x = torch.randn(20, 3, generator=gen(3))
    assert torch.equal(CPU.mix(x, lam, index), compiled.ops.mix(x, lam, index))
    soft = reference.soft_targets(targets, lam, index, 10)
    assert torch.equal(CPU.soft_relevance(soft, 2, torch.float32), compiled.ops.soft_relevance(soft, 2, torch.float32))


def test_direct_entry_points_raise_as_torch_ops_does():
    """The same exception type and message as the torch.ops binding (no C++ backtrace)."""
    from rankmixup_ops import compiled

    logits, mix_logits, targets, lam, index = problem(4, 1, 3, ignore="none", seed=8)
    targets[1] = 7  # past C: the kernel's own check (the public API's validate=True would catch it first)
    args = (logits, mix_logits, targets, lam, index, "mndcg", "logit", 1.0, 0.3, 1.5, -100, 0.0, "mean", None)
    errors = []
    for entry in (compiled._C, compiled.ops):
        with pytest.raises(RuntimeError, match="target 7 of sample 1 is outside") as error:
            entry.loss(*args)
        errors.append(str(error.value))
    assert errors[0] == errors[1] and "Exception raised from" not in errors[0]


def test_torch_function_modes_and_subclasses_get_torch_ops():
    """A __torch_function__ mode (torch.export's, `with torch.device(...)`, a user's) and a
    tensor subclass are offered the torch.ops call; the direct entry points would skip them."""
    from rankmixup_ops import compiled

    logits, mix_logits, targets, lam, index = problem(6, 2, 5, seed=6)
    with _FunctionLog() as log:
        assert compiled._entry(logits, mix_logits, targets, lam, index) is compiled.ops
        CPU.loss(logits, mix_logits, targets, lam, index, options())
    assert log.seen == [torch.ops.rankmixup.loss]
    subclassed = logits.as_subclass(_Subclass)
    assert compiled._entry(subclassed, mix_logits, targets, lam, index) is compiled.ops


def test_dispatch_modes_see_direct_calls():
    """__torch_dispatch__ modes (fake tensors, tracing, FLOP counters) are handed the operator
    by the dispatcher, whichever entry point the call took."""
    logits, mix_logits, targets, lam, index = problem(6, 2, 5, seed=7)
    with _DispatchLog() as log:
        CPU.loss(logits, mix_logits, targets, lam, index, options())
    assert log.seen == [torch.ops.rankmixup.loss.default]
