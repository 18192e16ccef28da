"""Class weights (``weight=``) in the loss: the CE term weighted exactly as
``torch.nn.functional.cross_entropy(weight=...)`` weights it, the rank term unweighted, on every
backend, forward and backward; the module's buffer; bad input. (opcheck of the weighted
operators: test_compiled_backends.py.)

Fresh random inputs every run (backend_cases.SEED, named in every failure).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backend_cases import RANKINGS, REDUCTIONS, SEED, close, gen, options, problem, reference_backend, run

import rankmixup_ops as rmx
from rankmixup_ops import reference
from rankmixup_ops.backends import resolve

try:
    from rankmixup_ops.triton import BACKEND as TRITON

    TRITON_REASON = TRITON.unsupported(torch.device("cpu"))
except ImportError as error:  # pragma: no cover - triton is a pinned dependency
    TRITON_REASON = str(error)

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
# (backend, device): every backend of the loss; the reference is the oracle.
BACKENDS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "cpu", id="triton-interpreter",
                 marks=pytest.mark.skipif(TRITON_REASON is not None, reason=str(TRITON_REASON))),
    pytest.param("cuda", "cuda", id="cuda", marks=GPU),
    pytest.param("triton", "cuda", id="triton-cuda", marks=GPU),
]
# (B, K, C, dtype), small enough for Triton's interpreter: single samples, one class, one chunk,
# several; each dtype on two of them (each case is a Triton compile on a GPU).
CASES = [(1, 1, 1, torch.float32), (7, 2, 10, torch.float64), (16, 3, 33, torch.float32), (5, 1, 300, torch.float64)]


def class_weights(classes, *, dtype=torch.float32, seed=0, device="cpu"):
    """Positive weights of varied size, with a zero among them where there are several classes."""
    weight = torch.rand(classes, generator=gen(seed + 7), dtype=torch.float64) * 3 + 0.1
    if classes > 2:
        weight[1] = 0.0
    return weight.to(dtype).to(device)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_reference_ce_is_torch_weighted_cross_entropy(reduction, label_smoothing, ignore_index):
    """alpha = 0 leaves the CE alone: it must be F.cross_entropy's, ignore_index and smoothing included."""
    logits, mix_logits, targets, _, _ = problem(12, 2, 6, dtype=torch.float64, ignore="none", seed=3)
    targets[::4] = ignore_index
    # One valid target of a nonzero weight: else (targets drawn from 0..2, class 1 weighing 0,
    # class 2 ignored, about 1 seed in 40) the weights sum to 0, where torch's mean is 0/0 and
    # ours is 0 by convention (test_mean_over_zero_total_weight_is_zero).
    targets[1] = 0
    weight = class_weights(6, dtype=torch.float64)
    lam = torch.rand(2, 12, generator=gen(4), dtype=torch.float64)
    index = torch.stack([torch.randperm(12, generator=gen(5 + k)) for k in range(2)])
    out = rmx.rankmixup_loss(logits, mix_logits, targets, lam, index, alpha=0.0, weight=weight,
                             ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                             backend="reference")
    want = F.cross_entropy(logits, targets, weight=weight, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction=reduction)
    if reduction == "none":  # torch gives ignored samples 0 as well
        want = torch.where(targets != ignore_index, want, 0)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.ce, want, rtol=1e-12, atol=1e-12)


def test_rank_term_is_unweighted():
    logits, mix_logits, targets, lam, index = problem(9, 3, 8, dtype=torch.float64, seed=6)
    opts = options("mrl", "logit", "mean")
    plain = reference_backend().loss(logits, mix_logits, targets, lam, index, opts)
    weighted = reference_backend().loss(logits, mix_logits, targets, lam, index,
                                        opts._replace(weight=class_weights(8, dtype=torch.float64)))
    torch.testing.assert_close(weighted.rank, plain.rank, rtol=0, atol=0)
    assert not torch.equal(weighted.ce, plain.ce)


# Hyperparameters float32 holds exactly: Triton's interpreter passes floats as float32.
@pytest.mark.parametrize("label_smoothing", [0.0, 0.125])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode,score", RANKINGS)
@pytest.mark.parametrize("batch,num_mix,classes,dtype", CASES)
@pytest.mark.parametrize("name,device", BACKENDS)
def test_backend_matches_reference(name, device, batch, num_mix, classes, mode, score, reduction, label_smoothing,
                                   dtype):
    seed = batch * 1000 + num_mix * 10 + classes
    prob = problem(batch, num_mix, classes, dtype=dtype, seed=seed, device=device)
    weight = class_weights(classes, dtype=dtype, seed=seed, device=device)
    opts = options(mode, score, reduction, alpha=0.25, label_smoothing=label_smoothing, weight=weight)
    got = run(resolve("test", name, torch.device(device)), *prob, opts)
    want = run(resolve("test", "reference", torch.device(device)), *prob, opts)
    close(got, want, rtol=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.skipif(TRITON_REASON is not None, reason=str(TRITON_REASON))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.125])
def test_triton_weighted_chunks_match_reference(label_smoothing):
    """Triton's chunked sweeps (block_c=8 over 37 classes) load the weights chunk by chunk."""
    from rankmixup_ops.triton import loss as triton_loss

    class Chunked:  # the Triton backend's loss, in chunks of 8 classes
        @staticmethod
        def loss(*args):
            return triton_loss.rankmixup_loss(*args, block_c=8)

    prob = problem(6, 3, 37, seed=14)
    opts = options("mrl", "prob", "mean", alpha=0.25, label_smoothing=label_smoothing,
                   weight=class_weights(37, seed=14))
    got = run(Chunked, *prob, opts)
    want = run(resolve("test", "reference", torch.device("cpu")), *prob, opts)
    close(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name,device", BACKENDS)
def test_narrow_dtypes_match_reference(name, device, dtype):
    """Narrow logits take the loss_backward op on the compiled backends (no gradient written in
    the forward): its per-class constant is checked here."""
    prob = problem(8, 2, 19, dtype=dtype, seed=11, device=device)
    opts = options("mndcg", "logit", "mean", weight=class_weights(19, seed=11, device=device))
    got = run(resolve("test", name, torch.device(device)), *prob, opts)
    want = run(resolve("test", "reference", torch.device(device)), *prob, opts)
    close(got[:3], want[:3], rtol=1e-5)
    for a, e in zip(got[3:], want[3:]):
        torch.testing.assert_close(a, e, rtol=2 * torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps,
                                   msg=lambda m: f"seed {SEED}: {m}")


@pytest.mark.parametrize("name,device", BACKENDS)
def test_second_backward_matches_first(name, device):
    """retain_graph: the CPU's second backward runs loss_backward, not the forward's gradient."""
    logits, mix_logits, targets, lam, index = problem(6, 2, 9, seed=13, device=device)
    logits.requires_grad_()
    opts = options("mrl", "prob", "mean", weight=class_weights(9, seed=13, device=device))
    loss = resolve("test", name, torch.device(device)).loss(logits, mix_logits, targets, lam, index, opts).loss
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(second, first, rtol=1e-6, atol=1e-7, msg=lambda m: f"seed {SEED}: {m}")


@pytest.mark.parametrize("name,device", [pytest.param("reference", "cpu", id="reference")] + BACKENDS)
def test_mean_over_zero_total_weight_is_zero(name, device):
    """Valid targets whose classes all weigh 0 make the CE's mean 0 (not torch's 0/0 = NaN), its gradient 0."""
    logits, mix_logits, targets, lam, index = problem(5, 2, 4, ignore="none", seed=17, device=device)
    weight = torch.ones(4, device=device)
    weight[targets] = 0.0
    opts = options("mndcg", "logit", "mean", label_smoothing=0.1, weight=weight)
    loss, ce, rank, grad_logits, _ = run(resolve("test", name, torch.device(device)), logits, mix_logits, targets,
                                         lam, index, opts)
    assert ce.item() == 0.0
    torch.testing.assert_close(loss, opts.alpha * rank)
    assert torch.isfinite(grad_logits).all()


def test_module_holds_weight_as_buffer():
    weight = class_weights(10, dtype=torch.float64)
    criterion = rmx.RankMixupLoss(mode="mrl", weight=weight, label_smoothing=0.1)
    assert "weight" in criterion.state_dict()
    logits, mix_logits, targets, lam, index = problem(7, 2, 10, seed=19)
    lam = torch.rand(2, 7, generator=gen(20))
    index = torch.stack([torch.randperm(7, generator=gen(21 + k)) for k in range(2)])
    out = criterion(logits, mix_logits, targets, lam, index)
    want = rmx.rankmixup_loss(logits, mix_logits, targets, lam, index, mode="mrl", weight=weight,
                              label_smoothing=0.1)
    torch.testing.assert_close(out.loss, want.loss)
    unweighted = rmx.RankMixupLoss(mode="mrl", label_smoothing=0.1)
    assert unweighted.weight is None and "weight" not in unweighted.state_dict()


def _inputs():
    logits, mix_logits, targets, _, _ = problem(4, 2, 5, seed=29)
    lam = torch.rand(2, 4, generator=gen(30))
    index = torch.stack([torch.randperm(4, generator=gen(31 + k)) for k in range(2)])
    return logits, mix_logits, targets, lam, index


@pytest.mark.parametrize(
    "weight,error,match",
    [
        ([1.0] * 5, TypeError, "weight must be a torch.Tensor"),
        (torch.ones(5, dtype=torch.int64), TypeError, "weight must be a floating"),
        (torch.ones(4), ValueError, r"weight must have shape \(5,\)"),
        (torch.ones(1, 5), ValueError, r"weight must have shape \(C,\)"),
        (torch.ones(0), ValueError, r"weight must have shape \(C,\)"),
        (torch.ones(5, device="meta"), ValueError, "weight is on meta"),
    ],
    ids=["list", "int64", "wrong C", "2-D", "empty", "other device"],
)
def test_bad_weight_is_refused(weight, error, match):
    with pytest.raises(error, match=f"rankmixup_loss: {match}"):
        rmx.rankmixup_loss(*_inputs(), weight=weight)
    with pytest.raises(error, match=f"RankMixupLoss: {match}"):
        rmx.RankMixupLoss(weight=weight)(*_inputs())
