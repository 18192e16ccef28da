"""The loss's eager front ends (csrc/eager_loss.cpp): ``functional.loss_call`` and the drop-in
classes' forward for the common call, each in one native call. They must take the common calls
(or their speed is never had), give exactly what the checked Python path gives, forward and
backward, and answer None to every call that the Python path would check differently: rejected,
converted, or routed elsewhere (subclasses, function modes, validation, another backend).

Fresh random inputs every run (backend_cases.SEED, named in every failure).
"""

from __future__ import annotations

import pytest
import torch
from backend_cases import SEED, gen

import rankmixup_ops as rmx
from rankmixup_ops import backends, compat, functional
from rankmixup_ops._types import LossOutput

try:
    from rankmixup_ops import compiled
except rmx.BackendUnavailable as error:  # pragma: no cover - `make test` always builds it
    pytest.skip(f"compiled extension unavailable: {error}", allow_module_level=True)

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
OPTIONS = functional.loss_options("test", "mndcg", "logit", 1.0, 0.3, 2.0, -100, 0.1, "mean")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=GPU)])
def device(request) -> str:
    return request.param


def call(batch=6, num_mix=3, classes=7, *, dtype=torch.float32, device="cpu", seed=0):
    """Arguments of a common call: (logits, mix_logits, targets, lam (K, B), index)."""
    g = gen(seed)
    logits = torch.randn(batch, classes, generator=g, dtype=torch.float64).to(dtype).to(device)
    mix_logits = torch.randn(num_mix * batch, classes, generator=g, dtype=torch.float64).to(dtype).to(device)
    targets = torch.randint(0, classes, (batch,), generator=g).to(device)
    targets[0] = -100
    lam = torch.rand(num_mix, batch, generator=g, dtype=functional.accumulation_dtype(dtype)).to(device)
    index = torch.stack([torch.randperm(batch, generator=g) for _ in range(num_mix)]).to(device)
    return [logits.requires_grad_(), mix_logits.requires_grad_(), targets, lam, index]


def eager(args, options=OPTIONS, *, device="cpu", validate=False):
    return compiled._C.eager_loss(LossOutput, device == "cpu", device == "cuda", *args, options, validate)


def checked(args, options=OPTIONS, *, device="cpu"):
    """The checked Python path with the same backend (validate=True takes it and checks values)."""
    return functional.loss_call("test", *args, options, True, device)


def outputs_and_grads(out, args):
    grads = torch.autograd.grad(out[0], args[:2], allow_unused=True)
    return [*(t.detach() for t in out), *grads]


VARIANTS = {
    "common": lambda args, device: (args, OPTIONS),
    "lam (K,)": lambda args, device: ([*args[:3], args[3][:, 0].clone(), args[4]], OPTIONS),
    "mix_logits (K, B, C)": lambda args, device: ([args[0], args[1].view(3, 6, 7), *args[2:]], OPTIONS),
    "lam requires grad": lambda args, device: ([*args[:3], args[3].clone().requires_grad_(), args[4]], OPTIONS),
    "class weights": lambda args, device: (  # in the accumulation dtype, lam's
        args, OPTIONS._replace(weight=torch.rand(7, dtype=args[3].dtype, device=device) + 0.5)),
    "strided logits": lambda args, device: ([args[0].detach().t().contiguous().t().requires_grad_(), *args[1:]],
                                            OPTIONS),
    "mrl, sum": lambda args, device: (args, OPTIONS._replace(mode="mrl", score="prob", reduction="sum")),
    "nn.Parameter logits": lambda args, device: ([torch.nn.Parameter(args[0].detach()), *args[1:]], OPTIONS),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_takes_the_common_calls_and_equals_the_checked_path(device, variant, dtype):
    args, options = VARIANTS[variant](call(dtype=dtype, device=device, seed=1), device)
    out = eager(args, options, device=device)
    assert type(out) is LossOutput, f"{variant}: the front end did not take a common call"
    expected = checked(args, options, device=device)
    for got, want in zip(outputs_and_grads(out, args), outputs_and_grads(expected, args)):
        assert got.dtype == want.dtype and torch.equal(got, want), f"{variant} (seed {SEED})"


def _subclass(t):
    return t.as_subclass(_Subclass)


class _Subclass(torch.Tensor):
    """A __torch_function__ subclass: only the torch.ops call honours it."""


# Each turns the common call into one the front end must leave to the checked path: one it
# rejects, one it converts (targets, lam), or one that needs torch.ops (a subclass).
def _replace(position, make):
    def mutate(args, device):
        args = list(args)
        args[position] = make(args[position], device)
        return args, OPTIONS
    return mutate


NOT_TAKEN = {
    "logits subclass": _replace(0, lambda t, d: _subclass(t)),
    "mix_logits subclass": _replace(1, lambda t, d: _subclass(t)),
    "targets subclass": _replace(2, lambda t, d: _subclass(t)),
    "lam subclass": _replace(3, lambda t, d: _subclass(t)),
    "index subclass": _replace(4, lambda t, d: _subclass(t)),
    # Another device than the logits' (meta: a second device on every machine).
    "mix_logits elsewhere": _replace(1, lambda t, d: t.detach().to("meta")),
    "targets elsewhere": _replace(2, lambda t, d: t.to("meta")),
    "lam elsewhere": _replace(3, lambda t, d: t.to("meta")),
    "index elsewhere": _replace(4, lambda t, d: t.to("meta")),
    "weight elsewhere": lambda args, d: (args, OPTIONS._replace(weight=torch.ones(7, device="meta"))),
    "weight (1, C)": lambda args, d: (args, OPTIONS._replace(weight=torch.ones(1, 7, device=d))),
    "lam 0-d": _replace(3, lambda t, d: t[0, 0]),
    "logits int": _replace(0, lambda t, d: t.detach().long()),
    "logits 1-D": _replace(0, lambda t, d: t.detach()[0]),
    "logits empty": _replace(0, lambda t, d: t.detach()[:, :0]),
    "mix_logits other dtype": _replace(1, lambda t, d: t.detach().double()),
    "mix_logits short": _replace(1, lambda t, d: t.detach()[:-1]),
    "mix_logits (B, K, C)": _replace(1, lambda t, d: t.detach().view(6, 3, 7)),
    "targets int32": _replace(2, lambda t, d: t.int()),
    "targets (B, 1)": _replace(2, lambda t, d: t[:, None]),
    "targets short": _replace(2, lambda t, d: t[:-1]),
    "lam float64": _replace(3, lambda t, d: t.double()),
    "lam a float": _replace(3, lambda t, d: 0.5),
    "lam (K, B-1)": _replace(3, lambda t, d: t[:, :-1]),
    "lam (K-1,)": _replace(3, lambda t, d: t[:-1, 0]),
    "index int32": _replace(4, lambda t, d: t.int()),
    "index (K, B-1)": _replace(4, lambda t, d: t[:, :-1]),
    "index empty": _replace(4, lambda t, d: t[:0]),
    "weight float64": lambda args, d: (args, OPTIONS._replace(weight=torch.ones(7, dtype=torch.float64, device=d))),
    "weight (C+1,)": lambda args, d: (args, OPTIONS._replace(weight=torch.ones(8, device=d))),
    "weight subclass": lambda args, d: (args, OPTIONS._replace(weight=_subclass(torch.ones(7, device=d)))),
}


@pytest.mark.parametrize("mutation", NOT_TAKEN)
def test_leaves_every_other_call_to_the_checked_path(device, mutation):
    args, options = NOT_TAKEN[mutation](call(device=device, seed=2), device)
    assert eager(args, options, device=device) is None, mutation


def test_refuses_a_result_type_that_is_not_a_tuple():
    """The result is built as tuple.__new__ builds it, which only a tuple subclass can take."""
    for result_type in (None, dict, int, "LossOutput"):
        with pytest.raises(TypeError, match="result_type must be a subclass of tuple"):
            compiled._C.eager_loss(result_type, True, False, *call(seed=3), OPTIONS, False)


def test_leaves_other_devices_and_backends_alone(device):
    args = call(device=device, seed=3)
    assert compiled._C.eager_loss(LossOutput, device != "cpu", device != "cuda", *args, OPTIONS, False) is None
    if device == "cuda":  # a tensor on another device than the logits
        assert eager([args[0], args[1].cpu(), *args[2:]], device=device) is None
    assert backends.eager_front_end("reference") is None
    assert backends.eager_front_end("triton") is None
    assert backends.eager_front_end("no such backend") is None
    assert backends.eager_front_end(["cpu"]) is None  # unhashable: the checked path says why


def test_leaves_validation_and_function_modes_to_the_checked_path(monkeypatch):
    args, compat_args = call(seed=4), _compat_call()
    with torch.overrides.TorchFunctionMode():  # what torch.export and `with torch.device()` install
        assert eager(args) is None
        assert compat_eager(compat_args, compat.RankMixup_MNDCG(num_classes=7)) is None
    with torch.inference_mode():  # no autograd: taken, and equal to the checked path
        for got, want in zip(eager(args), checked(args)):
            assert torch.equal(got, want)
    # Validation, asked for or not a bool (which the checked path refuses), is not taken; nor
    # is a call under RANKMIXUP_VALIDATE, read as the checked path reads it.
    for validate in (True, None, 0, "no"):
        assert eager(args, validate=validate) is None, validate
    taken = []
    _spied(monkeypatch, "cpu", taken)
    for value, takes in (("1", False), ("yes", False), ("0", True), ("", True)):
        monkeypatch.setenv("RANKMIXUP_VALIDATE", value)
        rmx.rankmixup_loss(*args, backend="cpu")
        assert taken == [takes], value
        taken.clear()


def _spied(monkeypatch, backend, taken):
    """Records, for each call of the front ends of ``backend``, whether they took it."""
    native = backends.eager_front_end(backend)

    def spy(entry):
        def call(*args):
            out = entry(*args)
            taken.append(out is not None)
            return out
        return call

    monkeypatch.setitem(backends._EAGER, backend, backends.EagerFrontEnd(spy(native.loss), spy(native.compat_loss)))


def test_the_public_functions_take_it(monkeypatch):
    """rankmixup_loss, mrl_loss, mndcg_loss, RankMixupLoss and the drop-in classes call the
    front ends, and use their answer."""
    taken = []
    _spied(monkeypatch, "cpu", taken)
    _spied(monkeypatch, "auto", taken)
    args = call(seed=5)
    rmx.rankmixup_loss(*args, backend="cpu")
    rmx.mrl_loss(*args, backend="cpu")
    rmx.mndcg_loss(*args, backend="cpu")
    rmx.RankMixupLoss(backend="cpu")(*args)
    rmx.rankmixup_loss(*args, backend="cpu", validate=True)  # validation: left to the checked path
    logits, mix_logits, targets, lam, index = args
    soft = rmx.soft_targets(targets.clamp(min=0), lam, index, 7)
    compat.RankMixup_MNDCG(num_classes=7)(logits, targets, mix_logits, soft, 3)
    assert taken == [True, True, True, True, False, True]


def _compat_call(device="cpu", dtype=torch.float32, seed=6):
    """Arguments of a drop-in class's forward as the RankMixup code calls it:
    (inputs, targets, mixup, target_re, lam)."""
    logits, mix_logits, targets, lam, index = call(dtype=dtype, device=device, seed=seed)
    soft = rmx.soft_targets(targets.clamp(min=0), lam, index, 7)
    return [logits, targets, mix_logits, soft, 3]


def compat_eager(args, criterion, device="cpu"):
    return compiled._C.eager_compat_loss(device == "cpu", device == "cuda", *args, criterion.num_classes,
                                         criterion.options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("criterion", [compat.RankMixup_MNDCG(num_classes=7), compat.RankMixup_MRL(num_classes=7)],
                         ids=["mndcg", "mrl"])
@pytest.mark.parametrize("lam", ["count", "tensor (K,)"])
def test_compat_takes_the_common_calls_and_equals_the_checked_path(monkeypatch, device, criterion, dtype, lam):
    args = _compat_call(device, dtype)
    if lam != "count":
        args[4] = torch.full((3,), 0.5, device=device)
    out = compat_eager(args, criterion, device)
    assert out is not None, "the front end did not take a common drop-in call"
    if device == "cpu":
        monkeypatch.setitem(backends._EAGER, "auto", None)  # forward's checked path
        expected = criterion(*args)
    else:  # there auto runs Triton where it is installed: forward's steps on the CUDA backend
        cuda = compiled.load_backend("cuda")
        rel = cuda.soft_relevance(args[3], 3, args[0].dtype if dtype == torch.float64 else torch.float32)
        expected = cuda.loss(args[0], args[2], args[1], rel, None, criterion.options)
    logit_args = (args[0], args[2])
    for got, want in zip(outputs_and_grads(out, logit_args), outputs_and_grads(expected, logit_args)):
        assert got.dtype == want.dtype and torch.equal(got, want), f"(seed {SEED})"


COMPAT_NOT_TAKEN = {
    "inputs subclass": lambda a: a.__setitem__(0, _subclass(a[0])),
    "inputs with C+1 classes": lambda a: a.__setitem__(0, torch.cat([a[0], a[0][:, :1]], 1)),
    "targets int32": lambda a: a.__setitem__(1, a[1].int()),
    "mixup other dtype": lambda a: a.__setitem__(2, a[2].double()),
    "mixup rows not a multiple of B": lambda a: a.__setitem__(2, a[2][:-1]),
    "target_re other shape": lambda a: a.__setitem__(3, a[3][:-1]),
    "target_re int": lambda a: a.__setitem__(3, a[3].long()),
    "lam of the wrong count": lambda a: a.__setitem__(4, torch.ones(2)),
    "lam subclass": lambda a: a.__setitem__(4, _subclass(torch.ones(3))),
    "no inputs": lambda a: a.__setitem__(0, a[0][:0]),
    "no mixup rows": lambda a: a.__setitem__(2, a[2][:0]),
    "targets (B, 1)": lambda a: a.__setitem__(1, a[1][:, None]),
    "target_re subclass": lambda a: a.__setitem__(3, _subclass(a[3])),
    "mixup elsewhere": lambda a: a.__setitem__(2, a[2].detach().to("meta")),
    "target_re elsewhere": lambda a: a.__setitem__(3, a[3].to("meta")),
}


@pytest.mark.parametrize("mutation", COMPAT_NOT_TAKEN)
def test_compat_leaves_every_other_call_to_its_checks(mutation):
    args = _compat_call()
    COMPAT_NOT_TAKEN[mutation](args)
    assert compat_eager(args, compat.RankMixup_MNDCG(num_classes=7)) is None, mutation


def test_compat_leaves_a_float_num_classes_to_forward():
    criterion = compat.RankMixup_MNDCG(num_classes=7)
    criterion.num_classes = 7.0  # forward compares shapes with it as Python does
    assert compat_eager(_compat_call(), criterion) is None


def test_auto_binds_the_compiled_backend_of_each_device():
    native = backends.eager_front_end("auto")
    assert native.loss.func is compiled._C.eager_loss and native.compat_loss.func is compiled._C.eager_compat_loss
    # On a GPU, auto runs Triton when it is installed, which has no native front end.
    status = rmx.available_backends()
    flags = (True, not status["triton"].available and status["cuda"].available)
    assert native.loss.args == (LossOutput, *flags) and native.compat_loss.args == flags
