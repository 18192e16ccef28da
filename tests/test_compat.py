"""The drop-in classes for the reference code's RankMixup_MRL / RankMixup_MNDCG."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rankmixup_ops as rmx
from rankmixup_ops.compat import RankMixup_MNDCG, RankMixup_MRL

import reference_code


def _batch(batch=6, classes=10, num_mix=3, seed=0, distinct=False):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=gen)
    mix_logits = torch.randn(num_mix * batch, classes, generator=gen)
    if distinct:  # no two samples share a class, no sample is its own partner
        targets = torch.randperm(classes, generator=gen)[:batch]
        index = torch.stack([(torch.arange(batch) + k + 1) % batch for k in range(num_mix)])
    else:
        targets = torch.randint(0, 3, (batch,), generator=gen)
        index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)])
    lam = torch.rand(num_mix, generator=gen)
    target_re = rmx.soft_targets(targets, lam, index, classes)
    return logits, targets, mix_logits, target_re, lam, index


@pytest.mark.parametrize("num_mix", [1, 3])
def test_mndcg_equals_native_loss(num_mix):
    logits, targets, mix_logits, target_re, lam, index = _batch(num_mix=num_mix)
    loss, loss_ce, loss_mixup = RankMixup_MNDCG(num_classes=10, alpha=0.1)(logits, targets, mix_logits, target_re, lam)
    native = rmx.rankmixup_loss(logits, mix_logits, targets, lam, index, mode="mndcg", alpha=0.1)
    torch.testing.assert_close((loss, loss_ce, loss_mixup), tuple(native))


@pytest.mark.parametrize("num_mix", [1, 3])
def test_mrl_equals_native_loss_for_any_k(num_mix):
    """The reference code's MRL fails with a shape error for K > 1; the drop-in does not."""
    logits, targets, mix_logits, target_re, lam, index = _batch(num_mix=num_mix)
    criterion = RankMixup_MRL(num_classes=10, margin=0.1, alpha=0.1)
    loss, loss_ce, loss_mixup = criterion(logits, targets, mix_logits, target_re, lam)
    native = rmx.rankmixup_loss(logits, mix_logits, targets, lam, index, mode="mrl", alpha=0.1, margin=0.1)
    torch.testing.assert_close((loss, loss_ce, loss_mixup), tuple(native))


def test_mrl_k1_equals_reference_code_value_without_same_class_pairs():
    logits, targets, mix_logits, target_re, lam, _ = _batch(num_mix=1, distinct=True)
    loss, _, loss_mixup = RankMixup_MRL(num_classes=10, margin=0.1, alpha=0.1)(logits, targets, mix_logits, target_re, lam)
    mrl = reference_code.mrl_k1(logits, mix_logits, 0.1)
    torch.testing.assert_close(loss_mixup, mrl)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets) + 0.1 * mrl)


def test_mrl_masks_same_class_mixes_instead_of_scaling():
    logits, targets, mix_logits, target_re, lam, _ = _batch(num_mix=1, distinct=True)
    target_re[2] = F.one_hot(targets[2], 10).float()  # mix of sample 2 is now a same-class mix
    _, _, loss_mixup = RankMixup_MRL(num_classes=10, margin=0.1)(logits, targets, mix_logits, target_re, lam)
    hinge = F.relu(mix_logits.max(1).values - logits.max(1).values + 0.1)
    hinge[2] = 0
    torch.testing.assert_close(loss_mixup, hinge.mean())


def test_same_class_soft_target_rounded_below_one_still_counts_as_one():
    logits, targets, mix_logits, target_re, lam, _ = _batch(num_mix=1, distinct=True)
    target_re[2] = 0
    target_re[2, targets[2]] = 1 - torch.finfo(torch.float32).eps / 2  # lam + (1 - lam) in float32
    exact = target_re.clone()
    exact[2, targets[2]] = 1.0
    for criterion in (RankMixup_MRL(num_classes=10), RankMixup_MNDCG(num_classes=10)):
        rounded_out = criterion(logits, targets, mix_logits, target_re, lam)
        exact_out = criterion(logits, targets, mix_logits, exact, lam)
        torch.testing.assert_close(rounded_out, exact_out)


def test_ignored_samples_drop_their_mixes_too():
    logits, targets, mix_logits, target_re, lam, _ = _batch()
    kept, _, _ = RankMixup_MNDCG(num_classes=10)(logits, targets, mix_logits, target_re, lam)
    targets[1] = -100
    loss, _, _ = RankMixup_MNDCG(num_classes=10)(logits, targets, mix_logits, target_re, lam)
    assert not torch.allclose(loss, kept)
    # Whatever the ignored sample's mixed rows hold, the loss does not see them.
    poisoned = mix_logits.clone().view(3, 6, 10)
    poisoned[:, 1] = float("nan")
    again, _, _ = RankMixup_MNDCG(num_classes=10)(logits, targets, poisoned.view(18, 10), target_re, lam)
    torch.testing.assert_close(again, loss)


def test_gradients_flow_to_both_logit_tensors():
    logits, targets, mix_logits, target_re, lam, _ = _batch()
    logits.requires_grad_(), mix_logits.requires_grad_()
    loss, _, _ = RankMixup_MNDCG(num_classes=10)(logits, targets, mix_logits, target_re, lam)
    loss.backward()
    assert logits.grad.abs().sum() > 0 and mix_logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "mutate,error,message",
    [
        (lambda a: a.update(logits=a["logits"][:, :5]), ValueError, "inputs must have shape"),
        (lambda a: a.update(mix_logits=a["mix_logits"][:-1]), ValueError, "mixup must have shape"),
        (lambda a: a.update(target_re=a["target_re"][:-6]), ValueError, "target_re must have shape"),
        (lambda a: a.update(targets=a["targets"].float()), TypeError, "targets must be an integer"),
        (lambda a: a.update(lam=torch.rand(4)), ValueError, "lam has 4 values"),
    ],
)
def test_bad_input(mutate, error, message):
    logits, targets, mix_logits, target_re, lam, _ = _batch()
    args = dict(logits=logits, targets=targets, mix_logits=mix_logits, target_re=target_re, lam=lam)
    mutate(args)
    with pytest.raises(error, match=message):
        RankMixup_MNDCG(num_classes=10)(*args.values())


def test_constructor_defaults_match_reference_code():
    mrl = RankMixup_MRL()
    assert (mrl.num_classes, mrl.margin, mrl.alpha, mrl.ignore_index) == (10, 0.1, 0.1, -100)
    mndcg = RankMixup_MNDCG()
    assert (mndcg.num_classes, mndcg.alpha, mndcg.ignore_index) == (10, 0.1, -100)


def test_names_of_the_returned_terms_match_reference_code():
    """The reference trainer logs one meter per name when the loss class has `names`, and the
    total alone when it has none."""
    for criterion in (RankMixup_MRL(), RankMixup_MNDCG()):
        assert criterion.names == ("loss", "loss_ce", "loss_mixup")


class _ReferenceCodeMNDCG(torch.nn.Module):
    """The public code's RankMixup_MNDCG class, on its re-derived formulas."""

    def __init__(self, num_classes=10, alpha=0.1):
        super().__init__()
        self.num_classes, self.alpha = num_classes, alpha

    def forward(self, inputs, targets, mixup, target_re, lam):
        loss_ce = F.cross_entropy(inputs, targets)
        loss_mixup = reference_code.mndcg(inputs, mixup, target_re, len(lam)).mean()
        return loss_ce + self.alpha * loss_mixup, loss_ce, loss_mixup


def _reference_style_training(criterion, steps=5):
    """The reference code's loop: raw and mixed batches through the model, soft targets built
    from (lam, index), the loss class called with (inputs, targets, mixup, target_re, lam)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    batch, num_mix = 8, 3
    for _ in range(steps):
        x = torch.randn(batch, 12, generator=gen)
        targets = torch.randperm(10, generator=gen)[:batch]  # distinct labels: no relevance ties
        lam = torch.tensor([0.9, 0.25, 0.6])
        index = torch.stack([(torch.arange(batch) + k + 1) % batch for k in range(num_mix)])
        mixed = rmx.mix(x, lam, index)
        target_re = rmx.soft_targets(targets, lam, index, 10)
        loss, _, _ = criterion(model(x), targets, model(mixed), target_re, lam)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return list(model.parameters())


def test_switching_the_import_keeps_training_identical():
    """Where the reference code is not buggy (M-NDCG without ties), the drop-in trains the same."""
    theirs = _reference_style_training(_ReferenceCodeMNDCG(num_classes=10, alpha=0.1))
    ours = _reference_style_training(RankMixup_MNDCG(num_classes=10, alpha=0.1))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
