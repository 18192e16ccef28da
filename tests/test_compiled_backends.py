"""The compiled backends (`cpu`, `cuda`) against the reference, as one matrix: every test here
runs on the CPU backend everywhere and on the CUDA backend where a GPU is (marked gpu, run by
`make gpu-check`). Values, parts and gradients of the fused loss over shapes, modes, scores,
reductions, options, dtypes and layouts; the mix and its gradient; opcheck; a compiled training
step. What only one device has keeps its own file: test_cpu_backend.py (row loops, threads,
grad-in-forward, the direct entry points) and test_cuda_backend.py (the build, shared-memory
limits, streams, CUDA graphs, determinism, device-side NaN instead of faults).
"""

from __future__ import annotations

import pytest
import torch
from backend_cases import (
    LAYOUTS,
    LOSS_SHAPES,
    MIX_SHAPES,
    RANKINGS,
    REDUCTIONS,
    SEED,
    close,
    errors_against_float64,
    gen,
    loss_args,
    mix_problem,
    options,
    problem,
    reference_backend,
    relevance_of,
    run,
    run_mix,
    strided,
)

from rankmixup_ops import reference
from rankmixup_ops._types import LossOptions
from rankmixup_ops.backends import BackendUnavailable

try:
    from rankmixup_ops import _extension, compiled

    BUILT = _extension.build_info()["backends"]
except BackendUnavailable as error:  # pragma: no cover - `make test` always builds it
    pytest.skip(f"compiled extension unavailable: {error}", allow_module_level=True)

# Beyond LOSS_SHAPES, the CUDA kernels' paths: C = 100 (vectors, many rows per block), C = 4096
# (a whole block per row, vectors), C = 128k + 3 (a whole block per row, element-wise, lanes
# looping), and a batch large enough that the mean's divisor is counted by a kernel of its own.
# The CPU runs them too.
DEVICE_SHAPES = [(64, 3, 100), (4, 2, 4096), (2, 1, 128 * 1024 + 3), (2500, 1, 10)]
GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif("cuda" not in BUILT, reason="extension built without CUDA kernels"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=GPU)])
def device(request) -> str:
    """Each test's device; its backend is the compiled one of that device."""
    return request.param


@pytest.fixture
def backend(device):
    return compiled.load_backend(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode,score", RANKINGS)
@pytest.mark.parametrize("batch,num_mix,classes", LOSS_SHAPES + DEVICE_SHAPES)
def test_loss_matches_reference(backend, device, batch, num_mix, classes, mode, score, reduction, dtype):
    prob = problem(batch, num_mix, classes, dtype=dtype, seed=batch * 1000 + num_mix * 10 + classes, device=device)
    opts = options(mode, score, reduction)
    if dtype == torch.float32 and classes > 2**14:
        # Sums over 10^5 float32 logits round by many ulps on both sides, and differently (the
        # backends' reduction orders are not torch's): each is held to twice the reference's
        # own error against float64 instead.
        err, ref_err = errors_against_float64(backend, prob, opts)
        assert err <= 2 * ref_err + 1e-6, f"seed {SEED}: {device} {err:.3g} vs reference {ref_err:.3g}"
        return
    close(run(backend, *prob, opts), run(reference_backend(device), *prob, opts))


@pytest.mark.parametrize("ignore", ["none", "some", "all"])
@pytest.mark.parametrize("ce_weight,label_smoothing", [(0.0, 0.0), (1.0, 0.0), (1.0, 0.25), (0.0, 0.7)])
@pytest.mark.parametrize("mode,score", RANKINGS)
def test_loss_options(backend, device, mode, score, ce_weight, label_smoothing, ignore):
    prob = problem(12, 3, 17, ignore=ignore, seed=7, device=device)
    for reduction in REDUCTIONS:
        opts = options(mode, score, reduction, ce_weight=ce_weight, label_smoothing=label_smoothing)
        expected = run(reference_backend(device), *prob, opts)
        close(run(backend, *prob, opts), expected)
        close(run(backend, *relevance_of(prob), opts), expected)  # the relevances given, as the drop-ins give them


@pytest.mark.parametrize("per_sample", [False, True], ids=["lam(K)", "lam(K,B)"])
def test_derived_relevance_is_the_given_one(backend, device, per_sample):
    """The loss with each mix's relevance derived in the kernel from lam and the partners' labels
    is the loss with those relevances given (reference.relevance, no partners), bit for bit:
    the same numbers enter the same arithmetic. lam of 0 and 1 give a relevance of 1, as a
    same-class pair does; a (K,) lam arrives expanded, with a zero stride."""
    logits, mix_logits, targets, lam, index = problem(9, 4, 6, ignore="some", seed=16, device=device)
    if per_sample:
        lam[1, :4] = 0.0
        lam[1, 4:] = 1.0
    else:
        lam = lam[:, :1].expand(lam.shape)
    for mode, score in RANKINGS:
        opts = options(mode, score, "none")
        derived = run(backend, logits, mix_logits, targets, lam, index, opts)
        given = run(backend, *relevance_of([logits, mix_logits, targets, lam, index]), opts)
        for a, b in zip(derived, given):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode,score", RANKINGS)
def test_partner_outside_the_batch(backend, device, mode, score):
    """The CPU kernel raises, naming the argument; a device kernel cannot without a host sync:
    that sample's loss and gradients are NaN, as for a label outside [0, C), the others'
    untouched."""
    logits, mix_logits, targets, lam, index = problem(6, 2, 5, ignore="none", seed=15, device=device)
    opts = options(mode, score, "none")
    expected = run(backend, logits, mix_logits, targets, lam, index, opts)
    index[1, 4] = -1
    if device == "cpu":
        with pytest.raises(RuntimeError, match=r"rankmixup::loss: index\[1, 4\] = -1 is outside \[0, 6\)"):
            run(backend, logits, mix_logits, targets, lam, index, opts)
        return
    loss, _, _, grad_logits, _ = run(backend, logits, mix_logits, targets, lam, index, opts)
    assert loss[4].isnan() and grad_logits[4].isnan().all()
    others = [0, 1, 2, 3, 5]
    torch.testing.assert_close(loss[others], expected[0][others], rtol=0, atol=0)


def test_partner_of_an_ignored_sample_outside_the_batch(backend, device):
    """An ignored sample's partners are checked on the CPU, as every entry of index is, and
    unread on a device: its loss stays 0 and no other sample changes."""
    logits, mix_logits, targets, lam, index = problem(6, 2, 5, ignore="none", seed=15, device=device)
    targets[4] = -100
    opts = options("mndcg", "logit", "none")
    expected = run(backend, logits, mix_logits, targets, lam, index, opts)
    index[1, 4] = 6
    if device == "cpu":
        with pytest.raises(RuntimeError, match=r"rankmixup::loss: index\[1, 4\] = 6 is outside \[0, 6\)"):
            run(backend, logits, mix_logits, targets, lam, index, opts)
        return
    for got, want in zip(run(backend, logits, mix_logits, targets, lam, index, opts), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# 10: the CPU scans a block of samples at a time; 23: row by row, and on CUDA element-wise;
# 64: contiguous rows take CUDA's vector path, strided ones not.
@pytest.mark.parametrize("classes", [10, 23, 64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_loss_any_strides(backend, device, layout, dtype, classes):
    logits, mix_logits, targets, lam, index = problem(19, 3, classes, dtype=dtype, seed=3, device=device)
    opts = options("mrl", "prob", "none")
    expected = run(backend, logits, mix_logits, targets, lam, index, opts)
    actual = [run(backend, strided(logits, layout), strided(mix_logits, layout), targets, lam, index, opts),
              run(backend, logits, mix_logits, targets, lam.t().contiguous().t(), index.t().contiguous().t(), opts)]
    for got in actual:
        if device == "cpu":  # the CPU kernels' arithmetic never depends on the layout
            for a, e in zip(got, expected):
                assert torch.equal(a, e)
        else:  # CUDA splits rows among lanes by path: sums may differ in the last bit, a bf16
            close(got, expected, 1e-5 if dtype == torch.float32 else 1e-2)  # gradient by one unit


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mode,score", RANKINGS)
@pytest.mark.parametrize("classes", [100, 4096])
def test_loss_low_precision(backend, device, mode, score, dtype, classes):
    """No worse than 2x the reference's own error in that dtype, against a float64 reference."""
    prob = problem(32, 3, classes, dtype=dtype, seed=11, device=device)
    for reduction in REDUCTIONS:
        err, ref_err = errors_against_float64(backend, prob, options(mode, score, reduction))
        assert err <= 2 * ref_err + 1e-6, f"seed {SEED}: {reduction}: {device} {err:.3g} vs reference {ref_err:.3g}"


@pytest.mark.parametrize("classes", [6, 333])
def test_argmax_ties_go_to_lowest_index(backend, device, classes):
    """Integer logits: many rows have tied maxima, on CUDA often in different lanes; the score
    gradient must hit the first."""
    g = gen(5)
    logits = torch.randint(0, 3, (8, classes), generator=g).float().to(device)
    mix_logits = torch.randint(0, 3, (24, classes), generator=g).float().to(device)
    _, _, targets, lam, index = problem(8, 3, classes, ignore="none", seed=5, device=device)
    for mode, score in RANKINGS:
        opts = options(mode, score, "sum")
        close(run(backend, logits, mix_logits, targets, lam, index, opts),
              run(reference_backend(device), logits, mix_logits, targets, lam, index, opts))


def test_non_finite_valid_logits_give_nan(backend, device):
    logits, mix_logits, targets, lam, index = problem(4, 2, 5, ignore="none", seed=4, device=device)
    logits[2, 3] = float("nan")
    mix_logits[4 + 1, 0] = float("inf")
    for mode, score in RANKINGS:
        loss = run(backend, logits, mix_logits, targets, lam, index, options(mode, score, "none"))[0]
        assert loss[[2]].isnan().all() and torch.isfinite(loss[[0, 3]]).all()


MIX_TOLERANCES = {torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("per_sample", [False, True], ids=["lam(K)", "lam(K,B)"])
@pytest.mark.parametrize("batch,num_mix,feat", MIX_SHAPES + [(8, 3, (3, 32, 32))])
def test_mix_matches_reference(backend, device, batch, num_mix, feat, per_sample, dtype):
    x, lam, index = mix_problem(batch, num_mix, feat, per_sample=per_sample, dtype=dtype, seed=batch + num_mix,
                                device=device)
    grad = torch.randn(num_mix * batch, *feat, generator=gen(1), dtype=torch.float64).to(device, dtype)
    tolerance = MIX_TOLERANCES.get(dtype, {})
    for a, e in zip(run_mix(backend.mix, x, lam, index, grad), run_mix(reference.mix, x, lam, index, grad)):
        torch.testing.assert_close(a, e, **tolerance, msg=lambda m: f"seed {SEED}: {m}")


def test_mix_non_contiguous_and_lam_grad(backend, device):
    x, lam, index = mix_problem(6, 3, (4, 5), per_sample=True, seed=2, device=device)
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)
    results = []
    for mix in (backend.mix, reference.mix):
        xr, lr = x_t.clone().requires_grad_(), lam.clone().requires_grad_()
        out = mix(xr, lr, index)
        (out * torch.arange(out.numel(), device=device).view_as(out)).sum().backward()
        results.append((out.detach(), xr.grad, lr.grad))
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())


def _soft_targets(num_mix, batch, classes, dtype, device, seed):
    """Mixed soft targets as the RankMixup code builds them, with a same-class pair (a largest
    entry that rounds a few ulps off 1), a lam of 0 (exactly 1) and a NaN row."""
    generator = gen(seed)
    targets = torch.randint(0, classes, (batch,), generator=generator)
    index = torch.stack([torch.randperm(batch, generator=generator) for _ in range(num_mix)])
    lam = torch.rand(num_mix, batch, generator=generator)
    targets[index[0, 1]] = targets[1]
    lam[-1, 0] = 0.0
    soft = reference.soft_targets(targets, lam, index, classes).to(dtype)
    soft[2, 0] = float("nan")
    return soft.to(device)


# The CPU kernel's one-pass rows, and ATen's amax (over 64 classes and 2^18 elements).
@pytest.mark.parametrize("num_mix,batch,classes", [(3, 7, 11), (3, 7, 100), (2, 1400, 100)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_soft_relevance_matches_reference(backend, device, dtype, out_dtype, num_mix, batch, classes):
    """Equal to the reference bit for bit: the largest entry is exact in any dtype, and both snap
    to 1 from the same threshold. On contiguous rows and on a transposed (column-major) copy."""
    soft = _soft_targets(num_mix, batch, classes, dtype, device, seed=17)
    expected = reference.soft_relevance(soft, num_mix, out_dtype)
    assert expected.isnan().sum() == 1 and (expected == 1).sum() >= 2  # the cases are there
    for layout in (soft, soft.t().contiguous().t()):
        rel = backend.soft_relevance(layout, num_mix, out_dtype)
        assert rel.dtype == out_dtype and rel.shape == (num_mix, batch)
        torch.testing.assert_close(rel, expected, rtol=0, atol=0, equal_nan=True)
    assert not backend.soft_relevance(soft.clone().requires_grad_(), num_mix, out_dtype).requires_grad


def test_opcheck_soft_relevance(device):
    soft = _soft_targets(2, 5, 4, torch.float32, device, seed=18).nan_to_num(0.5)  # opcheck compares with ==
    torch.library.opcheck(torch.ops.rankmixup.soft_relevance.default, (soft, 2, torch.float64))


@pytest.mark.parametrize("op", ["loss", "loss_with_grad"])
def test_loss_schemas_take_the_options_as_LossOptions_holds_them(op):
    """The C++ option list (RANKMIXUP_LOSS_OPTIONS) makes the schemas' option arguments: they must
    be LossOptions' fields, in order and of matching types, after the five tensors, since the
    compiled backends pass a LossOptions as ``*options``."""
    arguments = getattr(torch.ops.rankmixup, op).default._schema.arguments
    assert [a.name for a in arguments[:5]] == ["logits", "mix_logits", "targets", "lam", "index"]
    assert [a.name for a in arguments[5:]] == list(LossOptions._fields)
    schema_types = {str: "str", float: "float", int: "int"}
    for argument, default in zip(arguments[5:-1], LossOptions()[:-1]):
        assert str(argument.type) == schema_types[type(default)], argument.name
    assert str(arguments[-1].type) == "Optional[Tensor]" and arguments[-1].default_value is None


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class-weights"])
@pytest.mark.parametrize("reduction,requires_grad", [("mean", True), ("none", True), ("sum", False)])
@pytest.mark.parametrize("pairing", ["partners", "relevance-given"])
def test_opcheck_loss(device, reduction, requires_grad, weighted, pairing):
    args = loss_args(reduction, requires_grad=requires_grad, weighted=weighted, device=device)
    if pairing == "relevance-given":
        args = (*args[:3], reference.relevance(args[2], args[3], args[4]), None, *args[5:])
    torch.library.opcheck(torch.ops.rankmixup.loss.default, args)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class-weights"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_loss_backward(device, reduction, weighted):
    args = loss_args(reduction, requires_grad=False, weighted=weighted, device=device)
    _, _, _, row_coefs, row_argmax = torch.ops.rankmixup.loss(*args)
    grad_loss = torch.rand(5, device=device) if reduction == "none" else torch.tensor(1.5, device=device)
    torch.library.opcheck(torch.ops.rankmixup.loss_backward.default,
                          (grad_loss, *args[:3], row_coefs, row_argmax, -100, args[-1]))


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class-weights"])
def test_loss_backward_at_large_logits(device, weighted):
    """The two-pass backward (loss, then loss_backward, which float16 and bfloat16 take) in
    float32, at logits near +-2e4: from the stored row max it computes exp(z - max), as the
    forward does; exp(z - lse) from a float32 log-sum-exp would be off by 1e-3 relative here."""
    args = list(loss_args("mean", requires_grad=False, weighted=weighted, device=device))
    for i in (0, 1):
        signs = torch.where(torch.rand(args[i].shape[0], 1, generator=gen(19 + i)) < 0.5, -1.0, 1.0)
        args[i] = args[i] + 2e4 * signs.to(device)
    _, _, _, row_coefs, row_argmax = torch.ops.rankmixup.loss(*args)
    grads = torch.ops.rankmixup.loss_backward(torch.tensor(1.0, device=device), *args[:3], row_coefs, row_argmax,
                                              -100, args[-1])
    wide = [t.double().requires_grad_() for t in args[:2]]
    weight = None if args[-1] is None else args[-1].double()
    rel = reference.relevance(args[2], args[3].double(), args[4])
    expected = reference.rankmixup_loss_from_relevance(*wide, args[2], rel, LossOptions(*args[5:-1], weight))
    expected = torch.autograd.grad(expected.loss, wide)
    for name, got, want in zip(("grad_logits", "grad_mix_logits"), grads, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item(),
                                   msg=lambda m: f"{name} (seed {SEED}): {m}")


@pytest.mark.parametrize("per_sample", [False, True])
def test_opcheck_mix(device, per_sample):
    x, lam, index = mix_problem(5, 3, (2, 3), per_sample=per_sample, seed=13, device=device)
    torch.library.opcheck(torch.ops.rankmixup.mix.default, (x.requires_grad_(), lam, index))
    grad = torch.randn(15, 2, 3, device=device)
    torch.library.opcheck(torch.ops.rankmixup.mix_backward.default, (grad, lam, index))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_training_step_has_no_graph_break(backend, device, compiler):
    model = torch.nn.Linear(8, 5).to(device)
    x = torch.randn(6, 8, device=device)
    targets = problem(6, 3, 5, seed=14, device=device)[2]
    _, lam, index = mix_problem(6, 3, (8,), per_sample=True, seed=14, device=device)

    def step(x):
        out = model(torch.cat([x, backend.mix(x, lam, index)]))
        return backend.loss(out[:6], out[6:], targets, lam, index, options("mrl", "prob")).loss

    step(x).backward()
    grad = model.weight.grad.clone()
    model.zero_grad()
    torch.compile(step, fullgraph=True, backend=compiler)(x).backward()
    torch.testing.assert_close(model.weight.grad, grad)
