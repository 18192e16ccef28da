"""The Triton operators called directly (``torch.ops.rankmixup_triton.*``) with arguments the
public functions would refuse: each raises before any launch, naming the operator and the
argument (rankmixup_ops/triton/op_args.py), where it used to read outside its tensors and
return a value. The checks run before the kernels, so these run on CPU tensors (with or
without Triton's interpreter); tensors on the meta device stand in for a second device.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import rankmixup_ops.triton  # noqa: E402,F401  (registers the operators)

OPS = torch.ops.rankmixup_triton
B, K, C = 4, 2, 5
# mode, score, ignore_index, ce_weight, alpha, margin, label_smoothing, need_grad, block_c
LOSS_OPTIONS = ("mndcg", "logit", -100, 1.0, 0.1, 2.0, 0.0, True, 0)


def _loss_args(**replace):
    gen = torch.Generator().manual_seed(0)
    args = dict(
        logits=torch.randn(B, C, generator=gen),
        mix_logits=torch.randn(K * B, C, generator=gen),
        targets=torch.randint(0, C, (B,), generator=gen),
        lam=torch.rand(K, B, generator=gen),
        index=torch.stack([torch.randperm(B, generator=gen) for _ in range(K)]),
    )
    options = dict(zip(("mode", "score", "ignore_index", "ce_weight", "alpha", "margin", "label_smoothing",
                        "need_grad", "block_c"), LOSS_OPTIONS))
    options.update(weight=None, ce_rescale=None)
    for name, value in replace.items():
        (args if name in args else options)[name] = value
    return (*args.values(), *options.values())


def _fused_loss(**replace):
    return lambda: OPS.fused_loss(*_loss_args(**replace))


def _pairing():
    return torch.rand(K, B), torch.stack([torch.randperm(B) for _ in range(K)])


def _mix(x, lam=None, index=None, backward=False):
    default_lam, default_index = _pairing()
    op = OPS.mix_backward if backward else OPS.mix
    return lambda: op(x, default_lam if lam is None else lam, default_index if index is None else index)


def _paste(x, boxes=None, index=None, backward=False):
    op = OPS.paste_boxes_backward if backward else OPS.paste_boxes
    boxes = torch.zeros(K, B, 4, dtype=torch.int64) if boxes is None else boxes
    return lambda: op(x, boxes, _pairing()[1] if index is None else index)


def _reduce(loss=None, ce=None, targets=None, ce_scale=None):
    values = torch.rand(B)
    return lambda: OPS.reduce_loss(values if loss is None else loss, values if ce is None else ce, values,
                                   torch.zeros(B, dtype=torch.int64) if targets is None else targets, -100, True,
                                   ce_scale)


META = torch.device("meta")
CASES = {
    # fused_loss
    "logits 1-D": (_fused_loss(logits=torch.randn(C)), ValueError, "fused_loss: logits"),
    "logits empty": (_fused_loss(logits=torch.randn(B, 0)), ValueError, "fused_loss: logits"),
    "logits integer": (_fused_loss(logits=torch.zeros(B, C, dtype=torch.int64)), TypeError, "fused_loss: logits"),
    "mix_logits too few rows": (_fused_loss(mix_logits=torch.randn(B, C)), ValueError, "fused_loss: mix_logits"),
    "mix_logits other C": (_fused_loss(mix_logits=torch.randn(K * B, C - 2)), ValueError, "fused_loss: mix_logits"),
    "mix_logits other dtype": (_fused_loss(mix_logits=torch.randn(K * B, C, dtype=torch.float64)), TypeError,
                               "fused_loss: mix_logits"),
    "targets short": (_fused_loss(targets=torch.zeros(B - 1, dtype=torch.int64)), ValueError, "fused_loss: targets"),
    "targets int32": (_fused_loss(targets=torch.zeros(B, dtype=torch.int32)), TypeError, "fused_loss: targets"),
    "lam (K,)": (_fused_loss(lam=torch.rand(K)), ValueError, "fused_loss: lam"),
    "lam other batch": (_fused_loss(lam=torch.rand(K, B - 1)), ValueError, "fused_loss: lam"),
    "lam float64": (_fused_loss(lam=torch.rand(K, B, dtype=torch.float64)), TypeError, "fused_loss: lam"),
    "index other shape": (_fused_loss(index=torch.zeros(K, B - 1, dtype=torch.int64)), ValueError,
                          "fused_loss: index"),
    "index float": (_fused_loss(index=torch.zeros(K, B)), TypeError, "fused_loss: index"),
    "weight other C": (_fused_loss(weight=torch.ones(C + 1)), ValueError, "fused_loss: weight"),
    "weight strided": (_fused_loss(weight=torch.ones(2 * C)[::2]), ValueError, "fused_loss: weight"),
    "weight float64": (_fused_loss(weight=torch.ones(C, dtype=torch.float64)), TypeError, "fused_loss: weight"),
    "ce_rescale not a scalar": (_fused_loss(ce_rescale=torch.ones(2)), ValueError, "fused_loss: ce_rescale"),
    "mode unknown": (_fused_loss(mode="ndcg"), ValueError, "fused_loss: mode"),
    "score unknown": (_fused_loss(score="margin"), ValueError, "fused_loss: score"),
    "block_c not a power of two": (_fused_loss(block_c=48), ValueError, "fused_loss: block_c"),
    "index on another device": (_fused_loss(index=torch.zeros(K, B, dtype=torch.int64, device=META)), ValueError,
                                "fused_loss: index is on meta"),
    # fused_loss_backward
    "grad_loss not dividing the rows": (lambda: OPS.fused_loss_backward(torch.randn((K + 1) * B, C), torch.ones(5)),
                                        ValueError, "fused_loss_backward: grad_loss"),
    "grad_loss 2-D": (lambda: OPS.fused_loss_backward(torch.randn((K + 1) * B, C), torch.ones(B, 1)), ValueError,
                      "fused_loss_backward: grad_loss"),
    "grad 1-D": (lambda: OPS.fused_loss_backward(torch.randn(B), torch.ones(B)), ValueError,
                 "fused_loss_backward: grad"),
    "grad expanded": (lambda: OPS.fused_loss_backward(torch.randn(1, C).expand((K + 1) * B, C), torch.ones(B)),
                      ValueError, "fused_loss_backward: grad"),
    "grad transposed": (lambda: OPS.fused_loss_backward(torch.randn(C, (K + 1) * B).t(), torch.ones(B)),
                        ValueError, "fused_loss_backward: grad"),
    # reduce_loss
    "ce other length": (_reduce(ce=torch.rand(B + 1)), ValueError, "reduce_loss: ce"),
    "loss strided": (_reduce(loss=torch.rand(2 * B)[::2]), ValueError, "reduce_loss: loss"),
    "reduce targets short": (_reduce(targets=torch.zeros(B - 1, dtype=torch.int64)), ValueError,
                             "reduce_loss: targets"),
    "ce_scale float64": (_reduce(ce_scale=torch.ones((), dtype=torch.float64)), TypeError, "reduce_loss: ce_scale"),
    # mix, mix_backward
    "x other batch": (_mix(torch.randn(B - 1, 3)), ValueError, "mix: x"),
    "x integer": (_mix(torch.zeros(B, 3, dtype=torch.int64)), TypeError, "mix: x"),
    "mix lam other shape": (_mix(torch.randn(B, 3), lam=torch.rand(K, B - 1)), ValueError, "mix: lam"),
    "mix lam float64": (_mix(torch.randn(B, 3), lam=torch.rand(K, B, dtype=torch.float64)), TypeError, "mix: lam"),
    "mix index float": (_mix(torch.randn(B, 3), index=torch.zeros(K, B)), TypeError, "mix: index"),
    "mix index empty": (_mix(torch.randn(B, 3), index=torch.zeros(0, B, dtype=torch.int64)), ValueError,
                        "mix: index"),
    "mix lam on another device": (_mix(torch.randn(B, 3), lam=torch.rand(K, B, device=META)), ValueError,
                                  "mix: lam is on meta"),
    "mix grad of B rows": (_mix(torch.randn(B, 3), backward=True), ValueError, "mix_backward: grad"),
    # paste_boxes, paste_boxes_backward
    "images 3-D": (_paste(torch.randn(B, 4, 4)), ValueError, "paste_boxes: x"),
    "boxes of 3": (_paste(torch.randn(B, 1, 4, 4), boxes=torch.zeros(K, B, 3, dtype=torch.int64)), ValueError,
                   "paste_boxes: boxes"),
    "boxes float": (_paste(torch.randn(B, 1, 4, 4), boxes=torch.zeros(K, B, 4)), TypeError, "paste_boxes: boxes"),
    "paste grad of B rows": (_paste(torch.randn(B, 1, 4, 4), backward=True), ValueError,
                             "paste_boxes_backward: grad"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_argument_raises_before_any_launch(case):
    call, error, where = CASES[case]
    with pytest.raises(error, match=f"^rankmixup_triton::{where}"):
        call()


def test_the_arguments_the_public_functions_pass_are_accepted():
    """The checks are no stricter than the operators' contracts: strided lam, no partners, the
    other options, an expanded scalar grad_loss, one sample, 1-D and float64 data and
    channels-last images all pass (the rest of the suite passes them through the public API)."""
    from rankmixup_ops.triton import op_args

    logits, mix_logits, targets, lam, index, mode, score, *_, block_c, weight, ce_rescale = _loss_args()
    op_args.check_fused_loss_args(logits, mix_logits, targets, lam, index, mode, score, block_c, weight, ce_rescale)
    op_args.check_fused_loss_args(logits, mix_logits, targets, lam.t().contiguous().t(), None, "mrl", "prob", 64,
                                  torch.ones(C), torch.ones(()))
    op_args.check_fused_loss_backward_args(torch.randn((K + 1) * B, C), torch.ones(()).expand(B))
    op_args.check_reduce_loss_args(torch.rand(1), torch.rand(1), torch.rand(1), torch.zeros(1, dtype=torch.int64),
                                   None)
    op_args.check_mix_args("mix", torch.randn(B), lam, index, per_mix_rows=False)
    op_args.check_mix_args("mix_backward", torch.randn(K * B, 2, 3, dtype=torch.float64), lam.double(), index,
                           per_mix_rows=True)
    op_args.check_paste_boxes_args("paste_boxes", torch.randn(B, 3, 4, 4).to(memory_format=torch.channels_last),
                                   torch.zeros(K, B, 4, dtype=torch.int64), index, per_mix_rows=False)


def test_checks_trace_with_symbolic_sizes_without_pinning_them():
    """Under torch.compile(dynamic=True) the checks run on fake tensors of symbolic sizes: they
    may only guard the relations the contract states (lam's B is the logits' B, mix_logits has
    K*B rows, ...), never a size to its value, which would recompile for every batch size."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    from rankmixup_ops.triton import op_args

    shape_env = ShapeEnv(duck_shape=False)  # every size its own symbol, as distinct as can be
    mode = FakeTensorMode(shape_env=shape_env)

    def symbolic(tensor):
        return mode.from_tensor(tensor, symbolic_context=StatelessSymbolicContext([DimDynamic.DYNAMIC] * tensor.dim()))

    logits, mix_logits, targets, lam, index, *_ = (symbolic(t) for t in _loss_args()[:5])
    weight, per_sample, x = symbolic(torch.ones(C)), symbolic(torch.rand(B)), symbolic(torch.randn(B, 3, 4, 4))
    boxes = symbolic(torch.zeros(K, B, 4, dtype=torch.int64))
    coordinates = boxes.shape[2].node.expr  # its symbol, before a guard fixes it
    with mode:
        op_args.check_fused_loss_args(logits, mix_logits, targets, lam, index, "mndcg", "logit", 0, weight, None)
        grad = torch.empty((lam.shape[0] + 1) * logits.shape[0], logits.shape[1])
        op_args.check_fused_loss_backward_args(grad, torch.ones(()).expand(logits.shape[0]))
        op_args.check_reduce_loss_args(per_sample, per_sample, per_sample, targets, None)
        op_args.check_mix_args("mix", x, lam, index, per_mix_rows=False)
        op_args.check_paste_boxes_args("paste_boxes", x, boxes, index, per_mix_rows=False)
    pinned = [guard.expr for guard in shape_env.guards if len(guard.expr.free_symbols) < 2]
    # The one size the contract fixes: a box's four coordinates.
    assert [str(expr) for expr in pinned] == [f"Eq({coordinates}, 4)"]
    assert shape_env.guards, "the checks compared no symbolic size: the test traced nothing"
