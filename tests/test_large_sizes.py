"""64-bit offsets (SPEC §9): the fused loss and the mix, forward and backward through the public
API, on tensors of more than 2^31 elements, where a kernel computing an offset in 32 bits would
wrap around. A random sample of samples — most of them with rows that start beyond element 2^31 —
is checked against the float64 reference run on just those samples.

Marked slow, and deselected by default (pyproject.toml), since each CPU test needs about 10 GB of
memory and a minute on two cores:

    pytest -m slow tests/test_large_sizes.py

The GPU variants (marked gpu too; `make gpu-check` runs them in its tests-gpu-large stage) go past
2^32 elements, which also catches offsets computed in unsigned 32 bits.
"""

from __future__ import annotations

import pytest
import torch
from tolerances import gradient_tolerance, output_tolerance

import rankmixup_ops as rmx
from rankmixup_ops import reference
from rankmixup_ops._types import LossOptions

pytestmark = pytest.mark.slow

# The offset the checked rows pass: 2^31 (signed 32 bits) on the CPU; 2^32 (unsigned) on the GPU.
LIMITS = {"cpu": 2**31, "cuda": 2**32}
DTYPE = torch.bfloat16  # 2 bytes an element keeps the CPU tests near 10 GB
IGNORE = -100
SAMPLED = 24  # samples checked against the reference
LOSS_OPTIONS = dict(mode="mndcg", alpha=0.5, margin=1.0, score="logit", label_smoothing=0.1)

# (B, K, C): K*B rows of C = 20011 classes (odd: rows start unaligned) hold just over 2^31
# elements on the CPU, and over 2^32 on the GPU.
LOSS_SHAPES = {"cpu": (13_500, 8, 20_011), "cuda": (27_000, 8, 20_011)}
# (B, K, F): x (B, F) of just over 2^31 elements; on the GPU over 2^32, and K*B*F twice that.
MIX_SHAPES = {"cpu": (66_000, 1, 32_771), "cuda": (132_000, 2, 32_771)}


def _cases(shapes):
    gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
    return [
        pytest.param("cpu", "cpu", shapes["cpu"], id="cpu"),
        pytest.param("cuda", "cuda", shapes["cuda"], marks=gpu, id="cuda"),
        pytest.param("triton", "cuda", shapes["cuda"], marks=gpu, id="triton-cuda"),
    ]


def _free_memory(device: str) -> int:
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as meminfo:  # MemAvailable counts the caches the kernel can drop
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))


def _require_memory(device: str, needed: int) -> None:
    """Skips, saying why, where the test would not fit: better than the OOM killer."""
    free = _free_memory(device)
    if free < needed:
        pytest.skip(f"needs {needed / 2**30:.1f} GiB of free {device} memory, has {free / 2**30:.1f} GiB")


def _random(shape, device, seed) -> torch.Tensor:
    return torch.empty(shape, dtype=DTYPE, device=device).normal_(generator=torch.Generator(device).manual_seed(seed))


def _pairing(batch, num_mix, device, seed):
    gen = torch.Generator().manual_seed(seed)
    lam = torch.rand(num_mix, batch, generator=gen)  # per sample, so that a misplaced one shows
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)])
    return lam.to(device), index.to(device)


def _sample(batch, first_beyond, seed) -> torch.Tensor:
    """Samples to check: two thirds from ``first_beyond`` on (rows past the offset limit), the
    rest anywhere, and the first and last sample."""
    assert 0 <= first_beyond <= batch - 2 * SAMPLED // 3, "the shape leaves too few rows past the limit"
    gen = torch.Generator().manual_seed(seed)
    beyond = first_beyond + torch.randperm(batch - first_beyond, generator=gen)[: 2 * SAMPLED // 3]
    anywhere = torch.randperm(batch, generator=gen)[: SAMPLED - len(beyond)]
    return torch.cat([beyond, anywhere, torch.tensor([0, batch - 1])]).unique()


def _free(t: torch.Tensor) -> None:
    """Releases a tensor's memory while autograd keeps its metadata (shape, dtype): the mix's
    backward reads neither x nor its output, and two fewer x-sized buffers fit the CPU test in 9 GB."""
    t.untyped_storage().resize_(0)


@pytest.mark.parametrize(("backend", "device", "shape"), _cases(LOSS_SHAPES))
def test_loss_beyond_int32_offsets(backend, device, shape):
    batch, num_mix, classes = shape
    limit = LIMITS[device]
    assert num_mix * batch * classes > limit
    # Inputs and their gradients; the Triton backend holds two gradient buffers besides its inputs.
    copies = 3 if backend == "triton" else 2
    _require_memory(device, int(copies * (num_mix + 1) * batch * classes * DTYPE.itemsize * 1.05))

    # From this sample on, the last mix row starts at or past the limit.
    first_beyond = -(-limit // classes) - (num_mix - 1) * batch
    samples = _sample(batch, first_beyond, 5)
    on_device = samples.to(device)
    logits = _random((batch, classes), device, 1).requires_grad_()
    mix_logits = _random((num_mix * batch, classes), device, 2).requires_grad_()
    gen = torch.Generator().manual_seed(3)
    targets = torch.randint(0, classes, (batch,), generator=gen)
    targets[torch.rand(batch, generator=gen) < 0.2] = IGNORE
    targets[samples[::4]] = IGNORE  # some of the checked ones too: their gradient rows must be zeros
    lam, index = _pairing(batch, num_mix, device, 4)
    weight = torch.rand(batch, generator=gen) + 0.5  # a non-uniform grad_output

    out = rmx.rankmixup_loss(logits, mix_logits, targets.to(device), lam, index, ignore_index=IGNORE,
                             reduction="none", backend=backend, **LOSS_OPTIONS)
    grads = torch.autograd.grad(out.loss, (logits, mix_logits), weight.to(out.loss))

    def mix_rows(t):  # the mix rows of the checked samples, (K, n, C) on the CPU
        return t.detach().view(num_mix, batch, classes)[:, on_device].cpu()

    raw = logits.detach()[on_device].cpu().double().requires_grad_()
    mixed = mix_rows(mix_logits).double().flatten(0, 1).requires_grad_()
    rel = reference.relevance(targets, lam.cpu(), index.cpu())[:, samples]
    options = LossOptions(ignore_index=IGNORE, reduction="none", **LOSS_OPTIONS)
    expected = reference.rankmixup_loss_from_relevance(raw, mixed, targets[samples], rel, options)
    expected_grads = torch.autograd.grad(expected.loss, (raw, mixed), weight[samples].double())

    for name, got, want in zip(("loss", "ce", "rank"), out, expected):
        torch.testing.assert_close(got.detach()[on_device].cpu().double(), want.detach(),
                                   **output_tolerance(DTYPE), msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(grads[0][on_device].cpu().double(), expected_grads[0],
                               **gradient_tolerance(DTYPE), msg=lambda m: f"grad_logits: {m}")
    torch.testing.assert_close(mix_rows(grads[1]).double(), expected_grads[1].view(num_mix, -1, classes),
                               **gradient_tolerance(DTYPE), msg=lambda m: f"grad_mix_logits: {m}")


def _mix_subproblem(lam, index, samples, x_own, x_partner, grad_own, grad_taken):
    """The mix restricted to ``samples`` (n of them), for the reference: ``(x2, lam2, index2,
    grad2)`` such that ``reference.mix(x2, lam2, index2)`` holds the checked output rows as its
    mix-major rows ``(k, s)`` for s < n, and its gradient for ``grad2`` at rows s < n is
    ``grad_x[samples]``.

    Row s < n is sample b = samples[s]; for each mix k, row n + k*n + s holds b's partner in the
    forward (``x_partner[k, s] = x[index[k, b]]``) and stands in the backward for the sample j
    that took b as its partner (index[k, j] = b: lam[k, j] and ``grad_taken[k, s]``, the
    incoming gradient's row k*B + j; ``grad_own[k, s]`` is its row k*B + b). index2 swaps s with
    that row in mix k and leaves every other row its own partner, so each row of index2 is a
    permutation and nothing else reaches the rows s < n.
    """
    num_mix = index.shape[0]
    n = len(samples)
    size = n * (num_mix + 1)
    s = torch.arange(n)
    taken_by = index.argsort(dim=1)[:, samples]  # j with index[k, j] = b
    x2 = torch.cat([x_own, x_partner.flatten(0, 1)]).double()
    index2 = torch.arange(size).repeat(num_mix, 1)
    lam2 = torch.zeros(num_mix, size, dtype=torch.float64)
    grad2 = torch.zeros(num_mix, size, *x_own.shape[1:], dtype=torch.float64)
    for k in range(num_mix):
        stand_in = n + k * n + s
        index2[k, s], index2[k, stand_in] = stand_in, s
        lam2[k, s], lam2[k, stand_in] = lam[k, samples].double(), lam[k, taken_by[k]].double()
        grad2[k, s], grad2[k, stand_in] = grad_own[k].double(), grad_taken[k].double()
    return x2, lam2, index2, grad2.flatten(0, 1)


@pytest.mark.parametrize(("backend", "device", "shape"), _cases(MIX_SHAPES))
def test_mix_beyond_int32_offsets(backend, device, shape):
    batch, num_mix, features = shape
    limit = LIMITS[device]
    assert batch * features > limit
    # x and the output, later the incoming gradient and grad_x (x and the output freed by then).
    _require_memory(device, int((num_mix + 1) * batch * features * DTYPE.itemsize * 1.05))

    samples = _sample(batch, -(-limit // features), 8)  # from there on, rows of x start past the limit
    on_device = samples.to(device)
    x = _random((batch, features), device, 6).requires_grad_()
    lam, index = _pairing(batch, num_mix, device, 7)
    out = rmx.mix(x, lam, index, backend=backend)
    assert out.shape == (num_mix * batch, features) and out.dtype == DTYPE
    got = out.detach().view(num_mix, batch, features)[:, on_device].cpu()
    x_own = x.detach()[on_device].cpu()
    x_partner = x.detach()[index[:, on_device]].cpu()  # (K, n, F)
    _free(out)
    _free(x)

    grad = _random((num_mix * batch, features), device, 9).view(num_mix, batch, features)
    (grad_x,) = torch.autograd.grad(out, x, grad.view(num_mix * batch, features))
    assert grad_x.shape == (batch, features) and grad_x.dtype == DTYPE
    taken_by = index.argsort(dim=1)[:, on_device]
    grad_own = grad[:, on_device].cpu()
    grad_taken = torch.stack([grad[k, taken_by[k]] for k in range(num_mix)]).cpu()

    x2, lam2, index2, grad2 = _mix_subproblem(lam.cpu(), index.cpu(), samples, x_own, x_partner, grad_own,
                                              grad_taken)
    x2.requires_grad_()
    expected = reference.mix(x2, lam2, index2)
    (expected_grad,) = torch.autograd.grad(expected, x2, grad2)
    n = len(samples)
    torch.testing.assert_close(got.double(), expected.detach().view(num_mix, -1, features)[:, :n],
                               **gradient_tolerance(DTYPE), msg=lambda m: f"mix: {m}")
    torch.testing.assert_close(grad_x[on_device].cpu().double(), expected_grad[:n],
                               **gradient_tolerance(DTYPE), msg=lambda m: f"grad_x: {m}")
