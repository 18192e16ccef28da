"""CutMix: the sampler (sample_cutmix), the paste op on every backend against the reference
(paste_boxes, cutmix), opcheck of the compiled operators, and the argument checks.

The paste is a copy, so every backend's forward must equal the reference's bit for bit. Its
gradient sums at most 2K terms per element (the sample's own K mixes outside their boxes, its
K partners' inside theirs); the kernels sum them in the reference's order, so on the CPU it is
exact too, except where Triton's interpreter rounds float32 to bfloat16 by truncation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tolerances import gradient_tolerance

import rankmixup_ops as rmx
from rankmixup_ops import reference
from rankmixup_ops._types import image_memory_format
from rankmixup_ops.backends import BACKENDS
from rankmixup_ops.mixup import _beta

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
B, C, H, W = 4, 3, 5, 7
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
BACKEND_DEVICES = [
    pytest.param(("reference", "cpu"), id="reference"),
    pytest.param(("cpu", "cpu"), id="cpu"),
    pytest.param(("triton", "cpu"), id="triton-interpreted"),
    pytest.param(("cuda", "cuda"), id="cuda", marks=GPU),
    pytest.param(("triton", "cuda"), id="triton-cuda", marks=GPU),
]


@pytest.fixture(params=BACKEND_DEVICES)
def backend_device(request) -> tuple[str, str]:
    """A backend and the device it runs on here, skipped where it cannot run."""
    name, device = request.param
    status = rmx.available_backends()[name]
    if not status.available:
        pytest.skip(status.reason)
    reason = rmx.backends._load(name).unsupported(torch.device(device))
    if reason is not None:
        pytest.skip(reason)
    return name, device


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(batch, dtype, memory_format, *, seed, channels=C, height=H, width=W, device="cpu"):
    x = torch.randn(batch, channels, height, width, generator=_gen(seed), dtype=torch.float64)
    return x.to(device, dtype).contiguous(memory_format=memory_format)


def _box_case(case: str, num_mix: int, batch: int, *, seed: int) -> torch.Tensor:
    """(K, B, 4) boxes: CutMix's own draws, or hand-picked extremes cycled over (k, b)."""
    if case in ("sampled", "sampled_per_sample"):
        return rmx.sample_cutmix(H, W, batch, num_mix, 1.0, per_sample=case == "sampled_per_sample",
                                 generator=_gen(seed))[0]
    picks = {
        "empty": [(2, 2, 3, 6), (0, 0, 0, 0), (4, 1, 2, 5), (1, 4, 3, 3)],  # no area (one upside down)
        "full": [(0, H, 0, W)],
        # At the edges, and past them: only the part inside the image is pasted.
        "edges": [(0, 2, 0, 3), (3, H, 4, W), (-3, 2, 5, W + 4), (H - 1, H + 9, -2, 1), (-9, -1, 2, 4)],
    }[case]
    flat = [picks[i % len(picks)] for i in range(num_mix * batch)]
    return torch.tensor(flat, dtype=torch.int64).view(num_mix, batch, 4)


def _paste_and_grad(fn, x, boxes, index, grad):
    x = x.detach().requires_grad_()  # not a clone, which would make a sliced x dense
    out = fn(x, boxes, index)
    out.backward(grad)
    return out.detach(), x.grad


def _permutations(num_mix, batch, *, seed):
    g = _gen(seed)
    return torch.stack([torch.randperm(batch, generator=g) for _ in range(num_mix)])


def _assert_matches_reference(name, device, x, boxes, index, grad, memory_format):
    boxes, index, grad = boxes.to(device), index.to(device), grad.to(device)
    got, got_grad = _paste_and_grad(lambda *a: rmx.paste_boxes(*a, backend=name), x.to(device), boxes, index, grad)
    want, want_grad = _paste_and_grad(reference.paste_boxes, x.to(device), boxes, index, grad)
    assert got.dtype == want.dtype and got.shape == want.shape and got.device == want.device
    assert got.is_contiguous(memory_format=memory_format)
    assert torch.equal(got, want)  # a copy: exact
    truncates_bfloat16 = name == "triton" and device == "cpu" and x.dtype == torch.bfloat16
    exact = device == "cpu" and not truncates_bfloat16
    tolerance = dict(rtol=0, atol=0) if exact else gradient_tolerance(x.dtype)
    torch.testing.assert_close(got_grad, want_grad, **tolerance)


# --- the paste on every backend --------------------------------------------------------------


@pytest.mark.parametrize("case", ["sampled", "sampled_per_sample", "empty", "full", "edges"])
@pytest.mark.parametrize("num_mix", [1, 3])
@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paste_boxes_matches_reference(backend_device, dtype, layout, num_mix, case):
    name, device = backend_device
    seed = num_mix * 100 + len(case)
    x = _images(B, dtype, FORMATS[layout], seed=seed)
    grad = torch.randn(num_mix * B, C, H, W, generator=_gen(seed + 1), dtype=torch.float64).to(dtype)
    boxes = _box_case(case, num_mix, B, seed=seed)
    _assert_matches_reference(name, device, x, boxes, _permutations(num_mix, B, seed=seed), grad, FORMATS[layout])


@pytest.mark.parametrize(
    "batch,channels,height,width",
    [(1, 1, 1, 1), (1, 2, 3, 4), (3, 1, 6, 5), (2, 3, 20, 40)],  # one pixel; C = 1; over one Triton block
)
def test_paste_boxes_odd_sizes(backend_device, batch, channels, height, width):
    name, device = backend_device
    for layout in FORMATS.values():
        x = _images(batch, torch.float32, layout, seed=batch, channels=channels, height=height, width=width)
        boxes, _, index = rmx.sample_cutmix(height, width, batch, 2, 0.7, per_sample=True, generator=_gen(width))
        grad = torch.randn(2 * batch, channels, height, width, generator=_gen(height))
        expected_format = image_memory_format(x)
        _assert_matches_reference(name, device, x, boxes, index, grad, expected_format)


def test_paste_boxes_non_dense_input_comes_out_contiguous(backend_device):
    """A slice (not dense in any format) and strided boxes and index: contiguous result, same values."""
    name, device = backend_device
    wide = _images(B, torch.float32, torch.channels_last, seed=5, width=2 * W)
    x = wide[..., ::2]
    boxes = _box_case("edges", 2, B, seed=5).transpose(0, 1).contiguous().transpose(0, 1)
    index = _permutations(2, B, seed=5).t().contiguous().t()  # column-major
    grad = torch.randn(2 * B, C, H, W, generator=_gen(6)).to(memory_format=torch.channels_last)
    _assert_matches_reference(name, device, x, boxes, index, grad, torch.contiguous_format)


def test_cutmix_public_call(backend_device):
    """cutmix samples, pastes and returns the pairing; its inputs are paste_boxes' of its draw."""
    name, device = backend_device
    x = _images(B, torch.float32, torch.channels_last, seed=8, device=device)
    batch = rmx.cutmix(x, num_mix=3, alpha=0.5, per_sample=True, generator=_gen(8), backend=name)
    boxes, lam, index = rmx.sample_cutmix(H, W, B, 3, 0.5, per_sample=True, generator=_gen(8))
    assert torch.equal(batch.lam.cpu(), lam) and torch.equal(batch.index.cpu(), index)
    assert batch.inputs.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch.inputs, reference.paste_boxes(x, boxes.to(device), index.to(device)))


@st.composite
def _paste_problems(draw):
    """Any small shape and layout; boxes of any corners, inside, across or outside the image."""
    batch, num_mix = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    channels, height, width = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    memory_format = draw(st.sampled_from(list(FORMATS.values())))
    seed = draw(st.integers(0, 2**31 - 1))
    x = _images(batch, torch.float32, memory_format, seed=seed, channels=channels, height=height, width=width)
    span = max(height, width)
    corners = st.lists(st.integers(-3, span + 3), min_size=4 * num_mix * batch, max_size=4 * num_mix * batch)
    boxes = torch.tensor(draw(corners)).view(num_mix, batch, 4)
    grad = torch.randn(num_mix * batch, channels, height, width, generator=_gen(seed + 1))
    return x, boxes, _permutations(num_mix, batch, seed=seed), grad, image_memory_format(x)


@pytest.mark.parametrize("name", [name for name in ("cpu", "triton") if rmx.available_backends()[name].available
                                  and rmx.backends._load(name).unsupported(torch.device("cpu")) is None])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=_paste_problems())
def test_paste_boxes_matches_reference_on_any_boxes(name, problem):
    _assert_matches_reference(name, "cpu", *problem)


def test_paste_boxes_hand_worked():
    """Two 1-channel 2x3 images, one mix: sample 0 takes rows [0, 1) x cols [1, 3) of sample 1;
    sample 1 takes nothing (an empty box). Sample 1's gradient gets sample 0's box back."""
    x = torch.tensor([[[[1.0, 2, 3], [4, 5, 6]]], [[[7.0, 8, 9], [10, 11, 12]]]])
    boxes = torch.tensor([[[0, 1, 1, 3], [1, 1, 0, 0]]])
    index = torch.tensor([[1, 0]])
    for backend in ("reference", "cpu"):
        xr = x.clone().requires_grad_()
        out = rmx.paste_boxes(xr, boxes, index, backend=backend)
        assert out.tolist() == [[[[1.0, 8, 9], [4, 5, 6]]], [[[7.0, 8, 9], [10, 11, 12]]]]
        out.backward(torch.arange(12.0).view(2, 1, 2, 3))
        # grad[0] = own grad outside the box; grad[1] = its own (empty box) + sample 0's box.
        assert xr.grad.tolist() == [[[[0.0, 0, 0], [3, 4, 5]]], [[[6.0, 1 + 7, 2 + 8], [9, 10, 11]]]]


# --- the compiled operators ------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
@pytest.mark.parametrize("layout", FORMATS)
def test_opcheck_paste_boxes(device, layout):
    compiled = pytest.importorskip("rankmixup_ops.compiled")
    if device not in compiled.build_info()["backends"]:
        pytest.skip(f"extension built without {device} kernels")
    x = _images(B, torch.float32, FORMATS[layout], seed=13, device=device).requires_grad_()
    boxes, _, index = rmx.sample_cutmix(H, W, B, 3, 1.0, per_sample=True, generator=_gen(13))
    boxes, index = boxes.to(device), index.to(device)
    torch.library.opcheck(torch.ops.rankmixup.paste_boxes.default, (x, boxes, index))
    grad = _images(3 * B, torch.float32, FORMATS[layout], seed=14, device=device)
    torch.library.opcheck(torch.ops.rankmixup.paste_boxes_backward.default, (grad, boxes, index))


def test_compiled_cpu_index_checks():
    """The CPU kernels read nothing out of bounds: an index outside the batch is refused by the
    forward, and a row of index that is not a permutation by the backward."""
    pytest.importorskip("rankmixup_ops.compiled")
    x = _images(B, torch.float32, torch.contiguous_format, seed=15)
    boxes = _box_case("full", 1, B, seed=15)
    with pytest.raises(RuntimeError, match=r"rankmixup::paste_boxes: index\[0, 2\] = 4 is outside \[0, 4\)"):
        torch.ops.rankmixup.paste_boxes(x, boxes, torch.tensor([[0, 1, 4, 3]]))
    repeated = torch.tensor([[0, 1, 1, 3]])
    out = rmx.paste_boxes(x.requires_grad_(), boxes, repeated, backend="cpu")  # the forward need not check
    with pytest.raises(RuntimeError, match="paste_boxes_backward: row 0 of index is not a permutation"):
        out.sum().backward()
    with pytest.raises(RuntimeError, match="boxes must be int64 \\(K, B, 4\\)"):
        torch.ops.rankmixup.paste_boxes(x, boxes[..., :3], repeated)


@pytest.mark.parametrize("compiler", ["aot_eager"])
def test_cutmix_step_compiles_without_graph_breaks(compiler):
    pytest.importorskip("rankmixup_ops.compiled")
    model = torch.nn.Conv2d(C, 2, 3)
    x = _images(B, torch.float32, torch.contiguous_format, seed=16).requires_grad_()
    boxes, _, index = rmx.sample_cutmix(H, W, B, 2, 1.0, generator=_gen(16))

    def step(x):
        return model(rmx.paste_boxes(x, boxes, index, backend="cpu")).square().mean()

    results = []
    for fn in (step, torch.compile(step, fullgraph=True, backend=compiler)):
        fn(x).backward()
        results.append((model.weight.grad.clone(), x.grad.clone()))
        model.zero_grad()
        x.grad = None
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


# --- the sampler -----------------------------------------------------------------------------


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("height,width,batch,num_mix", [(1, 1, 1, 1), (32, 32, 16, 3), (7, 40, 5, 2)])
def test_sample_cutmix_boxes_lam_and_index(height, width, batch, num_mix, per_sample):
    boxes, lam, index = rmx.sample_cutmix(height, width, batch, num_mix, 1.0, per_sample=per_sample,
                                          generator=_gen(height))
    assert boxes.shape == (num_mix, batch, 4) and boxes.dtype == torch.int64
    assert lam.shape == index.shape == (num_mix, batch) and lam.dtype == torch.float32
    top, bottom, left, right = boxes.unbind(-1)
    assert bool(((0 <= top) & (top <= bottom) & (bottom <= height)).all())
    assert bool(((0 <= left) & (left <= right) & (right <= width)).all())
    area = ((bottom - top) * (right - left)).double()
    assert torch.equal(lam, (1 - area / (height * width)).float())
    assert bool((index.sort(dim=1).values == torch.arange(batch)).all())
    if not per_sample:  # one box per mix, repeated over the batch
        assert torch.equal(boxes, boxes[:, :1].expand_as(boxes))


def test_sample_cutmix_is_cutmix_rand_bbox():
    """The boxes are CutMix's rand_bbox of the same draws, restated here with Python numbers:
    lam0 ~ Beta, the centre row, the centre column, then the permutations' keys."""
    height, width, batch, num_mix, alpha = 9, 14, 6, 2, 0.8
    boxes, _, index = rmx.sample_cutmix(height, width, batch, num_mix, alpha, per_sample=True, generator=_gen(21))
    g = _gen(21)
    lam0 = _beta(alpha, (num_mix, batch), torch.device("cpu"), g)  # the sampler's own Beta draws
    rows = torch.randint(height, (num_mix, batch), generator=g)
    cols = torch.randint(width, (num_mix, batch), generator=g)
    keys = torch.rand(num_mix, batch, dtype=torch.float64, generator=g)
    for k in range(num_mix):
        for b in range(batch):
            cut = math.sqrt(1 - float(lam0[k, b]))
            half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
            cy, cx = int(rows[k, b]), int(cols[k, b])
            expected = [min(max(v, 0), n) for v, n in
                        ((cy - half_h, height), (cy + half_h, height), (cx - half_w, width), (cx + half_w, width))]
            assert boxes[k, b].tolist() == expected, (k, b)
    assert torch.equal(index, keys.argsort(dim=1))


def test_sample_cutmix_is_reproducible():
    first = rmx.sample_cutmix(16, 16, 8, 3, 1.0, per_sample=True, generator=_gen(1234))
    second = rmx.sample_cutmix(16, 16, 8, 3, 1.0, per_sample=True, generator=_gen(1234))
    third = rmx.sample_cutmix(16, 16, 8, 3, 1.0, per_sample=True, generator=_gen(1235))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, third))


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_sample_cutmix_lam_distribution(alpha):
    """lam's mean and spread over many draws match an independent NumPy simulation of CutMix's
    boxes (numpy's Beta and integers). Clipping at the edges shrinks the boxes, so lam's mean is
    above Beta(alpha, alpha)'s 1/2 (about 0.70 for alpha = 1 here). Each mean has a standard
    error under 0.003 over 40000 draws; the bound is about 5 of them."""
    size, draws = 32, 40000
    _, lam, _ = rmx.sample_cutmix(size, size, draws, 1, alpha, per_sample=True, generator=_gen(2))
    rng = np.random.default_rng(3)
    cut = np.sqrt(1 - rng.beta(alpha, alpha, draws))
    half = (size * cut).astype(np.int64) // 2
    sides = [np.clip(centre + sign * half, 0, size) for centre in rng.integers(0, size, (2, draws)) for sign in (-1, 1)]
    expected = 1 - (sides[1] - sides[0]) * (sides[3] - sides[2]) / size**2
    assert abs(lam.double().mean().item() - expected.mean()) < 0.015
    assert abs(lam.double().std().item() - expected.std()) < 0.015
    assert 0.5 < lam.double().mean().item()


def test_sample_cutmix_device_follows_generator():
    boxes, lam, index = rmx.sample_cutmix(4, 4, 3, 2, 1.0, generator=torch.Generator(device="cpu"))
    assert boxes.device == lam.device == index.device == torch.device("cpu")


# --- bad input ---------------------------------------------------------------------------------


def _paste(x=None, boxes=None, index=None, **options):
    def call(backend):
        gx = _images(B, torch.float32, torch.contiguous_format, seed=30)
        return rmx.paste_boxes(gx if x is None else x, _box_case("full", 2, B, seed=0) if boxes is None else boxes,
                               _permutations(2, B, seed=30) if index is None else index, backend=backend, **options)
    return call


META = torch.device("meta")
BAD_INPUTS = [
    ("x int", _paste(x=torch.zeros(B, C, H, W, dtype=torch.int64)), TypeError, "paste_boxes: x must be a floating"),
    ("x 3-D", _paste(x=torch.zeros(B, H, W)), ValueError, r"paste_boxes: x must have shape \(B, C, H, W\)"),
    ("x list", _paste(x=[[0.0]]), TypeError, "paste_boxes: x must be a torch.Tensor"),
    ("boxes float", _paste(boxes=torch.zeros(2, B, 4)), TypeError, "paste_boxes: boxes must be an integer tensor"),
    ("boxes shape", _paste(boxes=torch.zeros(2, B, 3, dtype=torch.int64)), ValueError, "paste_boxes: boxes must have shape"),
    ("boxes K", _paste(boxes=torch.zeros(3, B, 4, dtype=torch.int64)), ValueError, "paste_boxes: boxes must have shape"),
    ("boxes device", _paste(boxes=torch.zeros(2, B, 4, dtype=torch.int64, device=META)), ValueError,
     "paste_boxes: boxes is on meta"),
    ("index batch", _paste(index=torch.zeros(2, B - 1, dtype=torch.int64)), ValueError, "paste_boxes: index must have shape"),
    ("index float", _paste(index=torch.zeros(2, B)), TypeError, "paste_boxes: index must be an integer tensor"),
    ("index device", _paste(index=torch.zeros(2, B, dtype=torch.int64, device=META)), ValueError,
     "paste_boxes: index is on meta"),
    ("validate", _paste(validate=1), TypeError, "paste_boxes: validate must be a bool"),
    ("cutmix x", lambda backend: rmx.cutmix(torch.zeros(B, 3), backend=backend), ValueError, "cutmix: x must have shape"),
    ("cutmix alpha 0", lambda backend: rmx.cutmix(torch.zeros(B, C, H, W), alpha=0.0, backend=backend), ValueError,
     "^cutmix: alpha must be > 0"),
    ("cutmix num_mix", lambda backend: rmx.cutmix(torch.zeros(B, C, H, W), 0, backend=backend), ValueError,
     "^cutmix: num_mix must be >= 1"),
]


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_same_error_on_every_backend(case, backend):
    _, call, error, message = case
    with pytest.raises(error, match=message):
        call(backend)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda: rmx.sample_cutmix(0, 4, 2, 1, 1.0), ValueError, "sample_cutmix: height must be >= 1"),
        # Images with no pixel to draw a box around: named as x of the function called.
        (lambda: rmx.cutmix(torch.randn(2, 1, 0, 4)), ValueError, r"cutmix: x must have shape \(B, C, H, W\) with B, H"),
        (lambda: rmx.mixup(torch.randn(2, 1, 4, 0), cutmix_alpha=1.0), ValueError, "mixup: x must have shape"),
        (lambda: rmx.sample_cutmix(4, 2.0, 2, 1, 1.0), TypeError, "sample_cutmix: width must be an int"),
        (lambda: rmx.sample_cutmix(4, 4, 0, 1, 1.0), ValueError, "sample_cutmix: batch_size must be >= 1"),
        (lambda: rmx.sample_cutmix(4, 4, 2, 1, -1.0), ValueError, "sample_cutmix: alpha must be > 0"),
        (lambda: rmx.sample_cutmix(4, 4, 2, 1, math.inf), ValueError, "sample_cutmix: alpha must be finite"),
        (lambda: rmx.sample_cutmix(4, 4, 2, 1, 1.0, per_sample=None), TypeError, "sample_cutmix: per_sample must be a bool"),
        (lambda: rmx.sample_cutmix(4, 4, 2, 1, 1.0, generator=1), TypeError, "sample_cutmix: generator must be"),
        (lambda: rmx.sample_cutmix(4, 4, 2, 1, 1.0, device="meta", generator=torch.Generator()), ValueError,
         "sample_cutmix: generator is on"),
    ],
)
def test_bad_sampler_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize(
    "boxes,index,message",
    [
        ([[-1, 2, 0, 3]], [[1, 0]], "every box must satisfy 0 <= top <= bottom <= 5 and 0 <= left <= right <= 7"),
        ([[0, 2, 4, 3]], [[1, 0]], "every box must satisfy"),
        ([[0, 6, 0, 3]], [[1, 0]], "every box must satisfy"),
        ([[0, 2, 0, 8]], [[1, 0]], "every box must satisfy"),
        ([[0, 2, 0, 3]], [[1, 1]], "every row of index must be a permutation"),
    ],
)
def test_validate_checks_boxes_and_index(backend, boxes, index, message, monkeypatch):
    x = _images(2, torch.float32, torch.contiguous_format, seed=31)
    boxes = torch.tensor(boxes).expand(1, 2, 4)
    index = torch.tensor(index)
    rmx.paste_boxes(x, boxes, index, backend=backend)  # unchecked values are the caller's business
    with pytest.raises(ValueError, match=f"paste_boxes: {message}"):
        rmx.paste_boxes(x, boxes, index, validate=True, backend=backend)
    monkeypatch.setenv("RANKMIXUP_VALIDATE", "1")
    with pytest.raises(ValueError, match=f"paste_boxes: {message}"):
        rmx.paste_boxes(x, boxes, index, backend=backend)
