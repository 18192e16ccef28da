"""The reference implementation against SPEC.md: hand-worked examples, an independent
per-sample loop of the definitions, the closed-form gradients of SPEC §6, gradcheck, and
the properties the spec states."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rankmixup_ops import reference

import reference_code

LN = math.log
D2 = 1 / math.log2(3)  # discount of list position 2
D3 = 1 / math.log2(4)  # discount of list position 3 (= 0.5)


def _loss(logits, mix_logits, targets, lam, index, **options):
    options = {
        "mode": "mndcg",
        "alpha": 0.1,
        "margin": 2.0,
        "score": "logit",
        "ignore_index": -100,
        "label_smoothing": 0.0,
        "reduction": "mean",
        **options,
    }
    lam = torch.as_tensor(lam, dtype=torch.float64)
    if lam.dim() == 1:
        lam = lam.unsqueeze(1).expand(index.shape)
    return reference.rankmixup_loss(logits, mix_logits, targets, lam, index, **options)


# --- hand-worked examples ------------------------------------------------------------------


def _example_k1():
    """B=2, C=2, K=1, the two samples swapped with lam=0.7 (different classes: rel = 0.7).

    raw 0: [ln 3, 0] -> p = [3/4, 1/4], conf 0.75, max logit ln 3
    raw 1: [0, ln 4] -> p = [1/5, 4/5], conf 0.8,  max logit ln 4
    mix 0: [0, 0]    -> conf 0.5, max logit 0
    mix 1: [ln 9, 0] -> conf 0.9, max logit ln 9
    """
    logits = torch.tensor([[LN(3), 0.0], [0.0, LN(4)]], dtype=torch.float64)
    mix_logits = torch.tensor([[0.0, 0.0], [LN(9), 0.0]], dtype=torch.float64)
    return logits, mix_logits, torch.tensor([0, 1]), [0.7], torch.tensor([[1, 0]])


def test_hand_worked_k1_mndcg():
    out = _loss(*_example_k1(), mode="mndcg", alpha=0.5)
    # CE: -ln 0.75 = 0.287682, -ln 0.8 = 0.223144; mean 0.255413.
    ce = (-LN(0.75) - LN(0.8)) / 2
    # I = 1 + 0.7*d2 = 1.441651 for both samples.
    # D0 = 0.75 + 0.5*d2 = 1.065465 < I -> loss0 = 1 - D0/I = 0.260941
    # D1 = 0.8 + 0.9*d2 = 1.367837 < I -> loss1 = 1 - D1/I = 0.051201
    rank = (0.2609410985922568 + 0.05120105914530637) / 2
    assert out.ce.item() == pytest.approx(ce, rel=1e-12)
    assert ce == pytest.approx(0.2554128118829953, rel=1e-12)
    assert out.rank.item() == pytest.approx(rank, rel=1e-12)
    assert out.loss.item() == pytest.approx(ce + 0.5 * rank, rel=1e-12)


def test_hand_worked_k1_mrl_logit_and_prob():
    inputs = _example_k1()
    # logit score, margin 1: relu(0 - ln3 + 1) = 0; relu(ln9 - ln4 + 1) = 1.810930
    out = _loss(*inputs, mode="mrl", margin=1.0, score="logit", reduction="sum")
    assert out.rank.item() == pytest.approx(LN(9) - LN(4) + 1, rel=1e-12)
    assert out.rank.item() == pytest.approx(1.810930216216329, rel=1e-12)
    # prob score, margin 0.1: relu(0.5 - 0.75 + 0.1) = 0; relu(0.9 - 0.8 + 0.1) = 0.2
    out = _loss(*inputs, mode="mrl", margin=0.1, score="prob", reduction="none")
    torch.testing.assert_close(out.rank, torch.tensor([0.0, 0.2], dtype=torch.float64))


def _example_k2():
    """B=2, C=3, K=2: mix 0 pairs each sample with itself (same class: rel 1, MRL mask off),
    mix 1 swaps them with lam 0.6 (rel 0.6).

    raw 0: [ln 8, 0, 0]   conf 0.8       target 0
    raw 1: [ln 98, 0, 0]  conf 0.98      target 1 (p[1] = 0.01)
    mix (k0, b0): [ln 2, 0, 0]   conf 0.5
    mix (k0, b1): [ln 98, 0, 0]  conf 0.98
    mix (k1, b0): [0, ln 6, 0]   conf 0.75, max logit ln 6
    mix (k1, b1): [ln 98, 0, 0]  conf 0.98, max logit ln 98
    """
    logits = torch.tensor([[LN(8), 0, 0], [LN(98), 0, 0]], dtype=torch.float64)
    mix_logits = torch.tensor(
        [[LN(2), 0, 0], [LN(98), 0, 0], [0, LN(6), 0], [LN(98), 0, 0]], dtype=torch.float64
    )
    index = torch.tensor([[0, 1], [1, 0]])
    return logits, mix_logits, torch.tensor([0, 1]), [0.25, 0.6], index


def test_hand_worked_k2_mndcg_both_branches():
    out = _loss(*_example_k2(), mode="mndcg", reduction="none")
    # Order [raw, k0 (rel 1), k1 (rel 0.6)]; I = 1 + d2 + 0.6*d3 = 1.930930.
    # b0: D = 0.8 + 0.5*d2 + 0.75*d3 = 1.490465 < I -> 1 - D/I = 0.228110
    # b1: D = 0.98*(1 + d2 + d3) = 2.088311 > I  -> 1 - I/D = 0.075363
    torch.testing.assert_close(
        out.rank, torch.tensor([0.22811025412552832, 0.07536300531076678], dtype=torch.float64)
    )
    torch.testing.assert_close(out.ce, torch.tensor([-LN(0.8), -LN(0.01)], dtype=torch.float64))


def test_hand_worked_k2_mrl_mask():
    out = _loss(*_example_k2(), mode="mrl", margin=1.0, reduction="none")
    # Mix 0 is masked (same class). b0: relu(ln6 - ln8 + 1)/2 = 0.356159; b1: relu(0 + 1)/2 = 0.5
    torch.testing.assert_close(
        out.rank, torch.tensor([(LN(6) - LN(8) + 1) / 2, 0.5], dtype=torch.float64)
    )


def test_mndcg_ties_keep_mix_order():
    """lam 0.3 and 0.7 give the same relevance 0.7: mix 0 must take position 2, mix 1 position 3."""
    logits = torch.tensor([[LN(3), 0.0], [LN(3), 0.0]], dtype=torch.float64)  # conf 0.75
    # b0: mix 0 conf 0.5, mix 1 conf 0.9
    mix_logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [LN(9), 0.0], [0.0, 0.0]], dtype=torch.float64)
    index = torch.tensor([[1, 0], [1, 0]])
    out = _loss(logits, mix_logits, torch.tensor([0, 1]), [0.3, 0.7], index, reduction="none")
    ideal = 1 + 0.7 * D2 + 0.7 * D3
    dcg = 0.75 + 0.5 * D2 + 0.9 * D3
    assert out.rank[0].item() == pytest.approx(1 - dcg / ideal, rel=1e-12)


def test_label_smoothing_matches_torch():
    logits, mix_logits, targets, lam, index = _example_k1()
    out = _loss(logits, mix_logits, targets, lam, index, label_smoothing=0.2, reduction="none")
    torch.testing.assert_close(out.ce, F.cross_entropy(logits, targets, label_smoothing=0.2, reduction="none"))


# --- an independent loop over samples, straight from SPEC §5 --------------------------------


def _spec_loop(logits, mix_logits, targets, lam, index, *, mode, alpha, margin, score, ignore_index, label_smoothing):
    """Per-sample losses ``ce_b + alpha * rank_b`` (0 for ignored), in plain Python floats."""
    batch, classes = logits.shape
    num_mix = index.shape[0]
    rows = mix_logits.view(num_mix, batch, classes)

    def softmax(z):
        top = max(z)
        e = [math.exp(v - top) for v in z]
        return [v / sum(e) for v in e]

    def first_argmax(z):
        return max(range(len(z)), key=lambda c: (z[c], -c))

    def conf(z):
        return softmax(z)[first_argmax(z)]

    losses, ce_parts, rank_parts = [], [], []
    for b in range(batch):
        y = int(targets[b])
        if y == ignore_index:
            losses.append(0.0), ce_parts.append(0.0), rank_parts.append(0.0)
            continue
        z = logits[b].tolist()
        p = softmax(z)
        ce = -sum(
            ((1 - label_smoothing) * (c == y) + label_smoothing / classes) * math.log(p[c]) for c in range(classes)
        )
        mixes = []
        for k in range(num_mix):
            j = int(index[k, b])
            lk = float(lam[k, b])
            rel = 1.0 if int(targets[j]) == y else max(lk, 1 - lk)
            mixes.append((rel, k, rows[k, b].tolist()))
        if mode == "mrl":
            s = (lambda v: max(v)) if score == "logit" else conf
            rank = sum(max(s(zm) - s(z) + margin, 0.0) for rel, _, zm in mixes if rel < 1) / num_mix
        else:
            ordered = sorted(mixes, key=lambda m: (-m[0], m[1]))
            gains = [conf(z)] + [conf(zm) for _, _, zm in ordered]
            rels = [1.0] + [rel for rel, _, _ in ordered]
            d = [1 / math.log2(p + 1) for p in range(1, num_mix + 2)]
            dcg = sum(g * w for g, w in zip(gains, d))
            idcg = sum(r * w for r, w in zip(rels, d))
            rank = 1 - (dcg / idcg if idcg > dcg else idcg / dcg)
        losses.append(ce + alpha * rank), ce_parts.append(ce), rank_parts.append(rank)
    return losses, ce_parts, rank_parts


def random_problem(batch, classes, num_mix, *, seed, ignore=0.0, dtype=torch.float64, per_sample=True, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, classes, generator=gen, dtype=dtype)
    mix_logits = scale * torch.randn(num_mix * batch, classes, generator=gen, dtype=dtype)
    targets = torch.randint(0, classes, (batch,), generator=gen)
    targets[torch.rand(batch, generator=gen) < ignore] = -100
    lam_shape = (num_mix, batch) if per_sample else (num_mix, 1)
    lam = torch.rand(lam_shape, generator=gen, dtype=torch.float64).expand(num_mix, batch)
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)])
    return logits, mix_logits, targets, lam, index


@pytest.mark.parametrize("mode,score", [("mndcg", "logit"), ("mrl", "logit"), ("mrl", "prob")])
@pytest.mark.parametrize("batch,classes,num_mix", [(1, 1, 1), (5, 3, 1), (7, 10, 3), (9, 4, 8)])
@pytest.mark.parametrize("ignore", [0.0, 0.4])
def test_matches_spec_loop(mode, score, batch, classes, num_mix, ignore):
    problem = random_problem(batch, classes, num_mix, seed=batch * 100 + num_mix, ignore=ignore)
    options = dict(mode=mode, alpha=0.3, margin=1.5, score=score, ignore_index=-100, label_smoothing=0.1)
    losses, ce, rank = _spec_loop(*problem, **options)
    out = _loss(*problem, reduction="none", **options)
    expected = torch.tensor([losses, ce, rank], dtype=torch.float64)
    torch.testing.assert_close(torch.stack(list(out)), expected, rtol=1e-12, atol=1e-12)
    n_valid = max(sum(int(t) != -100 for t in problem[2]), 1)
    for reduction, scale in (("sum", 1.0), ("mean", 1.0 / n_valid)):
        out = _loss(*problem, reduction=reduction, **options)
        torch.testing.assert_close(torch.stack(list(out)), expected.sum(dim=1) * scale, rtol=1e-12, atol=1e-12)


# --- the gradients of SPEC §6 ---------------------------------------------------------------


def _spec_gradients(logits, mix_logits, targets, lam, index, *, mode, alpha, margin, score, label_smoothing):
    """d(sum over samples of ce_b + alpha * rank_b) / d(logits, mix_logits), from SPEC §6."""
    batch, classes = logits.shape
    num_mix = index.shape[0]
    z_mix = mix_logits.view(num_mix, batch, classes)
    valid = (targets != -100).to(logits.dtype)
    p_raw, p_mix = logits.softmax(-1), z_mix.softmax(-1)
    m_raw, m_mix = logits.argmax(-1), z_mix.argmax(-1)
    oh_raw, oh_mix = F.one_hot(m_raw, classes).to(logits.dtype), F.one_hot(m_mix, classes).to(logits.dtype)
    conf_raw, conf_mix = p_raw.gather(-1, m_raw[:, None]), p_mix.gather(-1, m_mix[..., None])
    dconf_raw, dconf_mix = conf_raw * (oh_raw - p_raw), conf_mix * (oh_mix - p_mix)

    y = F.one_hot(targets.clamp(min=0), classes).to(logits.dtype)
    y = (1 - label_smoothing) * y + label_smoothing / classes
    g_raw = p_raw - y
    g_mix = torch.zeros_like(z_mix)
    rel = reference.relevance(targets, lam, index).to(logits.dtype)
    if mode == "mrl":
        if score == "logit":
            s_raw, s_mix = logits.max(-1).values, z_mix.max(-1).values
            ds_raw, ds_mix = oh_raw, oh_mix
        else:
            s_raw, s_mix = conf_raw[:, 0], conf_mix[..., 0]
            ds_raw, ds_mix = dconf_raw, dconf_mix
        active = ((rel < 1) & (s_mix - s_raw + margin > 0)).to(logits.dtype) / num_mix  # a_kb / K
        g_mix += alpha * active[..., None] * ds_mix
        g_raw -= alpha * active.sum(0)[:, None] * ds_raw
    else:
        order = torch.argsort(rel, dim=0, descending=True, stable=True)
        position = torch.empty_like(order)
        position.scatter_(0, order, torch.arange(2, num_mix + 2).unsqueeze(1).expand_as(order))
        d_mix = 1 / torch.log2(position.to(logits.dtype) + 1)
        dcg = conf_raw[:, 0] + (conf_mix[..., 0] * d_mix).sum(0)
        idcg = 1 + (rel * d_mix).sum(0)
        coef = torch.where(idcg > dcg, -1 / idcg, idcg / dcg**2)  # d mndcg / d gain_p, over d_p
        g_raw += alpha * coef[:, None] * dconf_raw
        g_mix += alpha * (coef * d_mix)[..., None] * dconf_mix
    g_raw = g_raw * valid[:, None]
    g_mix = g_mix * valid[None, :, None]
    return g_raw, g_mix.view_as(mix_logits)


@pytest.mark.parametrize("mode,score", [("mndcg", "logit"), ("mrl", "logit"), ("mrl", "prob")])
@pytest.mark.parametrize("batch,classes,num_mix", [(6, 5, 1), (8, 7, 3), (5, 4, 6)])
def test_autograd_matches_spec_gradients(mode, score, batch, classes, num_mix):
    problem = random_problem(batch, classes, num_mix, seed=7 * batch + num_mix, ignore=0.25)
    options = dict(mode=mode, alpha=0.7, margin=1.0, score=score, label_smoothing=0.05)
    logits, mix_logits = (t.clone().requires_grad_() for t in problem[:2])
    out = _loss(logits, mix_logits, *problem[2:], reduction="sum", **options)
    grads = torch.autograd.grad(out.loss, (logits, mix_logits))
    expected = _spec_gradients(*problem, **options)
    torch.testing.assert_close(grads, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("mode,score", [("mndcg", "logit"), ("mrl", "logit"), ("mrl", "prob")])
def test_gradcheck(mode, score, reduction):
    logits, mix_logits, targets, lam, index = random_problem(5, 4, 3, seed=11, scale=1.0)
    targets[[1, 3]] = -100

    def loss(raw, mixed):
        return _loss(
            raw, mixed, targets, lam, index, mode=mode, score=score, reduction=reduction, margin=0.5, alpha=0.9
        ).loss

    inputs = (logits.requires_grad_(), mix_logits.requires_grad_())
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7)


def test_gradcheck_mix():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    lam = torch.rand(4, 5, dtype=torch.float64, generator=gen)
    index = torch.stack([torch.randperm(5, generator=gen) for _ in range(4)])
    assert torch.autograd.gradcheck(lambda v: reference.mix(v, lam, index), (x,))


def test_mix_gradient_is_spec_formula():
    """grad_x[b] = sum_k lam[k,b] g[k,b] + sum_k (1 - lam[k,j]) g[k,j] over j with index[k,j] == b."""
    gen = torch.Generator().manual_seed(4)
    batch, num_mix = 6, 3
    x = torch.randn(batch, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    lam = torch.rand(num_mix, batch, dtype=torch.float64, generator=gen)
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)])
    g = torch.randn(num_mix * batch, 4, dtype=torch.float64, generator=gen)
    (grad,) = torch.autograd.grad(reference.mix(x, lam, index), x, g)
    g = g.view(num_mix, batch, 4)
    expected = torch.zeros(batch, 4, dtype=torch.float64)
    for k in range(num_mix):
        for j in range(batch):
            expected[j] += lam[k, j] * g[k, j]
            expected[index[k, j]] += (1 - lam[k, j]) * g[k, j]
    torch.testing.assert_close(grad, expected)


# --- properties -----------------------------------------------------------------------------


def test_perfectly_ordered_list_has_zero_mndcg_loss():
    """Gains equal to relevances (raw conf 1, each mix's conf equal to its relevance) give
    DCG = IDCG, so the M-NDCG loss is 0."""
    batch, num_mix = 6, 3
    targets = torch.arange(batch) % 2  # odd shifts pair different classes: rel = max(lam, 1 - lam)
    index = torch.stack([(torch.arange(batch) + 2 * k + 1) % batch for k in range(num_mix)])
    lam = torch.tensor([0.9, 0.3, 0.55], dtype=torch.float64).unsqueeze(1).expand(num_mix, batch)
    rel = torch.maximum(lam, 1 - lam)
    logits = torch.zeros(batch, 2, dtype=torch.float64)
    logits[:, 0] = 200.0  # conf = 1 to float64 rounding
    mix_logits = torch.zeros(num_mix, batch, 2, dtype=torch.float64)
    mix_logits[..., 0] = torch.log(rel / (1 - rel))  # two classes: conf = sigmoid(gap) = rel
    out = reference.rankmixup_loss(
        logits, mix_logits.view(-1, 2), targets, lam, index, mode="mndcg", alpha=1.0, margin=0.0,
        score="logit", ignore_index=-100, label_smoothing=0.0, reduction="none",
    )
    torch.testing.assert_close(out.rank, torch.zeros(batch, dtype=torch.float64), atol=1e-14, rtol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("mode", ["mndcg", "mrl"])
def test_all_ignored_batch_is_zero_with_zero_gradient(mode, reduction):
    logits, mix_logits, _, lam, index = random_problem(4, 3, 2, seed=5)
    logits[0, 0] = float("nan")  # ignored rows may even hold non-finite values
    mix_logits[1, 2] = float("inf")
    logits.requires_grad_(), mix_logits.requires_grad_()
    targets = torch.full((4,), -100)
    out = _loss(logits, mix_logits, targets, lam, index, mode=mode, reduction=reduction)
    assert torch.equal(out.loss, torch.zeros_like(out.loss))
    out.loss.sum().backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert torch.equal(mix_logits.grad, torch.zeros_like(mix_logits))


def test_ignored_samples_do_not_change_the_others():
    problem = random_problem(6, 5, 3, seed=8)
    targets = problem[2].clone()
    targets[2] = -100
    full = _loss(*problem[:2], targets, *problem[3:], reduction="none")
    poisoned_logits = problem[0].clone()
    poisoned_logits[2] = float("nan")
    poisoned_mix = problem[1].clone().view(3, 6, 5)
    poisoned_mix[:, 2] = float("inf")
    poisoned = _loss(poisoned_logits, poisoned_mix.view(18, 5), targets, *problem[3:], reduction="none")
    torch.testing.assert_close(poisoned.loss, full.loss)
    assert poisoned.loss[2] == 0


def test_nonfinite_logits_of_valid_samples_propagate_nan():
    logits, mix_logits, targets, lam, index = random_problem(3, 4, 1, seed=9)
    logits[1, 0] = float("nan")
    targets[1] = 0
    assert torch.isnan(_loss(logits, mix_logits, targets, lam, index).loss)


def test_k1_mrl_equals_reference_code_without_same_class_pairs():
    batch = 8
    logits, mix_logits, _, _, _ = random_problem(batch, 10, 1, seed=12, scale=1.0)
    targets = torch.randperm(10)[:batch]  # distinct labels ...
    index = ((torch.arange(batch) + 3) % batch).unsqueeze(0)  # ... and no self-pairs
    lam = torch.full((1, batch), 0.35, dtype=torch.float64)
    out = _loss(logits, mix_logits, targets, lam, index, mode="mrl", margin=0.1, alpha=1.0)
    torch.testing.assert_close(out.rank, reference_code.mrl_k1(logits, mix_logits, 0.1))


@pytest.mark.parametrize("num_mix", [1, 2, 3, 5])
def test_mndcg_equals_reference_code_without_ties(num_mix):
    batch, classes = 7, 9
    logits, mix_logits, _, _, _ = random_problem(batch, classes, num_mix, seed=num_mix, scale=2.0)
    targets = torch.randperm(classes)[:batch]
    index = torch.stack([(torch.arange(batch) + k + 1) % batch for k in range(num_mix)])
    lam = torch.tensor([0.9, 0.2, 0.65, 0.45, 0.03][:num_mix], dtype=torch.float64)
    lam = lam.unsqueeze(1).expand(num_mix, batch)
    target_re = reference.soft_targets(targets, lam, index, classes).to(torch.float64)
    out = _loss(logits, mix_logits, targets, lam, index, reduction="none")
    torch.testing.assert_close(out.rank, reference_code.mndcg(logits, mix_logits, target_re, num_mix))


def test_relevance_is_largest_soft_target_entry():
    problem = random_problem(9, 3, 4, seed=13)
    targets, lam, index = problem[2], problem[3].float(), problem[4]
    soft = reference.soft_targets(targets, lam, index, 3).view(4, 9, 3)
    torch.testing.assert_close(reference.relevance(targets, lam, index), soft.max(-1).values)


def test_soft_targets_hand_worked():
    targets = torch.tensor([0, 2, -100])
    index = torch.tensor([[1, 0, 2]])
    lam = torch.tensor([[0.25, 0.25, 0.25]])
    soft = reference.soft_targets(targets, lam, index, 3, label_smoothing=0.3)
    # smoothed one-hots: y0 = [0.8, 0.1, 0.1], y2 = [0.1, 0.1, 0.8], ignored = [0, 0, 0]
    expected = torch.tensor(
        [
            [0.25 * 0.8 + 0.75 * 0.1, 0.1, 0.25 * 0.1 + 0.75 * 0.8],
            [0.25 * 0.1 + 0.75 * 0.8, 0.1, 0.25 * 0.8 + 0.75 * 0.1],
            [0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(soft, expected)


def test_loss_dtype_is_accumulation_dtype():
    problem = random_problem(4, 5, 2, seed=1, dtype=torch.bfloat16)
    out = _loss(*problem)
    assert out.loss.dtype == torch.float32
    assert reference.mix(problem[0], problem[3], problem[4]).dtype == torch.bfloat16
