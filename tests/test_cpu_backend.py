"""The compiled CPU backend against the reference: values, parts and gradients of the fused loss
(over shapes, modes, scores, reductions, options, dtypes and layouts), and the mix and its
gradient. Fresh random inputs on every run; each test prints nothing but reproduces from its seed.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from rankmixup_ops import reference
from rankmixup_ops.backends import BackendUnavailable

try:
    from rankmixup_ops._extension import load_backend

    CPU = load_backend("cpu")
except BackendUnavailable as error:  # pragma: no cover - `make test` always builds it
    pytest.skip(f"compiled CPU backend unavailable: {error}", allow_module_level=True)

# A seed per test invocation: fresh inputs each run, reproducible from the failure message.
SEED = random.SystemRandom().randrange(2**31)

RANKINGS = [("mrl", "logit"), ("mrl", "prob"), ("mndcg", "logit")]  # M-NDCG ranks by confidence
REDUCTIONS = ["mean", "sum", "none"]


def _gen(salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + salt)


def _problem(batch, num_mix, classes, *, dtype=torch.float32, ignore="some", seed=0):
    """Logits, mix logits, targets and rel (K, B) with same-class pairs (rel = 1), ties in lam
    (so the M-NDCG order falls back to k) and the requested ignored samples."""
    gen = _gen(seed)
    logits = (torch.randn(batch, classes, generator=gen, dtype=torch.float64) * 3).to(dtype)
    mix_logits = (torch.randn(num_mix * batch, classes, generator=gen, dtype=torch.float64) * 3).to(dtype)
    targets = torch.randint(0, max(classes // 2, 1), (batch,), generator=gen)  # many same-class pairs
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)])
    lam = torch.rand(num_mix, batch, generator=gen)
    lam[max(num_mix // 2, 1) :] = lam[0].clone()
    if ignore == "some":
        targets[torch.rand(batch, generator=gen) < 0.3] = -100
    elif ignore == "all":
        targets[:] = -100
    return logits, mix_logits, targets, reference.relevance(targets, lam, index)


def _options(mode="mndcg", score="logit", reduction="mean", **overrides):
    options = dict(mode=mode, score=score, reduction=reduction, ce_weight=1.0, alpha=0.3, margin=1.5,
                   ignore_index=-100, label_smoothing=0.1)
    options.update(overrides)
    return options


def _run(backend, logits, mix_logits, targets, rel, options, *, grad_weight_seed=0):
    """Loss, parts and the gradients of sum(weight * loss) (a non-unit grad_output)."""
    logits = logits.detach().clone().requires_grad_()
    mix_logits = mix_logits.detach().clone().requires_grad_()
    out = backend.loss(logits, mix_logits, targets, rel, **options)
    weight = torch.rand(out.loss.shape, generator=_gen(grad_weight_seed), dtype=torch.float64).to(out.loss.dtype) + 0.5
    (out.loss * weight).sum().backward()
    return [out.loss.detach(), out.ce, out.rank, logits.grad, mix_logits.grad]


def _close(actual, expected, rtol=1e-5):
    names = ("loss", "ce", "rank", "grad_logits", "grad_mix_logits")
    for name, a, e in zip(names, actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        atol = rtol * max(1.0, e.double().abs().max().item()) if e.numel() else 0
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{name} (seed {SEED}): {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode,score", RANKINGS)
@pytest.mark.parametrize(
    "batch,num_mix,classes",
    [(1, 1, 1), (1, 3, 5), (2, 2, 1), (7, 1, 10), (16, 3, 33), (9, 8, 7), (5, 4, 1000), (3, 2, 4099)],
)
def test_loss_matches_reference(batch, num_mix, classes, mode, score, reduction, dtype):
    problem = _problem(batch, num_mix, classes, dtype=dtype, seed=batch * 1000 + num_mix * 10 + classes)
    options = _options(mode, score, reduction)
    _close(_run(CPU, *problem, options), _run(reference_backend(), *problem, options))


@pytest.mark.parametrize("ignore", ["none", "some", "all"])
@pytest.mark.parametrize("ce_weight,label_smoothing", [(0.0, 0.0), (1.0, 0.0), (1.0, 0.25), (0.0, 0.7)])
@pytest.mark.parametrize("mode,score", RANKINGS)
def test_loss_options(mode, score, ce_weight, label_smoothing, ignore):
    problem = _problem(12, 3, 17, ignore=ignore, seed=7)
    for reduction in REDUCTIONS:
        options = _options(mode, score, reduction, ce_weight=ce_weight, label_smoothing=label_smoothing)
        _close(_run(CPU, *problem, options), _run(reference_backend(), *problem, options))


def _strided(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "transposed":  # column stride != 1
        return t.t().contiguous().t()
    if layout == "row_padded":  # row stride > C: a slice of wider rows
        return torch.cat([t, torch.zeros_like(t[:, :3])], dim=1)[:, : t.shape[1]]
    if layout == "every_other":  # both strides doubled
        return torch.stack([t, t], dim=-1).reshape(t.shape[0], 2 * t.shape[1])[:, ::2]
    return t


@pytest.mark.parametrize("layout", ["transposed", "row_padded", "every_other"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_loss_any_strides(layout, dtype):
    logits, mix_logits, targets, rel = _problem(6, 3, 23, dtype=dtype, seed=3)
    options = _options("mrl", "prob", "none")
    expected = _run(CPU, logits, mix_logits, targets, rel, options)
    actual = _run(CPU, _strided(logits, layout), _strided(mix_logits, layout), targets, rel[:, :], options)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)  # the layout changes no arithmetic
    rel_t = rel.t().contiguous().t()  # rel (K, B) non-contiguous too
    assert torch.equal(_run(CPU, logits, mix_logits, targets, rel_t, options)[0], expected[0])


def _max_error(values, exact):
    return max((v.double() - e.double()).abs().max().item() for v, e in zip(values, exact))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mode,score", RANKINGS)
def test_loss_low_precision(mode, score, dtype):
    """No worse than 2x the reference's own error in that dtype, against a float64 reference."""
    problem = _problem(32, 3, 100, dtype=dtype, seed=11)
    wide = [t.double() if t.is_floating_point() and t.dtype != torch.float32 else t for t in problem]
    for reduction in REDUCTIONS:
        options = _options(mode, score, reduction)
        exact = _run(reference_backend(), *wide, options)
        ref_err = _max_error(_run(reference_backend(), *problem, options), exact)
        cpu_err = _max_error(_run(CPU, *problem, options), exact)
        assert cpu_err <= 2 * ref_err + 1e-6, f"seed {SEED}: {reduction}: cpu {cpu_err:.3g} vs reference {ref_err:.3g}"


def test_argmax_ties_go_to_lowest_index():
    """Integer logits: many rows have tied maxima; the score gradient must hit the first."""
    gen = _gen(5)
    logits = torch.randint(0, 3, (8, 6), generator=gen).float()
    mix_logits = torch.randint(0, 3, (24, 6), generator=gen).float()
    _, _, targets, rel = _problem(8, 3, 6, ignore="none", seed=5)
    for mode, score in RANKINGS:
        options = _options(mode, score, "sum")
        _close(_run(CPU, logits, mix_logits, targets, rel, options),
               _run(reference_backend(), logits, mix_logits, targets, rel, options))


def test_ignored_rows_never_read():
    logits, mix_logits, targets, rel = _problem(6, 3, 9, ignore="none", seed=2)
    targets[[1, 4]] = -100
    for rows in ([1, 4], [7, 10, 13, 16]):  # raw rows, then mix rows k*B + b of the same samples
        (logits if rows[0] < 6 else mix_logits)[rows] = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(3)
    for mode, score in RANKINGS:
        loss, ce, rank, grad_logits, grad_mix = _run(CPU, logits, mix_logits, targets, rel, _options(mode, score, "none"))
        assert torch.isfinite(loss).all() and loss[[1, 4]].eq(0).all()
        assert grad_logits[[1, 4]].eq(0).all() and grad_mix.view(3, 6, 9)[:, [1, 4]].eq(0).all()
        assert torch.isfinite(grad_logits).all() and torch.isfinite(grad_mix).all()


def test_non_finite_valid_logits_give_nan():
    logits, mix_logits, targets, rel = _problem(4, 2, 5, ignore="none", seed=4)
    logits[2, 3] = float("nan")
    mix_logits[4 + 1, 0] = float("inf")
    for mode, score in RANKINGS:
        loss = _run(CPU, logits, mix_logits, targets, rel, _options(mode, score, "none"))[0]
        assert loss[[2]].isnan().all() and torch.isfinite(loss[[0, 3]]).all()


def test_forward_only_and_partial_grads():
    logits, mix_logits, targets, rel = _problem(8, 3, 10, seed=6)
    options = _options()
    with torch.no_grad():
        no_grad = CPU.loss(logits, mix_logits, targets, rel, **options)
    expected = reference.rankmixup_loss_from_relevance(logits, mix_logits, targets, rel, **options)
    torch.testing.assert_close(no_grad.loss, expected.loss)
    raw = logits.clone().requires_grad_()  # only one input needs a gradient
    CPU.loss(raw, mix_logits, targets, rel, **options).loss.backward()
    raw_ref = logits.clone().requires_grad_()
    expected = reference.rankmixup_loss_from_relevance(raw_ref, mix_logits, targets, rel, **options)
    expected.loss.backward()
    torch.testing.assert_close(raw.grad, raw_ref.grad)


def test_retain_graph_backward_twice():
    logits, mix_logits, targets, rel = _problem(8, 3, 10, seed=8)
    raw = logits.clone().requires_grad_()
    loss = CPU.loss(raw, mix_logits, targets, rel, **_options()).loss
    loss.backward(retain_graph=True)
    first = raw.grad.clone()
    (3 * loss).backward()
    torch.testing.assert_close(raw.grad, 4 * first)


def test_bad_targets_raise():
    logits, mix_logits, targets, rel = _problem(4, 1, 5, ignore="none", seed=9)
    targets[0] = 5
    with pytest.raises(RuntimeError, match="outside"):
        CPU.loss(logits, mix_logits, targets, rel, **_options())


# --- mix ---------------------------------------------------------------------------------


def _mix_problem(batch, num_mix, feat, *, per_sample, dtype=torch.float32, seed=0):
    gen = _gen(seed)
    x = torch.randn(batch, *feat, generator=gen, dtype=torch.float64).to(dtype)
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)])
    lam = torch.rand(num_mix, batch if per_sample else 1, generator=gen).expand(num_mix, batch)
    return x, lam, index


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("per_sample", [False, True], ids=["lam(K)", "lam(K,B)"])
@pytest.mark.parametrize("batch,num_mix,feat", [(1, 1, ()), (5, 3, (7,)), (4, 2, (3, 5, 5)), (9, 8, (1,)), (3, 2, (3000,))])
def test_mix_matches_reference(batch, num_mix, feat, per_sample, dtype):
    x, lam, index = _mix_problem(batch, num_mix, feat, per_sample=per_sample, dtype=dtype, seed=batch + num_mix)
    grad = torch.randn(num_mix * batch, *feat, generator=_gen(1), dtype=torch.float64).to(dtype)
    results = []
    for mix in (CPU.mix, reference.mix):
        xr = x.clone().requires_grad_()
        out = mix(xr, lam, index)
        out.backward(grad)
        results.append((out.detach(), xr.grad))
    tol = {torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}.get(dtype, {})
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, **tol, msg=lambda m: f"seed {SEED}: {m}")


def test_mix_non_contiguous_and_lam_grad():
    x, lam, index = _mix_problem(6, 3, (4, 5), per_sample=True, seed=2)
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)
    results = []
    for mix in (CPU.mix, reference.mix):
        xr, lr = x_t.clone().requires_grad_(), lam.clone().requires_grad_()
        out = mix(xr.transpose(1, 2).contiguous().transpose(1, 2), lr, index)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), xr.grad, lr.grad))
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())


def test_mix_bad_index_raises():
    x, lam, index = _mix_problem(4, 2, (3,), per_sample=False, seed=3)
    with pytest.raises(RuntimeError, match="outside"):
        CPU.mix(x, lam, index + 1)
    index[1] = 0  # in range, but not a permutation: the gather-based backward needs one
    out = CPU.mix(x.requires_grad_(), lam, index)
    with pytest.raises(RuntimeError, match="not a permutation"):
        out.sum().backward()


# --- operator registration -----------------------------------------------------------------


def reference_backend():
    from rankmixup_ops.backends import resolve

    return resolve("test", "reference", torch.device("cpu"))


def _loss_args(reduction, *, requires_grad=True):
    logits, mix_logits, targets, rel = _problem(5, 2, 7, seed=12)
    return (logits.requires_grad_(requires_grad), mix_logits.requires_grad_(requires_grad), targets, rel, "mndcg",
            "prob", 1.0, 0.1, 2.0, -100, 0.1, reduction)


@pytest.mark.parametrize("reduction,requires_grad", [("mean", True), ("none", True), ("sum", False)])
def test_opcheck_loss(reduction, requires_grad):
    torch.library.opcheck(torch.ops.rankmixup.loss.default, _loss_args(reduction, requires_grad=requires_grad))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_loss_backward(reduction):
    args = _loss_args(reduction, requires_grad=False)
    _, _, _, row_coefs, row_argmax = torch.ops.rankmixup.loss(*args)
    grad_loss = torch.rand(5) if reduction == "none" else torch.tensor(1.5)
    torch.library.opcheck(torch.ops.rankmixup.loss_backward.default,
                          (grad_loss, *args[:3], row_coefs, row_argmax, -100))


@pytest.mark.parametrize("per_sample", [False, True])
def test_opcheck_mix(per_sample):
    x, lam, index = _mix_problem(5, 3, (2, 3), per_sample=per_sample, seed=13)
    torch.library.opcheck(torch.ops.rankmixup.mix.default, (x.requires_grad_(), lam, index))
    grad = torch.randn(15, 2, 3)
    torch.library.opcheck(torch.ops.rankmixup.mix_backward.default, (grad, lam, index))


def test_compiled_training_step_has_no_graph_break():
    model = torch.nn.Linear(8, 5)
    x = torch.randn(6, 8)
    _, _, targets, rel = _problem(6, 3, 5, seed=14)
    _, lam, index = _mix_problem(6, 3, (8,), per_sample=True, seed=14)

    def step(x):
        out = model(torch.cat([x, CPU.mix(x, lam, index)]))
        return CPU.loss(out[:6], out[6:], targets, rel, **_options("mrl", "prob")).loss

    step(x).backward()
    grad = model.weight.grad.clone()
    model.zero_grad()
    torch.compile(step, fullgraph=True, backend="aot_eager")(x).backward()
    torch.testing.assert_close(model.weight.grad, grad)
