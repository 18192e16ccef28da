"""RankMixup training under torchrun with DistributedDataParallel (or FSDP).

Each rank mixes its own shard of the batch, computes its RankMixup loss on it, and the engine
averages the gradients; calibration is measured with a CalibrationMeter whose sums are
all-reduced, so every rank reports the metrics of the whole test split.

One machine, two processes (gloo on CPU, nccl when every rank has a GPU):

    torchrun --standalone --nproc-per-node 2 examples/train_ddp.py --epochs 20

Several machines (run on each; node 0's address as the rendezvous endpoint):

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint $MASTER_ADDR:29500 --rdzv-id rankmixup examples/train_ddp.py --fsdp

The data are scikit-learn's digits (they ship with the package, so nothing is downloaded).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import rankmixup_ops as rmx
from rankmixup_ops.metrics import CalibrationMeter


def rankmixup_step(model: nn.Module, x, y, *, mode: str, num_mix: int, generator, rank_alpha: float = 0.5):
    """One forward of raw and mixed samples together, and the RankMixup loss."""
    batch = rmx.mixup(x, num_mix=num_mix, alpha=1.0, generator=generator)
    all_logits = model(torch.cat([x, batch.inputs]))
    logits, mix_logits = all_logits[: len(x)], all_logits[len(x) :]
    return rmx.rankmixup_loss(logits, mix_logits, y, batch.lam, batch.index, mode=mode, alpha=rank_alpha).loss


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def wrap(model: nn.Module, device: torch.device, fsdp: bool) -> nn.Module:
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--mode", choices=("mndcg", "mrl"), default="mndcg")
    parser.add_argument("--fsdp", action="store_true", help="shard the model with FSDP instead of DDP")
    args = parser.parse_args(argv)

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    train_x, test_x, train_y, test_y = train_test_split(x, y, train_size=0.5, random_state=0, stratify=y)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = wrap(make_model().to(device), device, args.fsdp)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator(device=device).manual_seed(1000 + rank)  # a different mix per rank
    num_mix = 1 if args.mode == "mrl" else 3

    for epoch in range(args.epochs):
        # Every rank draws the same epoch order and takes its own strided shard of it.
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch))[rank::world]
        for start in range(0, len(order), args.batch_size):
            rows = order[start : start + args.batch_size]
            loss = rankmixup_step(
                model, train_x[rows].to(device), train_y[rows].to(device), mode=args.mode, num_mix=num_mix, generator=generator
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    meter = CalibrationMeter(n_bins=15)
    with torch.no_grad():
        shard = slice(rank, None, world)
        meter.update(model(test_x[shard].to(device)), test_y[shard].to(device))
    scores = meter.all_reduce().compute()
    if rank == 0:
        summary = ", ".join(f"{name} {float(scores[name]):.4f}" for name in ("acc", "ece", "adaece", "nll"))
        print(f"{world} ranks, {'FSDP' if args.fsdp else 'DDP'}, {args.mode}: {summary}", flush=True)
    # Leave together, and free the wrapped model (and the communication state it holds) while
    # the process group still exists: tearing gloo down first can abort a rank at exit.
    del model, optimizer
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
