"""Tests of rankmixup_ops.metrics against a plain-Python transcription of the definitions."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from rankmixup_ops.metrics import METRICS, CalibrationMeter, calibration_errors, reliability_diagram

# --------------------------------------------------------------------------- reference


def _bin_of(value: float, n_bins: int) -> int:
    """Bin i holds (i/n, (i+1)/n]; bin 0 also holds 0."""
    for i in range(n_bins):
        if value <= (i + 1) / n_bins:
            return i
    return n_bins - 1


def _nonempty_bins(groups: list[list[tuple[float, float]]], n: int) -> list[tuple[float, float, float]]:
    """(weight, mean confidence, mean hit) of every non-empty group of (confidence, hit) pairs."""
    stats = []
    for group in groups:
        if group:
            confidences, hits = zip(*group)
            stats.append((len(group) / n, sum(confidences) / len(group), sum(hits) / len(group)))
    return stats


def _ece(groups: list[list[tuple[float, float]]], n: int) -> float:
    return sum(w * abs(c - a) for w, c, a in _nonempty_bins(groups, n))


def _equal_width(pairs: list[tuple[float, float]], n_bins: int) -> list[list[tuple[float, float]]]:
    groups = [[] for _ in range(n_bins)]
    for conf, hit in pairs:
        groups[_bin_of(conf, n_bins)].append((conf, hit))
    return groups


def reference_errors(
    rows: list[list[float]], targets: list[int], n_bins: int, *, from_probs: bool, tiny: float
) -> dict[str, float]:
    """The definitions of docs/metrics.md, loop by loop in Python floats."""
    n, num_classes = len(rows), len(rows[0])
    probs, losses = [], []
    for row, target in zip(rows, targets):
        if from_probs:
            p = list(row)
            log_p = math.log(max(p[target], tiny)) if 0 <= target < num_classes else math.nan
        else:
            top = max(row)
            z = sum(math.exp(x - top) for x in row)
            p = [math.exp(x - top) / z for x in row]
            log_p = row[target] - top - math.log(z) if 0 <= target < num_classes else math.nan
        probs.append(p)
        losses.append(-log_p)
    pairs = []
    for row, p, target in zip(rows, probs, targets):
        prediction = row.index(max(row))  # first maximum
        pairs.append((max(p), float(prediction == target)))

    top_label = _nonempty_bins(_equal_width(pairs, n_bins), n)
    ordered = sorted(pairs, key=lambda pair: pair[0])  # sorted() is stable
    size, extra = divmod(n, n_bins)
    adaptive, start = [], 0
    for g in range(n_bins):
        stop = start + size + (g < extra)
        adaptive.append(ordered[start:stop])
        start = stop
    classwise = []
    for k in range(num_classes):
        class_pairs = [(p[k], float(t == k)) for p, t in zip(probs, targets)]
        classwise.append(_ece(_equal_width(class_pairs, n_bins), n))
    return {
        "ece": sum(w * abs(c - a) for w, c, a in top_label),
        "adaece": _ece(adaptive, n),
        "cece": sum(classwise) / num_classes,
        "mce": max(abs(c - a) for _, c, a in top_label),
        "oe": sum(w * c * max(c - a, 0.0) for w, c, a in top_label),
        "ue": sum(w * c * max(a - c, 0.0) for w, c, a in top_label),
        "nll": sum(losses) / n,
        "acc": sum(hit for _, hit in pairs) / n,
    }


def assert_matches_reference(logits: torch.Tensor, targets: torch.Tensor, n_bins: int, from_probs: bool, tol: float):
    got = calibration_errors(logits, targets, n_bins=n_bins, from_probs=from_probs)
    want = reference_errors(
        logits.double().tolist(),
        targets.tolist(),
        n_bins,
        from_probs=from_probs,
        tiny=torch.finfo(logits.dtype).tiny,
    )
    assert set(got) == set(METRICS)
    for name in METRICS:
        assert got[name].shape == () and got[name].device == logits.device
        assert got[name].item() == pytest.approx(want[name], rel=tol, abs=tol, nan_ok=True), name


def random_batch(seed: int, n: int, num_classes: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits spread enough to fill many bins; targets agree with the argmax about half the time."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes, generator=gen, dtype=torch.float64) * 3
    random_targets = torch.randint(num_classes, (n,), generator=gen)
    targets = torch.where(torch.rand(n, generator=gen) < 0.5, logits.argmax(1), random_targets)
    return logits.to(dtype), targets


def assert_same_errors(got: dict, want: dict, rtol: float = 1e-12) -> None:
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=1e-12, equal_nan=True, msg=name)


# --------------------------------------------------------------------------- one-shot vs reference


@pytest.mark.parametrize("from_probs", [False, True])
@pytest.mark.parametrize("num_classes", [1, 2, 10])
@pytest.mark.parametrize("n", [1, 7, 100, 1000])
@pytest.mark.parametrize("seed, n_bins", [(0, 15), (1, 4), (2, 1)])
def test_matches_reference(seed, n_bins, n, num_classes, from_probs):
    logits, targets = random_batch(seed, n, num_classes)
    if from_probs:
        # float32 probabilities: the reference sees exactly the values the metric bins.
        logits = logits.softmax(dim=1).float()
    assert_matches_reference(logits, targets, n_bins, from_probs, tol=1e-9)


def test_float32_logits_match_reference():
    logits, targets = random_batch(3, 500, 10, torch.float32)
    assert_matches_reference(logits, targets, 15, from_probs=False, tol=1e-5)


# Values from a grid with many points exactly on bin edges (for every n_bins drawn), exact in
# float32; rows need not sum to one, so the grid exercises ties and edges in every column.
_EDGE_VALUES = [0.0, 0.125, 0.25, float(torch.tensor(1 / 3)), 1 / 3, 0.5, 2 / 3, 0.75, 1.0]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 20),
    num_classes=st.integers(1, 4),
    n_bins=st.sampled_from([1, 2, 3, 4, 8, 15]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_edge_values_match_reference(data, n, num_classes, n_bins, dtype):
    values = st.lists(st.sampled_from(_EDGE_VALUES), min_size=num_classes, max_size=num_classes)
    rows = data.draw(st.lists(values, min_size=n, max_size=n))
    targets = data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    assert_matches_reference(torch.tensor(rows, dtype=dtype), torch.tensor(targets), n_bins, True, tol=1e-12)


# --------------------------------------------------------------------------- edge cases


def _bin_counts(value: float, dtype: torch.dtype, n_bins: int) -> list[int]:
    """Bin counts of a single sample whose confidence is exactly ``value``."""
    probs = torch.tensor([[value]], dtype=dtype)
    return reliability_diagram(probs, torch.tensor([0]), n_bins=n_bins, from_probs=True)["count"].tolist()


@pytest.mark.parametrize(
    "value, dtype, n_bins, expected_bin",
    [
        (0.0, torch.float32, 15, 0),  # 0 belongs to the first bin (not dropped)
        (1.0, torch.float32, 15, 14),  # 1 belongs to the last bin
        (1.0, torch.float16, 1, 0),
        (0.5, torch.float32, 2, 0),  # an edge goes to the bin below: (0, 0.5]
        (0.5, torch.bfloat16, 4, 1),  # (0.25, 0.5]
        (0.25, torch.float16, 4, 0),
        (0.75, torch.float64, 4, 2),
        (1 / 3, torch.float64, 3, 0),  # float64 1/3 is the edge itself ...
        (1 / 3, torch.float32, 3, 1),  # ... float32 1/3 lies above it
        (11 / 15, torch.float64, 15, 10),  # torch.linspace puts this edge one ulp higher
        (math.nextafter(11 / 15, 1), torch.float64, 15, 11),
    ],
)
def test_bin_edges(value, dtype, n_bins, expected_bin):
    expected = [0] * n_bins
    expected[expected_bin] = 1
    assert _bin_counts(value, dtype, n_bins) == expected


def test_all_zero_probability_row():
    """A zero row has confidence 0 (bin 0), predicts class 0 and has a finite loss."""
    got = calibration_errors(torch.zeros(1, 3), torch.tensor([0]), from_probs=True)
    assert got["acc"] == 1 and got["ece"] == 1 and got["mce"] == 1 and got["ue"] == 0
    assert got["nll"] == pytest.approx(-math.log(torch.finfo(torch.float32).tiny))


def test_argmax_ties_pick_the_lowest_index():
    logits = torch.tensor([[2.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    assert calibration_errors(logits, torch.tensor([0, 1]))["acc"] == 1
    assert calibration_errors(logits, torch.tensor([1, 2]))["acc"] == 0


def test_single_class():
    got = calibration_errors(torch.randn(5, 1), torch.zeros(5, dtype=torch.long))
    assert {name: value.item() for name, value in got.items()} == {
        "ece": 0.0, "adaece": 0.0, "cece": 0.0, "mce": 0.0, "oe": 0.0, "ue": 0.0, "nll": 0.0, "acc": 1.0
    }


def test_fewer_samples_than_bins():
    """AdaECE's groups are then the singletons: the mean of |confidence - correct|."""
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], dtype=torch.float64)
    targets = torch.tensor([0, 0, 0])
    got = calibration_errors(probs, targets, n_bins=15, from_probs=True)
    assert got["adaece"].item() == pytest.approx((0.1 + 0.7 + 0.4) / 3)


def test_empty_bins_are_skipped():
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45]], dtype=torch.float64)
    got = calibration_errors(probs, torch.tensor([0, 1, 0]), n_bins=10, from_probs=True)
    assert got["ece"].item() == pytest.approx(2 / 3 * 0.45 + 1 / 3 * 0.45)
    assert got["mce"].item() == pytest.approx(0.45)


def test_non_finite_logits():
    """NaN propagates instead of crashing (SPEC §9); -inf is a valid masked class."""
    got = calibration_errors(torch.tensor([[math.nan, 0.0], [1.0, 0.0]]), torch.tensor([0, 0]))
    assert all(math.isnan(got[name]) for name in ("ece", "adaece", "cece", "mce", "nll"))
    got = calibration_errors(torch.tensor([[-math.inf, 0.0]]), torch.tensor([1]))
    assert got["ece"] == 0 and got["nll"] == 0 and got["acc"] == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_upcast_to_float32(dtype):
    logits, targets = random_batch(4, 300, 10, dtype)
    assert_same_errors(calibration_errors(logits, targets), calibration_errors(logits.float(), targets), rtol=0)
    # Probabilities are binned as given (float16 ones below its smallest normal, of which
    # there are some, clamp there for the loss).
    probs = logits.float().softmax(dim=1).to(dtype)
    assert_matches_reference(probs, targets, 15, from_probs=True, tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_any_integer_targets(dtype):
    logits, targets = random_batch(5, 50, 4)
    assert_same_errors(calibration_errors(logits, targets.to(dtype)), calibration_errors(logits, targets), rtol=0)


def test_out_of_range_targets_give_nan_loss_without_validate():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    got = calibration_errors(logits, torch.tensor([0, 2]))
    assert math.isnan(got["nll"]) and got["acc"] == 0.5
    with pytest.raises(ValueError, match="calibration_errors: targets"):
        calibration_errors(logits, torch.tensor([0, -1]), validate=True)


def test_validate_probability_range():
    with pytest.raises(ValueError, match="calibration_errors: logits must be probabilities"):
        calibration_errors(torch.tensor([[1.5, -0.5]]), torch.tensor([0]), from_probs=True, validate=True)


_LOGITS, _TARGETS = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        ({"logits": [[0.0, 1.0]]}, TypeError, "logits"),
        ({"logits": torch.zeros(3, 2, dtype=torch.long)}, TypeError, "logits"),
        ({"logits": torch.zeros(3)}, ValueError, "logits"),
        ({"logits": torch.zeros(0, 2), "targets": torch.zeros(0, dtype=torch.long)}, ValueError, "logits"),
        ({"logits": torch.zeros(3, 0)}, ValueError, "logits"),
        ({"targets": torch.zeros(3)}, TypeError, "targets"),
        ({"targets": torch.zeros(3, dtype=torch.bool)}, TypeError, "targets"),
        ({"targets": torch.zeros(4, dtype=torch.long)}, ValueError, "targets"),
        ({"targets": torch.zeros(3, 1, dtype=torch.long)}, ValueError, "targets"),
        ({"targets": torch.zeros(3, dtype=torch.long, device="meta")}, ValueError, "targets"),
        ({"n_bins": 0}, ValueError, "n_bins"),
        ({"n_bins": 2.0}, TypeError, "n_bins"),
        ({"n_bins": True}, TypeError, "n_bins"),
        ({"from_probs": 1}, TypeError, "from_probs"),
        ({"validate": "no"}, TypeError, "validate"),
        ({"validate": None}, TypeError, "validate"),
    ],
)
def test_bad_arguments(kwargs, error, argument):
    call = {"logits": _LOGITS, "targets": _TARGETS, **kwargs}
    with pytest.raises(error, match=f"calibration_errors: {argument}"):
        calibration_errors(call.pop("logits"), call.pop("targets"), **call)


# --------------------------------------------------------------------------- meter


def _batches(logits: torch.Tensor, targets: torch.Tensor, sizes: list[int]):
    return zip(logits.split(sizes), targets.split(sizes))


@pytest.mark.parametrize("from_probs", [False, True])
def test_meter_equals_one_shot(from_probs):
    logits, targets = random_batch(6, 300, 10, torch.float32)
    if from_probs:
        logits = logits.softmax(dim=1)
    meter = CalibrationMeter(n_bins=12, from_probs=from_probs)
    for batch in _batches(logits, targets, [1, 99, 64, 136]):
        meter.update(*batch)
    want = calibration_errors(logits, targets, n_bins=12, from_probs=from_probs)
    assert_same_errors(meter.compute(), want)
    assert_same_errors(meter.compute(), want)  # compute() does not consume the state


def test_meter_without_confidences_reports_nan_adaece():
    logits, targets = random_batch(7, 100, 5)
    meter = CalibrationMeter(keep_confidences=False)
    for batch in _batches(logits, targets, [50, 50]):
        meter.update(*batch)
    got, want = meter.compute(), calibration_errors(logits, targets)
    assert math.isnan(got.pop("adaece"))
    want.pop("adaece")
    assert_same_errors(got, want)
    assert "pairs" not in meter.state_dict()


def test_meter_merge_and_state_dict():
    logits, targets = random_batch(8, 120, 3)
    first, second = CalibrationMeter(n_bins=5), CalibrationMeter(n_bins=5)
    first.update(logits[:70], targets[:70])
    second.update(logits[70:], targets[70:])

    restored = CalibrationMeter(n_bins=5)
    restored.load_state_dict(first.state_dict())
    restored.merge(second)
    assert_same_errors(restored.compute(), calibration_errors(logits, targets, n_bins=5))
    assert_same_errors(first.compute(), calibration_errors(logits[:70], targets[:70], n_bins=5))  # unchanged

    with pytest.raises(ValueError, match="CalibrationMeter.merge: other.n_bins"):
        restored.merge(CalibrationMeter(n_bins=6))
    with pytest.raises(ValueError, match="CalibrationMeter.load_state_dict: state does not fit"):
        CalibrationMeter(n_bins=5, num_classes=4).load_state_dict(first.state_dict())


def test_results_and_state_hold_no_autograd_graph():
    """Logits straight from a model require grad: a meter kept every batch's graph alive (its
    sums chained them), and the one-shot results carried a grad_fn."""
    logits, targets = random_batch(10, 64, 5)
    logits.requires_grad_()
    assert not any(value.requires_grad for value in calibration_errors(logits * 2, targets).values())
    meter = CalibrationMeter()
    for batch in _batches(logits * 2, targets, [32, 32]):
        meter.update(*batch)
    assert not any(value.requires_grad for value in meter.state_dict().values())
    assert not any(value.requires_grad for value in meter.compute().values())


def test_meter_state_dict_is_a_consistent_snapshot():
    """Its sums and its pairs describe the same samples, whatever the meter does afterwards
    (the sums were live and the pairs a snapshot: a later update broke the pair)."""
    logits, targets = random_batch(11, 100, 4)
    meter = CalibrationMeter()
    meter.update(logits[:50], targets[:50])
    state = meter.state_dict()
    meter.update(logits[50:], targets[50:])
    assert state["top_label"][0].sum() == state["pairs"].shape[1] == 50
    restored = CalibrationMeter()
    restored.load_state_dict(state)
    assert_same_errors(restored.compute(), calibration_errors(logits[:50], targets[:50]))


def test_meter_failed_load_keeps_its_state():
    logits, targets = random_batch(12, 40, 3)
    meter = CalibrationMeter()
    meter.update(logits, targets)
    want = meter.compute()
    bad_states = [
        ({"nll": torch.zeros(())}, ValueError, "state must hold"),
        ([("nll", torch.zeros(()))], TypeError, "state must be a dict"),
        ({**meter.state_dict(), "nll": 0.0}, TypeError, r"state\['nll'\] must be a tensor"),
        ({**meter.state_dict(), "top_label": torch.zeros(3, 4)}, ValueError, "state does not fit"),
    ]
    for state, error, message in bad_states:
        with pytest.raises(error, match=f"CalibrationMeter.load_state_dict: {message}"):
            meter.load_state_dict(state)
        assert_same_errors(meter.compute(), want)


def test_meter_reset_and_all_reduce_without_process_group():
    logits, targets = random_batch(9, 40, 3)
    meter = CalibrationMeter()
    with pytest.raises(RuntimeError, match="CalibrationMeter.compute: no samples"):
        meter.compute()
    meter.update(logits, targets)
    assert meter.all_reduce() is meter  # no process group: nothing to combine
    assert_same_errors(meter.compute(), calibration_errors(logits, targets))
    with pytest.raises(RuntimeError, match=r"CalibrationMeter.update: .* reset\(\)"):
        meter.update(logits, targets)
    with pytest.raises(RuntimeError, match="CalibrationMeter.all_reduce"):
        meter.all_reduce()
    meter.reset()
    assert meter.num_classes is None
    meter.update(logits[:5], targets[:5])
    assert_same_errors(meter.compute(), calibration_errors(logits[:5], targets[:5]))


def test_meter_bad_arguments():
    with pytest.raises(ValueError, match="CalibrationMeter: n_bins"):
        CalibrationMeter(n_bins=0)
    with pytest.raises(ValueError, match="CalibrationMeter: num_classes"):
        CalibrationMeter(num_classes=0)
    meter = CalibrationMeter(num_classes=3)
    with pytest.raises(ValueError, match=r"CalibrationMeter.update: logits must have shape \(N, 3\)"):
        meter.update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    meter = CalibrationMeter()
    meter.update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"CalibrationMeter.update: logits must have shape \(N, 4\)"):
        meter.update(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------- distributed


def _ddp_data() -> tuple[torch.Tensor, torch.Tensor]:
    return random_batch(10, 48, 6, torch.float32)


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Runs in a spawned process; any exception fails the parent's mp.spawn."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        logits, targets = _ddp_data()
        results = {}

        # Uneven shards: rank 0 has 37 samples in three batches, rank 1 has 11 in one.
        meter = CalibrationMeter(n_bins=10)
        shard = [range(0, 10), range(10, 30), range(30, 37)] if rank == 0 else [range(37, 48)]
        for rows in shard:
            meter.update(logits[rows.start : rows.stop], targets[rows.start : rows.stop])
        results["uneven"] = meter.all_reduce().compute()

        # Rank 1 sees no sample (and so does not know C) but still takes part.
        meter = CalibrationMeter(n_bins=10)
        if rank == 0:
            meter.update(logits, targets)
        results["empty_rank"] = meter.all_reduce().compute()

        # Ranks that disagree on C must all raise rather than hang.
        meter = CalibrationMeter(n_bins=10)
        meter.update(logits[:, : 5 + rank].contiguous(), targets.clamp(max=4))
        try:
            meter.all_reduce()
        except ValueError as error:
            results["mismatch"] = str(error)

        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_all_reduce_across_two_gloo_ranks(tmp_path):
    world_size = 2
    mp.spawn(_ddp_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size, join=True)
    logits, targets = _ddp_data()
    want = calibration_errors(logits, targets, n_bins=10)
    for rank in range(world_size):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        assert_same_errors(results["uneven"], want)
        assert_same_errors(results["empty_rank"], want)
        assert "ranks disagree on the number of classes: [5, 6]" in results["mismatch"]


# --------------------------------------------------------------------------- reliability diagram


def test_reliability_diagram_data():
    logits, targets = random_batch(11, 200, 10)
    data = reliability_diagram(logits, targets, n_bins=8)
    assert data["edges"].tolist() == [i / 8 for i in range(9)]
    assert data["count"].sum() == 200
    empty = data["count"] == 0
    assert empty.any() and data["confidence"][empty].isnan().all() and data["accuracy"][empty].isnan().all()
    assert data["ece"] == pytest.approx(calibration_errors(logits, targets, n_bins=8)["ece"].item())

    meter = CalibrationMeter(n_bins=8)
    meter.update(logits, targets)
    from_meter = reliability_diagram(meter)
    for key in ("edges", "count", "confidence", "accuracy"):
        torch.testing.assert_close(from_meter[key], data[key], equal_nan=True)


def test_reliability_diagram_png(tmp_path):
    logits, targets = random_batch(12, 100, 4)
    path = tmp_path / "reliability.png"
    reliability_diagram(logits, targets, path=path, title="test")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_reliability_diagram_bad_arguments():
    meter = CalibrationMeter(n_bins=8)
    meter.update(*random_batch(13, 10, 3))
    with pytest.raises(ValueError, match="reliability_diagram: targets"):
        reliability_diagram(meter, torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="reliability_diagram: n_bins"):
        reliability_diagram(meter, n_bins=15)
    with pytest.raises(TypeError, match="reliability_diagram: targets"):
        reliability_diagram(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="reliability_diagram: path"):  # was matplotlib's AttributeError
        reliability_diagram(meter, path=3)
    with pytest.raises(TypeError, match="reliability_diagram: title"):
        reliability_diagram(meter, title=["epoch", 1])


def test_import_does_not_need_matplotlib():
    root = Path(__file__).resolve().parents[1]
    code = "import sys, rankmixup_ops.metrics; assert 'matplotlib' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_update_and_one_shot_do_not_sync():
    logits, targets = random_batch(14, 512, 10, torch.float16)
    logits, targets = logits.cuda(), targets.cuda()
    meter = CalibrationMeter()
    torch.cuda.set_sync_debug_mode("error")
    try:
        meter.update(logits, targets)
        got = calibration_errors(logits, targets)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_same_errors(got, meter.compute())
    assert_same_errors({k: v.cpu() for k, v in got.items()}, calibration_errors(logits.cpu(), targets.cpu()), rtol=1e-6)
