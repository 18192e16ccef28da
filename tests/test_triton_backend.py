"""The Triton backend against the reference: values, parts and gradients of the fused loss,
and the mix and its gradient.

Without a GPU the kernels run on CPU tensors under Triton's interpreter (conftest.py switches
it on before any test module imports Triton). With a GPU the same tests run on CUDA tensors
(marked gpu), plus the opcheck and torch.compile tests, which the interpreter cannot run: it
cannot trace a triton_op with fake tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

import rankmixup_ops as rmx  # noqa: E402
from rankmixup_ops import reference  # noqa: E402
from rankmixup_ops._types import LossOptions, accumulation_dtype  # noqa: E402
from rankmixup_ops.triton import BACKEND  # noqa: E402
from rankmixup_ops.triton import cutmix as triton_cutmix  # noqa: E402
from rankmixup_ops.triton import eager as triton_eager  # noqa: E402
from rankmixup_ops.triton import loss as triton_loss  # noqa: E402
from rankmixup_ops.triton import mix as triton_mix  # noqa: E402
from rankmixup_ops.triton import reduce as triton_reduce  # noqa: E402

_CPU_REASON = BACKEND.unsupported(torch.device("cpu"))
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(_CPU_REASON is not None, reason=str(_CPU_REASON))),
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
    ),
]
REFERENCE = reference.load_backend("reference")
# (mode, score) pairs: M-NDCG always ranks by confidence.
RANKINGS = [("mrl", "logit"), ("mrl", "prob"), ("mndcg", "logit")]


def _problem(device, *, batch=6, classes=37, num_mix=3, dtype=torch.float32, seed=0, tied_lam=False):
    """Random logits, targets, lam and index with one ignored sample and one same-class pair
    (relevance 1, MRL mask off)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=gen, dtype=torch.float64) * 3
    mix_logits = torch.randn(num_mix * batch, classes, generator=gen, dtype=torch.float64) * 3
    targets = torch.randint(0, classes, (batch,), generator=gen)
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)])
    lam = torch.rand(num_mix, batch, generator=gen)
    if tied_lam:  # equal relevances: the M-NDCG order must fall back to k ascending
        lam[num_mix // 2 :] = lam[0]
    if batch > 2:
        targets[index[0, 1]] = targets[1]
        targets[batch - 1] = -100
    lam = lam.to(torch.float64 if dtype == torch.float64 else torch.float32)
    return [t.to(device) for t in (logits.to(dtype), mix_logits.to(dtype), targets, lam, index)]


def _options(mode="mndcg", score="logit", reduction="mean", **overrides):
    margin = 2.0 if score == "logit" else 0.3
    return LossOptions(mode=mode, score=score, alpha=0.7, margin=margin, reduction=reduction)._replace(**overrides)


def _run(loss_fn, logits, mix_logits, targets, lam, index, options, grad_scale=0.7, **kwargs):
    """Loss parts and the gradients of ``grad_scale * loss`` (a fixed random weight per sample
    for reduction="none") with respect to both logit tensors."""
    logits = logits.detach().requires_grad_()
    mix_logits = mix_logits.detach().requires_grad_()
    out = loss_fn(logits, mix_logits, targets, lam, index, options, **kwargs)
    weight = torch.full_like(out.loss, grad_scale)
    if out.loss.dim():
        weight = torch.linspace(-1, 2, out.loss.numel(), dtype=out.loss.dtype, device=out.loss.device)
    grads = torch.autograd.grad(out.loss, (logits, mix_logits), weight)
    return (*out, *grads)


def _assert_matches_reference(inputs, options, **kwargs):
    got = _run(triton_loss.rankmixup_loss, *inputs, options, **kwargs)
    want = _run(REFERENCE.loss, *inputs, options)
    for name, g, w in zip(("loss", "ce", "rank", "grad logits", "grad mix"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("mode", "score"), RANKINGS)
def test_loss_matches_reference_chunked(device, mode, score, reduction):
    """C = 37 in chunks of 16: the online softmax crosses chunk boundaries."""
    options = _options(mode, score, reduction, label_smoothing=0.1 if reduction == "sum" else 0.0)
    _assert_matches_reference(_problem(device), options, block_c=16)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_mix", range(1, 9))
@pytest.mark.parametrize("mode", ["mrl", "mndcg"])
def test_loss_every_num_mix(device, num_mix, mode):
    """K = 1..8 (row tiles of 2, 4, 8 and 16 slots), tied relevances, one chunk."""
    inputs = _problem(device, batch=5, classes=10, num_mix=num_mix, seed=num_mix, tied_lam=True)
    _assert_matches_reference(inputs, _options(mode, "prob" if num_mix % 2 else "logit"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("mode", "score"), RANKINGS)
def test_argmax_ties_go_to_the_lowest_class(device, mode, score):
    """Small-integer logits tie often, within and across chunks of 8; the score and its
    gradient must follow the first maximum, as torch.argmax does."""
    logits, mix_logits, targets, lam, index = _problem(device, batch=4, classes=29)
    logits, mix_logits = logits.round().clamp(-2, 2), mix_logits.round().clamp(-2, 2)
    _assert_matches_reference((logits, mix_logits, targets, lam, index), _options(mode, score), block_c=8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("batch", "classes", "block_c"), [(1, 1, 0), (1, 300, 32), (3, 129, 0), (2, 1000, 64)])
def test_loss_odd_sizes(device, batch, classes, block_c):
    inputs = _problem(device, batch=batch, classes=classes, num_mix=2, seed=classes)
    for mode, score in RANKINGS:
        _assert_matches_reference(inputs, _options(mode, score, label_smoothing=0.05), block_c=block_c)


@pytest.mark.parametrize("device", DEVICES)
def test_ignored_samples_are_inert(device):
    """Ignored samples' non-finite logits reach no output, and their rows get exactly zero."""
    logits, mix_logits, targets, lam, index = _problem(device)
    ignored = (targets == -100).nonzero().flatten()
    logits[ignored] = float("nan")
    mix_logits.view(3, 6, -1)[:, ignored] = float("inf")
    for mode, score in RANKINGS:
        got = _run(triton_loss.rankmixup_loss, logits, mix_logits, targets, lam, index, _options(mode, score),
                   block_c=16)
        assert all(bool(t.isfinite().all()) for t in got)
        assert not got[3][ignored].any() and not got[4].view(3, 6, -1)[:, ignored].any()
        _assert_matches_reference((logits, mix_logits, targets, lam, index), _options(mode, score))


@pytest.mark.parametrize("device", DEVICES)
def test_masked_leading_chunk_is_not_nan(device):
    """-inf logits are masked classes even when a whole chunk of the online softmax holds
    nothing else (where max - max would be NaN)."""
    logits, mix_logits, targets, lam, index = _problem(device, classes=40)
    logits[:, :16] = float("-inf")
    mix_logits[:, 16:32] = float("-inf")
    targets[targets < 16] = 20  # keep every valid label on a finite logit
    options = _options(mode="mrl", score="prob")
    got = _run(triton_loss.rankmixup_loss, logits, mix_logits, targets, lam, index, options, block_c=16)
    assert all(bool(t.isfinite().all()) for t in got)
    _assert_matches_reference((logits, mix_logits, targets, lam, index), options, block_c=16)


@pytest.mark.parametrize("device", DEVICES)
def test_label_out_of_range_gives_nan_for_its_sample_only(device):
    """Checking a label's range would need a host sync: the sample's loss is NaN instead."""
    logits, mix_logits, targets, lam, index = _problem(device)
    valid = (targets != -100).nonzero().flatten()
    targets[valid[0]] = logits.shape[1]
    got = _run(triton_loss.rankmixup_loss, logits, mix_logits, targets, lam, index, _options(reduction="none"))
    others = valid[1:]
    assert got[1][valid[0]].isnan() and got[0][valid[0]].isnan() and got[3][valid[0]].isnan().all()
    assert got[0][others].isfinite().all() and got[3][others].isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("mode", "score"), RANKINGS)
def test_partner_outside_the_batch_gives_nan_for_its_sample_only(device, mode, score):
    """Likewise for a partner index outside [0, B): its sample is NaN, whatever the ranking."""
    logits, mix_logits, targets, lam, index = _problem(device)
    valid = (targets != -100).nonzero().flatten()
    index[1, valid[0]] = logits.shape[0]
    got = _run(triton_loss.rankmixup_loss, logits, mix_logits, targets, lam, index, _options(mode, score, "none"))
    others = valid[1:]
    assert got[0][valid[0]].isnan() and got[3][valid[0]].isnan().all()
    assert got[0][others].isfinite().all() and got[3][others].isfinite().all()


# M-NDCG: its (KP, KP) ranking of 2048 x 2048; MRL: its 131072 rows of 16 classes.
@pytest.mark.parametrize(("mode", "num_mix", "classes", "tile"), [("mndcg", 1025, 2, 2**22), ("mrl", 65536, 16, 2**21)])
def test_more_mixes_than_a_tile_holds_raise(mode, num_mix, classes, tile):
    """Past Triton's tile size the kernel cannot compile: a ValueError says so before any launch."""
    logits, mix_logits, targets, lam, index = _problem("cpu", batch=1, classes=classes, num_mix=num_mix)
    with pytest.raises(ValueError, match=f"K = {num_mix} mixes per sample, which the triton backend's {mode} kernel "
                                         f"would hold in a tile of {tile} elements, more than Triton's 1048576"):
        triton_loss.rankmixup_loss(logits, mix_logits, targets, lam, index, LossOptions(mode=mode))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_of_a_call_without_gradient_rows(device):
    """A direct call whose lam alone requires grad writes no gradient rows (need_grad False):
    autograd still runs the backward, which gives no input a gradient."""
    logits, mix_logits, targets, lam, index = _problem(device)
    lam.requires_grad_()
    options = ("mndcg", "logit", -100, 1.0, 0.1, 2.0, 0.0)
    loss, _, _, grad = triton_loss.fused_loss(logits, mix_logits, targets, lam, index, *options, False, 0)
    assert grad.shape[0] == 0 and loss.requires_grad
    assert torch.autograd.grad(loss.sum(), lam, allow_unused=True) == (None,)


@pytest.mark.parametrize("device", DEVICES)
def test_only_the_loss_is_differentiable(device):
    """As in the C++ loss op: the parts and the gradient rows of fused_loss, and the parts and
    scale of reduce_loss, carry no gradient, called directly too."""
    logits, mix_logits, targets, lam, index = _problem(device)
    logits.requires_grad_()
    options = ("mndcg", "logit", -100, 1.0, 0.1, 2.0, 0.0)
    loss, *others = triton_loss.fused_loss(logits, mix_logits, targets, lam, index, *options, True, 0)
    assert loss.requires_grad and not any(t.requires_grad for t in others)
    total, *parts = triton_reduce.reduce_loss(loss, others[0], others[1], targets, -100, True)
    assert total.requires_grad and not any(t.requires_grad for t in parts)


@pytest.mark.parametrize("device", DEVICES)
def test_partner_of_an_ignored_sample_is_unread(device):
    """An ignored sample's partners are never read: one outside [0, B) changes nothing."""
    logits, mix_logits, targets, lam, index = _problem(device)
    ignored = (targets == -100).nonzero().flatten()[0]
    options = _options(reduction="none")
    expected = _run(triton_loss.rankmixup_loss, logits, mix_logits, targets, lam, index, options)
    index[1, ignored] = -logits.shape[0]
    got = _run(triton_loss.rankmixup_loss, logits, mix_logits, targets, lam, index, options)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("mode", "score"), RANKINGS)
def test_derived_relevance_is_the_given_one(device, mode, score):
    """The kernel's relevances from lam and the partners' labels are reference.relevance's, bit
    for bit (tied lam, a same-class pair, a (K,) lam expanded)."""
    logits, mix_logits, targets, lam, index = _problem(device, tied_lam=True)
    for pairing_lam in (lam, lam[:, :1].expand(lam.shape)):
        options = _options(mode, score, "none")
        derived = _run(triton_loss.rankmixup_loss, logits, mix_logits, targets, pairing_lam, index, options)
        rel = reference.relevance(targets, pairing_lam, index)
        given = _run(triton_loss.rankmixup_loss, logits, mix_logits, targets, rel, None, options)
        for a, b in zip(derived, given):
            assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_samples_ignored_gives_zero_not_nan(device, reduction):
    logits, mix_logits, targets, lam, index = _problem(device, batch=3)
    targets = torch.full_like(targets, 7)
    options = _options(reduction=reduction, ignore_index=7)
    got = _run(triton_loss.rankmixup_loss, logits, mix_logits, targets, lam, index, options)
    assert all(not t.any() for t in got)


@pytest.mark.parametrize("device", DEVICES)
def test_hyperparameters_reach_the_kernel(device):
    """ce_weight (0 for the rank terms alone), alpha and a large label smoothing."""
    inputs = _problem(device)
    for overrides in (dict(ce_weight=0.0), dict(alpha=0.0), dict(alpha=3.0, label_smoothing=0.9, ce_weight=0.5)):
        for mode, score in RANKINGS:
            _assert_matches_reference(inputs, _options(mode, score, **overrides), block_c=32)


class _AtenLog(TorchDispatchMode):
    """The ATen operators dispatched inside it, by name."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_fills_no_zeros(device, reduction):
    """Only the loss carries a gradient: the backward must not have autograd fill zeros for the
    other outputs (ce, rank, and the gradient rows: a buffer the size of all the logits)."""
    logits, mix_logits, targets, lam, index = _problem(device)
    logits.requires_grad_()
    mix_logits.requires_grad_()
    out = triton_loss.rankmixup_loss(logits, mix_logits, targets, lam, index, _options(reduction=reduction))
    log = _AtenLog()
    with log:
        torch.autograd.grad(out.loss.sum(), (logits, mix_logits))
    assert "fused_loss_backward.default" in log.names
    assert not [name for name in log.names if "zero" in name or "fill" in name], log.names


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_forward_is_one_or_two_launches(device, reduction):
    """The fused kernel, and for a mean or a sum the one-program reduction (reduce.py): no
    PyTorch operator computes anything around them (each would be a launch of its own)."""
    logits, mix_logits, targets, lam, index = _problem(device)
    log = _AtenLog()
    with log:
        triton_loss.rankmixup_loss(logits, mix_logits, targets, lam, index, _options(reduction=reduction))
    launched = [name for name in log.names if name != "detach.default"]
    assert launched == ["fused_loss.default"] + ([] if reduction == "none" else ["reduce_loss.default"])


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_forward_writes_no_gradient(device):
    logits, mix_logits, targets, lam, index = _problem(device)
    options = _options(reduction="none")
    with torch.no_grad():
        out = triton_loss.fused_loss(
            logits, mix_logits, targets, lam, index, "mndcg", "logit", -100, 1.0, 0.7, 2.0, 0.0, False, 0
        )
    assert out[3].shape == (0, logits.shape[1])
    want = REFERENCE.loss(logits, mix_logits, targets, lam, index, options)
    torch.testing.assert_close(out[0], want.loss)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("mode", "score"), RANKINGS)
def test_low_precision_within_twice_torch_error(device, dtype, mode, score):
    """Against a float64 reference, no worse than twice the reference's own error in the dtype
    (plus one unit in the last place under the interpreter, which rounds float32 to bfloat16
    by truncation where the GPU rounds to nearest)."""
    logits, mix_logits, targets, lam, index = _problem(device)
    exact = [logits.double(), mix_logits.double(), targets, lam.double(), index]
    low = [logits.to(dtype), mix_logits.to(dtype), targets, lam, index]
    options = _options(mode, score, label_smoothing=0.1)
    want = _run(REFERENCE.loss, *exact, options)
    torch_own = _run(REFERENCE.loss, *low, options)
    got = _run(triton_loss.rankmixup_loss, *low, options, block_c=16)
    truncating = device == "cpu" and dtype == torch.bfloat16
    for name, g, t, w in zip(("loss", "ce", "rank", "grad logits", "grad mix"), got, torch_own, want):
        assert g.dtype == t.dtype, name
        scale = w.abs().max().item()
        slack = torch.finfo(g.dtype).eps * scale if truncating else 0.0
        bound = 2 * (t.double() - w).abs().max().item() + 1e-5 * scale + slack
        assert (g.double() - w).abs().max().item() <= bound, name


@pytest.mark.parametrize("device", DEVICES)
def test_float64_is_computed_in_float64(device):
    inputs = _problem(device, dtype=torch.float64)
    for mode, score in RANKINGS:
        got = _run(triton_loss.rankmixup_loss, *inputs, _options(mode, score, label_smoothing=0.1), block_c=16)
        want = _run(REFERENCE.loss, *inputs, _options(mode, score, label_smoothing=0.1))
        for g, w in zip(got, want):
            # Interpreted kernels receive the hyperparameters as float32, compiled ones as float64.
            torch.testing.assert_close(g, w, rtol=1e-7 if device == "cpu" else 1e-10, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_public_api_with_strided_inputs(device):
    """Through rankmixup_loss(backend="triton"): column-strided logits, (K, B, C) sliced mixes,
    targets a column of a (B, 2) tensor (stride 2)."""
    logits, mix_logits, targets, _, _ = _problem(device)
    targets = torch.stack([targets, torch.zeros_like(targets)], dim=1)[:, 0]
    assert targets.stride(0) == 2
    gen = torch.Generator().manual_seed(3)
    lam = torch.rand(3, generator=gen).to(device)
    index = torch.stack([torch.randperm(6, generator=gen) for _ in range(3)]).to(device)
    strided = logits.t().contiguous().t()
    padded = torch.cat([mix_logits, mix_logits[:, :5]], dim=1).view(3, 6, -1)[..., :37]
    assert strided.stride(1) != 1 and not padded.is_contiguous()
    for fn, kwargs in ((rmx.rankmixup_loss, dict(mode="mrl")), (rmx.mrl_loss, {}), (rmx.mndcg_loss, {})):
        parts = [t.detach().requires_grad_() for t in (strided, padded)]
        got = fn(*parts, targets, lam, index, backend="triton", **kwargs)
        got = got.loss if isinstance(got, rmx.LossOutput) else got
        got_grads = torch.autograd.grad(got, parts)
        ref = [t.detach().requires_grad_() for t in (strided, padded)]
        want = fn(*ref, targets, lam, index, backend="reference", **kwargs)
        want = want.loss if isinstance(want, rmx.LossOutput) else want
        want_grads = torch.autograd.grad(want, ref)
        torch.testing.assert_close(got, want)
        for g, w in zip(got_grads, want_grads):
            torch.testing.assert_close(g, w)


# Sizes as torch.compile traces them with dynamic shapes (a batch of 300, 3 mixes, 100 and 1000
# classes: where the warps or tiles came out as SymInts before).
@pytest.mark.parametrize("config", [
    lambda size: triton_reduce.reduce_launch_config(size(300)),
    lambda size: triton_loss.loss_launch_config(size(3), size(100)),
    lambda size: triton_loss.loss_launch_config(size(3), size(200), 64),
    lambda size: triton_loss.scale_launch_config(size(1000)),
    lambda size: triton_mix.mix_launch_config(size(3 * 32 * 32)),
], ids=["reduce", "loss", "loss-capped", "scale", "mix"])
def test_launch_configs_are_python_ints_for_symbolic_sizes(config):
    """A SymInt num_warps cannot be written into Inductor's generated launcher: every value of a
    launch configuration is a Python int, and the same as for the sizes' values."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()

    def symbolic(value):
        return env.create_symintnode(env.create_symbol(value, source=ConstantSource(f"s{value}")), hint=value)

    traced = config(symbolic)
    assert all(type(value) is int for value in traced.values()), traced
    assert traced == config(int)


# --- mix --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    ("shape", "num_mix", "per_sample"),
    [((5,), 1, False), ((4, 33), 3, True), ((3, 2, 3, 5), 2, False), ((2, 0, 3), 2, True)],
)
def test_mix_matches_reference(device, dtype, shape, num_mix, per_sample):
    gen = torch.Generator().manual_seed(len(shape))
    batch = shape[0]
    x = torch.randn(shape, generator=gen).to(device, dtype)
    lam = torch.rand(num_mix, batch if per_sample else 1, generator=gen).expand(num_mix, batch)
    lam = lam.to(device, accumulation_dtype(dtype))  # as the public mix hands it to a backend
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)]).to(device)
    grad = torch.randn(num_mix * batch, *shape[1:], generator=gen).to(device, dtype)
    got, got_grad = _mix_and_grad(BACKEND.mix, x, lam, index, grad)
    want, want_grad = _mix_and_grad(reference.mix, x, lam, index, grad)
    # One bfloat16 ulp: the interpreter rounds float32 to bfloat16 by truncation.
    tolerance = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(got, want, **tolerance)
    torch.testing.assert_close(got_grad, want_grad, **tolerance)


@pytest.mark.parametrize("device", DEVICES)
def test_mix_strided_input_and_several_feature_blocks(device):
    """A transposed input (copied to unit stride) and rows longer than one block."""
    batch, features = 3, 2 * triton_mix.MAX_BLOCK + 5
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(features, batch, generator=gen).to(device).t()
    lam = torch.rand(2, batch, generator=gen).to(device)
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(2)]).to(device)
    grad = torch.randn(2 * batch, features, generator=gen).to(device)
    for got, want in zip(_mix_and_grad(rmx.mix, x, lam, index, grad, backend="triton"),
                         _mix_and_grad(reference.mix, x, lam, index, grad)):
        torch.testing.assert_close(got, want)


def _mix_and_grad(fn, x, lam, index, grad, **kwargs):
    x = x.detach().requires_grad_()
    out = fn(x, lam, index, **kwargs)
    return out, torch.autograd.grad(out, x, grad)[0]


# --- GPU only ----------------------------------------------------------------------------


def _op_samples(device):
    logits, mix_logits, targets, lam, index = _problem(device)
    logits.requires_grad_()
    mix_logits.requires_grad_()
    for mode, score in RANKINGS:
        options = (mode, score, -100, 1.0, 0.7, 2.0, 0.1, True, 16)
        yield triton_loss.fused_loss, (logits, mix_logits, targets, lam, index, *options)
    rel = reference.relevance(targets, lam, index)  # the relevances given, as the drop-in classes give them
    yield triton_loss.fused_loss, (logits, mix_logits, targets, rel, None, *options)
    x = torch.randn(6, 3, 5, device=device, requires_grad=True)
    index = torch.stack([torch.randperm(6, device=device) for _ in range(3)])
    per_sample = [torch.rand(6, device=device, requires_grad=i == 0) for i in range(3)]  # loss, ce, rank
    yield triton_reduce.reduce_loss, (*per_sample, targets, -100, True, None)
    yield triton_reduce.reduce_loss, (*per_sample, targets, -100, True, torch.tensor(0.25, device=device))
    yield triton_reduce.reduce_loss, (*per_sample, targets, -100, False, None)
    yield triton_mix.mix, (x, torch.rand(3, 6, device=device), index)
    images = torch.randn(6, 3, 5, 7, device=device).to(memory_format=torch.channels_last).requires_grad_()
    boxes = rmx.sample_cutmix(5, 7, 6, 3, 1.0, per_sample=True, device=device)[0]
    yield triton_cutmix.paste_boxes, (images, boxes, index)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_opcheck():
    for op, args in _op_samples("cuda"):
        torch.library.opcheck(op, args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_training_step_has_no_graph_breaks():
    torch._dynamo.reset()
    model = torch.nn.Linear(12, 37).cuda()
    x = torch.randn(6, 12, device="cuda")
    targets = torch.randint(0, 37, (6,), device="cuda")

    def loss(x, lam, index):
        mixed = rmx.mix(x, lam, index, backend="triton")
        return rmx.rankmixup_loss(model(x), model(mixed), targets, lam, index, backend="triton").loss

    lam, index = rmx.sample_mixup(6, 3, 2.0, device="cuda")
    x.requires_grad_()
    results = []
    for fn in (torch.compile(loss, fullgraph=True), loss):
        value = fn(x, lam, index)
        value.backward()
        results.append((value.detach(), model.weight.grad, x.grad))
        model.weight.grad = x.grad = None
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch,classes", [(300, 100), (130, 1000)])
def test_compiled_with_dynamic_shapes(batch, classes):
    """torch.compile(dynamic=True) traces the launches with symbolic sizes (where the warps once
    came out as SymInts, which Inductor's launcher cannot hold): loss and gradients equal the
    reference's."""
    torch._dynamo.reset()
    logits, mix_logits, targets, lam, index = _problem("cuda", batch=batch, classes=classes)
    logits.requires_grad_()
    mix_logits.requires_grad_()

    def loss(logits, mix_logits, backend):
        return rmx.rankmixup_loss(logits, mix_logits, targets, lam, index, backend=backend).loss

    compiled = torch.compile(loss, dynamic=True, fullgraph=True)
    results = []
    for fn, backend in ((compiled, "triton"), (loss, "reference")):
        value = fn(logits, mix_logits, backend)
        results.append((value, *torch.autograd.grad(value, (logits, mix_logits))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


class _PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Subclass(torch.Tensor):
    pass


def test_eager_calls_are_direct_only_where_that_is_the_same(monkeypatch):
    """triton/eager.py: plain tensors in eager mode take the op's direct form; a dispatch or
    function mode, or a tensor subclass, takes the op (which they see)."""
    op = triton_mix.mix
    monkeypatch.setitem(triton_eager._DIRECT, op, lambda *args: "direct")
    x, lam, index = torch.randn(4, 3), torch.rand(2, 4), torch.stack([torch.randperm(4) for _ in range(2)])
    if _CPU_REASON is None:
        assert triton_eager.call(op, x, lam, index) == "direct"
    for context in (_PassThrough(), torch.device("cpu")):
        with context:
            assert triton_eager.call(op, x, lam, index) != "direct"
    assert triton_eager.call(op, x.as_subclass(_Subclass), lam, index) != "direct"
    # torch.func's transforms and the JIT tracer: vmap batches the op by a loop, where the
    # direct form would be refused; a trace records the op, where the direct form would hand
    # the tracer's shape tensors to a kernel.
    taken = []
    torch.func.vmap(lambda row: taken.append(triton_eager.call(op, row, lam, index)) or row)(x.unsqueeze(0))
    torch.jit.trace(lambda t: taken.append(triton_eager.call(op, t, lam, index)) or t, (x,), check_trace=False)
    assert len(taken) == 2 and "direct" not in taken


def _op_form(fn, *args):
    """``fn(*args)`` with every op called as an op: a dispatch mode that only passes calls on."""
    with _PassThrough():
        return fn(*args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_loss_direct_and_op_forms_agree(device, reduction):
    """The direct form runs the op's own body, setup_context and backward: the same numbers,
    gradients included (retain_graph for a second backward, as the op's)."""
    inputs = _problem(device)
    options = _options(reduction=reduction, weight=torch.rand(37, device=device))
    direct = _run(triton_loss.rankmixup_loss, *inputs, options)
    op = _op_form(_run, triton_loss.rankmixup_loss, *inputs, options)
    for d, o in zip(direct, op):
        torch.testing.assert_close(d, o, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_mixing_direct_and_op_forms_agree(device):
    """mix (in x and lam, and its double backward) and paste_boxes, both forms."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, 3, 5, generator=gen, dtype=torch.float64).to(device)
    lam = torch.rand(3, 6, generator=gen, dtype=torch.float64).to(device)
    index = torch.stack([torch.randperm(6, generator=gen) for _ in range(3)]).to(device)
    boxes = rmx.sample_cutmix(3, 5, 6, 3, 1.0, per_sample=True, device=device)[0]

    def derivatives(op, pairing):
        x_ = x.clone().requires_grad_()
        pairing_ = pairing.clone().requires_grad_() if pairing.is_floating_point() else pairing
        out = getattr(BACKEND, op)(x_, pairing_, index)
        first = torch.autograd.grad(out.pow(2).sum(), (x_, pairing_) if pairing_.requires_grad else (x_,))
        # The second derivative in x, lam held constant (in lam, mix's backward refuses one).
        (grad_x,) = torch.autograd.grad(getattr(BACKEND, op)(x_, pairing, index).pow(2).sum(), x_, create_graph=True)
        (second,) = torch.autograd.grad(grad_x.pow(2).sum(), x_)
        return (out, *first, second)

    for op, pairing in (("mix", lam), ("paste_boxes", boxes)):
        for d, o in zip(derivatives(op, pairing), _op_form(derivatives, op, pairing)):
            torch.testing.assert_close(d, o, rtol=0, atol=0)
