"""Train a small classifier on scikit-learn's digits with CE, mixup and RankMixup; compare
accuracy, calibration (before and after temperature scaling) and out-of-distribution detection.

The data ship with scikit-learn (8x8 images of the digits 0-9, 1797 samples), so this runs
offline. The digits of ``--ood-classes`` (default 8 and 9) are held out of training: their
images are the out-of-distribution inputs. The others are split, per seed and stratified, into
training, validation (for fitting the temperature) and test sets. Each method trains the same
MLP from the same initialisation per seed:

- ``ce``:     cross-entropy on the raw batch;
- ``ce_ls``:  cross-entropy with label smoothing 0.1;
- ``mixup``:  cross-entropy on one mixed batch against mixed soft targets (Zhang et al.);
- ``mrl``:    RankMixup with the margin ranking loss (K=1 mix, as the paper uses for MRL);
- ``mndcg``:  RankMixup with the M-NDCG loss (K=3 mixes).

With ``--mix-layer N`` the RankMixup methods mix the output of the MLP's layer N instead of
its input (manifold mixup, the RankMixup code's ``layer_mix``), through ``rankmixup_ops.mix_at``.

It prints mean and standard deviation over the seeds of accuracy, ECE, AdaECE and NLL on the
test split, ECE and AdaECE after temperature scaling (T fitted on the validation split), and the
AUROC of the max softmax probability between the test split and the held-out classes. With
``--plots DIR`` it writes a reliability diagram per method, before and after scaling.

    python examples/train_digits.py --seeds 3 --epochs 100 --plots out/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import rankmixup_ops as rmx
from rankmixup_ops.metrics import calibration_errors, fit_temperature, ood_metrics, reliability_diagram

METHODS = ("ce", "ce_ls", "mixup", "mrl", "mndcg")
# (key, column heading, scale): calibration before and after temperature scaling, OOD AUROC.
COLUMNS = (("acc", "acc %", 100), ("ece", "ECE %", 100), ("adaece", "AdaECE %", 100), ("nll", "NLL", 1),
           ("ece_ts", "ECE TS %", 100), ("adaece_ts", "AdaECE TS %", 100), ("auroc", "OOD AUROC %", 100))


class Data(NamedTuple):
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    ood_x: torch.Tensor  # every image of the held-out classes
    num_classes: int


def load_data(seed: int, args) -> Data:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    held_out = torch.isin(y, torch.tensor(args.ood_classes, dtype=torch.int64))
    kept = sorted(set(range(10)) - set(args.ood_classes))
    relabel = torch.full((10,), -1, dtype=torch.int64)
    relabel[kept] = torch.arange(len(kept))
    x_in, y_in = x[~held_out], relabel[y[~held_out]]
    train_x, rest_x, train_y, rest_y = train_test_split(
        x_in, y_in, train_size=args.train_fraction, random_state=seed, stratify=y_in
    )
    val_share = args.val_fraction / (1 - args.train_fraction)
    val_x, test_x, val_y, test_y = train_test_split(
        rest_x, rest_y, train_size=val_share, random_state=seed, stratify=rest_y
    )
    return Data(train_x, train_y, val_x, val_y, test_x, test_y, x[held_out], len(kept))


def make_model(seed: int, num_classes: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, num_classes))


def training_loss(method: str, model: nn.Module, x, y, generator: torch.Generator, args) -> torch.Tensor:
    if method in ("ce", "ce_ls"):
        return F.cross_entropy(model(x), y, label_smoothing=0.1 if method == "ce_ls" else 0.0)
    if method == "mixup":
        batch = rmx.mixup(x, num_mix=1, alpha=args.mix_alpha, generator=generator)
        soft = rmx.soft_targets(y, batch.lam, batch.index, num_classes=model[-1].out_features)
        return torch.sum(-soft * F.log_softmax(model(batch.inputs), dim=1), dim=1).mean()
    num_mix = 1 if method == "mrl" else 3
    if args.mix_layer is None:
        batch = rmx.mixup(x, num_mix=num_mix, alpha=args.mix_alpha, generator=generator)
        lam, index = batch.lam, batch.index
        # One forward over raw and mixed samples together, as the reference code does.
        all_logits = model(torch.cat([x, batch.inputs]))
    else:  # manifold mixup: the mixes are made of the hidden layer's outputs
        lam, index = rmx.sample_mixup(len(x), num_mix, args.mix_alpha, generator=generator)
        with rmx.mix_at(model[args.mix_layer], lam, index):
            all_logits = model(x)
    logits, mix_logits = all_logits[: len(x)], all_logits[len(x) :]
    out = rmx.rankmixup_loss(logits, mix_logits, y, lam, index, mode=method, alpha=args.rank_alpha, margin=args.margin)
    return out.loss


def train(method: str, seed: int, data: Data, args) -> nn.Module:
    train_x, train_y = data.train_x, data.train_y
    model = make_model(seed, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), args.batch_size):
            rows = order[start : start + args.batch_size]
            loss = training_loss(method, model, train_x[rows], train_y[rows], generator, args)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def evaluate(model: nn.Module, data: Data, plot_name: str | None, args) -> dict[str, float]:
    """The table's columns for one trained model; with ``plot_name`` (and ``--plots``), its
    reliability diagrams before and after temperature scaling."""
    with torch.no_grad():
        test_logits, val_logits, ood_logits = model(data.test_x), model(data.val_x), model(data.ood_x)
    temperature = fit_temperature(val_logits, data.val_y)
    scaled = test_logits / temperature
    before = calibration_errors(test_logits, data.test_y, n_bins=15)
    after = calibration_errors(scaled, data.test_y, n_bins=15)
    row = {key: float(before[key]) for key in ("acc", "ece", "adaece", "nll")}
    row.update(ece_ts=float(after["ece"]), adaece_ts=float(after["adaece"]))
    row["auroc"] = float(ood_metrics(test_logits, ood_logits)["auroc"])
    if plot_name is not None and args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        for logits, suffix, note in ((test_logits, "", ""), (scaled, "_ts", f", T = {float(temperature):.2f}")):
            reliability_diagram(logits, data.test_y, path=args.plots / f"reliability_{plot_name}{suffix}.png",
                                title=f"digits, {plot_name}{note}")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-fraction", type=float, default=0.3,
                        help="share of the in-distribution digits used for training")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of the in-distribution digits used to fit the temperature (the rest is the test set)")
    parser.add_argument("--ood-classes", type=int, nargs="+", choices=range(10), default=[8, 9],
                        help="digits held out of training: the out-of-distribution inputs")
    parser.add_argument("--mix-alpha", type=float, default=1.0, help="Beta(a, a) parameter of the mixing coefficient")
    parser.add_argument("--rank-alpha", type=float, default=0.5, help="weight of the rank loss")
    parser.add_argument("--margin", type=float, default=1.0, help="MRL margin on max logits")
    parser.add_argument("--mix-layer", type=int, choices=range(4), default=None,
                        help="RankMixup methods: mix the output of this layer of the MLP (manifold mixup; "
                        "0-3: Linear, ReLU, Linear, ReLU) instead of the input")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--plots", type=Path, default=None, help="write reliability diagrams (PNG) here")
    args = parser.parse_args(argv)

    if not (0 < args.train_fraction and 0 < args.val_fraction and args.train_fraction + args.val_fraction < 1):
        parser.error("--train-fraction and --val-fraction must be positive and leave a test set")
    if args.seeds < 1 or args.epochs < 1 or args.batch_size < 1:
        parser.error("--seeds, --epochs and --batch-size must be >= 1")
    args.ood_classes = sorted(set(args.ood_classes))
    if len(args.ood_classes) > 8:
        parser.error("--ood-classes: leave at least two digits to train on")

    results = {method: {key: [] for key, _, _ in COLUMNS} for method in args.methods}
    total, done, started = len(args.methods) * args.seeds, 0, time.perf_counter()
    for seed in range(args.seeds):
        data = load_data(seed, args)
        for method in args.methods:
            model = train(method, seed, data, args)
            for key, value in evaluate(model, data, method if seed == 0 else None, args).items():
                results[method][key].append(value)
            done += 1
            elapsed = time.perf_counter() - started
            print(f"[{done}/{total}] seed {seed} {method:6s} done, {elapsed:.0f}s elapsed", file=sys.stderr, flush=True)

    print(f"\ndigits, {args.seeds} seeds, {args.epochs} epochs, digits {' '.join(map(str, args.ood_classes))} held out "
          "(mean ± std; ECE/AdaECE 15 bins, in %; TS: after temperature scaling)")
    print(f"{'method':8s} " + " ".join(f"{heading:>14s}" for _, heading, _ in COLUMNS))
    for method in args.methods:
        cells = []
        for key, _, scale in COLUMNS:
            values = torch.tensor(results[method][key], dtype=torch.float64) * scale
            mean, std = values.mean().item(), values.std(unbiased=False).item()
            cells.append(f"{mean:7.3f} ± {std:5.3f}" if key == "nll" else f"{mean:6.2f} ± {std:4.2f}")
        print(f"{method:8s} " + " ".join(f"{cell:>14s}" for cell in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
