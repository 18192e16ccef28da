"""Cases shared by the tests of the compiled backends (test_compiled_backends.py, the matrix of
both devices, and test_cpu_backend.py, test_cuda_backend.py):
random problems on any device, the option sets, the shape matrix, and how a backend is run and
compared with the reference. Fresh random inputs on every run, reproducible from SEED, which
every failure message names.
"""

from __future__ import annotations

import random

import torch

from rankmixup_ops import reference
from rankmixup_ops._types import LossOptions, accumulation_dtype
from rankmixup_ops.backends import resolve

# A seed per test session: fresh inputs each run, reproducible from the failure message.
SEED = random.SystemRandom().randrange(2**31)

RANKINGS = [("mrl", "logit"), ("mrl", "prob"), ("mndcg", "logit")]  # M-NDCG ranks by confidence
REDUCTIONS = ["mean", "sum", "none"]
# (B, K, C): single samples and classes, K up to 8, C odd, not a power of two, above one block.
LOSS_SHAPES = [(1, 1, 1), (1, 3, 5), (2, 2, 1), (7, 1, 10), (16, 3, 33), (9, 8, 7), (5, 4, 1000), (3, 2, 4099)]
# (B, K, feature shape) for mixup.
MIX_SHAPES = [(1, 1, ()), (5, 3, (7,)), (4, 2, (3, 5, 5)), (9, 8, (1,)), (3, 2, (3000,))]
LAYOUTS = ["transposed", "row_padded", "every_other"]


def gen(salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + salt)


def reference_backend(device="cpu"):
    return resolve("test", "reference", torch.device(device))


def problem(batch, num_mix, classes, *, dtype=torch.float32, ignore="some", seed=0, device="cpu"):
    """Logits, mix logits, targets, lam and index (K, B) with same-class pairs (relevance 1),
    ties in lam (so the M-NDCG order falls back to k) and the requested ignored samples."""
    g = gen(seed)
    logits = (torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3).to(dtype)
    mix_logits = (torch.randn(num_mix * batch, classes, generator=g, dtype=torch.float64) * 3).to(dtype)
    targets = torch.randint(0, max(classes // 2, 1), (batch,), generator=g)  # many same-class pairs
    index = torch.stack([torch.randperm(batch, generator=g) for _ in range(num_mix)])
    lam = torch.rand(num_mix, batch, generator=g, dtype=accumulation_dtype(dtype))  # as the public API passes it
    lam[max(num_mix // 2, 1) :] = lam[0].clone()
    if ignore == "some":
        targets[torch.rand(batch, generator=g) < 0.3] = -100
    elif ignore == "all":
        targets[:] = -100
    return [t.to(device) for t in (logits, mix_logits, targets, lam, index)]


def relevance_of(prob):
    """A problem with its pairing (lam, index) replaced by the relevances it gives and no
    partners: what the drop-in classes hand the backends."""
    logits, mix_logits, targets, lam, index = prob
    return [logits, mix_logits, targets, reference.relevance(targets, lam, index), None]


def options(mode="mndcg", score="logit", reduction="mean", **overrides) -> LossOptions:
    return LossOptions(mode=mode, score=score, reduction=reduction, ce_weight=1.0, alpha=0.3, margin=1.5,
                       ignore_index=-100, label_smoothing=0.1)._replace(**overrides)


def run(backend, logits, mix_logits, targets, lam, index, opts, *, grad_weight_seed=0):
    """Loss, parts and the gradients of sum(weight * loss) (a non-unit grad_output)."""
    logits = logits.detach().clone().requires_grad_()
    mix_logits = mix_logits.detach().clone().requires_grad_()
    out = backend.loss(logits, mix_logits, targets, lam, index, opts)
    weight = torch.rand(out.loss.shape, generator=gen(grad_weight_seed), dtype=torch.float64) + 0.5
    (out.loss * weight.to(out.loss)).sum().backward()
    return [out.loss.detach(), out.ce, out.rank, logits.grad, mix_logits.grad]


def close(actual, expected, rtol=1e-5):
    names = ("loss", "ce", "rank", "grad_logits", "grad_mix_logits")
    for name, a, e in zip(names, actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape and a.device == e.device, name
        atol = rtol * max(1.0, e.double().abs().max().item()) if e.numel() else 0
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{name} (seed {SEED}): {m}")


def strided(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "transposed":  # column stride != 1
        return t.t().contiguous().t()
    if layout == "row_padded":  # row stride > C: a slice of wider rows
        return torch.cat([t, torch.zeros_like(t[:, :3])], dim=1)[:, : t.shape[1]]
    if layout == "every_other":  # both strides doubled
        return torch.stack([t, t], dim=-1).reshape(t.shape[0], 2 * t.shape[1])[:, ::2]
    return t


def max_error(values, exact):
    return max((v.double() - e.double()).abs().max().item() for v, e in zip(values, exact))


def errors_against_float64(backend, prob, opts):
    """(backend's, reference's) largest error, both run in prob's dtype, against the reference
    run on the same values in float64."""
    wide = [t.double() if t is not None and t.is_floating_point() else t for t in prob]
    reference_ = reference_backend(prob[0].device)
    exact = run(reference_, *wide, opts)
    return max_error(run(backend, *prob, opts), exact), max_error(run(reference_, *prob, opts), exact)


def mix_problem(batch, num_mix, feat, *, per_sample, dtype=torch.float32, seed=0, device="cpu"):
    g = gen(seed)
    x = torch.randn(batch, *feat, generator=g, dtype=torch.float64).to(dtype)
    index = torch.stack([torch.randperm(batch, generator=g) for _ in range(num_mix)])
    lam = torch.rand(num_mix, batch if per_sample else 1, generator=g, dtype=accumulation_dtype(dtype))
    lam = lam.expand(num_mix, batch)
    return x.to(device), lam.to(device), index.to(device)


def run_mix(mix, x, lam, index, grad):
    """The mix of x and the gradient of x for an incoming gradient `grad`."""
    x = x.detach().clone().requires_grad_()
    out = mix(x, lam, index)
    out.backward(grad)
    return out.detach(), x.grad


def loss_args(reduction, *, requires_grad=True, weighted=False, device="cpu"):
    """Arguments of torch.ops.rankmixup.loss, for opcheck (class weights last, when weighted)."""
    logits, mix_logits, targets, lam, index = problem(5, 2, 7, seed=12, device=device)
    weight = torch.rand(7, generator=gen(13)).to(device) + 0.5 if weighted else None
    return (logits.requires_grad_(requires_grad), mix_logits.requires_grad_(requires_grad), targets, lam, index,
            "mndcg", "prob", 1.0, 0.1, 2.0, -100, 0.1, reduction, weight)
