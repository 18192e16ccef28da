"""Train a small classifier on scikit-learn's digits with CE, mixup and RankMixup; compare
accuracy and calibration.

The data ship with scikit-learn (8x8 images of the digits 0-9, 1797 samples), so this runs
offline. Each method trains the same MLP from the same initialisation per seed:

- ``ce``:     cross-entropy on the raw batch;
- ``mixup``:  cross-entropy on one mixed batch against mixed soft targets (Zhang et al.);
- ``mrl``:    RankMixup with the margin ranking loss (K=1 mix, as the paper uses for MRL);
- ``mndcg``:  RankMixup with the M-NDCG loss (K=3 mixes).

With ``--mix-layer N`` the RankMixup methods mix the output of the MLP's layer N instead of
its input (manifold mixup, the RankMixup code's ``layer_mix``), through ``rankmixup_ops.mix_at``.

It prints mean and standard deviation over the seeds of accuracy, ECE, AdaECE and NLL on the
held-out split, and, with ``--plots DIR``, writes a reliability diagram per method.

    python examples/train_digits.py --seeds 3 --epochs 100 --plots out/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import rankmixup_ops as rmx
from rankmixup_ops.metrics import calibration_errors, reliability_diagram

METHODS = ("ce", "mixup", "mrl", "mndcg")
METRICS = ("acc", "ece", "adaece", "nll")


def load_data(seed: int, train_fraction: float):
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, train_size=train_fraction, random_state=seed, stratify=y
    )
    return train_x, train_y, test_x, test_y


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def training_loss(method: str, model: nn.Module, x, y, generator: torch.Generator, args) -> torch.Tensor:
    if method == "ce":
        return F.cross_entropy(model(x), y)
    if method == "mixup":
        batch = rmx.mixup(x, num_mix=1, alpha=args.mix_alpha, generator=generator)
        soft = rmx.soft_targets(y, batch.lam, batch.index, num_classes=10)
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


def train(method: str, seed: int, data, args) -> nn.Module:
    train_x, train_y, _, _ = data
    model = make_model(seed)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-fraction", type=float, default=0.3, help="share of the 1797 digits used for training")
    parser.add_argument("--mix-alpha", type=float, default=1.0, help="Beta(a, a) parameter of the mixing coefficient")
    parser.add_argument("--rank-alpha", type=float, default=0.5, help="weight of the rank loss")
    parser.add_argument("--margin", type=float, default=1.0, help="MRL margin on max logits")
    parser.add_argument("--mix-layer", type=int, choices=range(4), default=None,
                        help="RankMixup methods: mix the output of this layer of the MLP (manifold mixup; "
                        "0-3: Linear, ReLU, Linear, ReLU) instead of the input")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--plots", type=Path, default=None, help="write reliability diagrams (PNG) here")
    args = parser.parse_args(argv)

    results = {method: {metric: [] for metric in METRICS} for method in args.methods}
    total, done, started = len(args.methods) * args.seeds, 0, time.perf_counter()
    for seed in range(args.seeds):
        data = load_data(seed, args.train_fraction)
        test_x, test_y = data[2], data[3]
        for method in args.methods:
            model = train(method, seed, data, args)
            with torch.no_grad():
                test_logits = model(test_x)
            scores = calibration_errors(test_logits, test_y, n_bins=15)
            for metric in METRICS:
                results[method][metric].append(float(scores[metric]))
            if args.plots is not None and seed == 0:
                args.plots.mkdir(parents=True, exist_ok=True)
                reliability_diagram(test_logits, test_y, path=args.plots / f"reliability_{method}.png", title=f"digits, {method}")
            done += 1
            elapsed = time.perf_counter() - started
            print(f"[{done}/{total}] seed {seed} {method:6s} done, {elapsed:.0f}s elapsed", file=sys.stderr, flush=True)

    print(f"\ndigits test split, {args.seeds} seeds, {args.epochs} epochs (mean ± std; ECE/AdaECE 15 bins, in %)")
    print(f"{'method':8s} {'acc %':>12s} {'ECE %':>12s} {'AdaECE %':>12s} {'NLL':>14s}")
    for method in args.methods:
        cells = []
        for metric in METRICS:
            values = torch.tensor(results[method][metric], dtype=torch.float64)
            scale = 1.0 if metric == "nll" else 100.0
            mean, std = (values.mean() * scale).item(), (values.std(unbiased=False) * scale).item()
            cells.append(f"{mean:7.3f} ± {std:5.3f}" if metric == "nll" else f"{mean:6.2f} ± {std:4.2f}")
        print(f"{method:8s} " + " ".join(f"{cell:>12s}" for cell in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
