"""RankMixup under torch.distributed: DDP over 2 gloo processes on the CPU gives the gradients
of a single process over the same data, and the torchrun example runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import rankmixup_ops as rmx

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
B, K, C, FEATURES = 8, 3, 5, 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shard(rank: int):
    """Rank r's batch, with its mixing drawn from a per-rank seed."""
    gen = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(B, FEATURES, generator=gen)
    y = torch.randint(0, C, (B,), generator=gen)
    lam, index = rmx.sample_mixup(B, K, 1.0, per_sample=True, generator=gen)
    return x, y, lam, index


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, C))


def _loss(model, x, y, lam, index, mode):
    mixed = rmx.mix(x, lam, index)
    logits, mix_logits = model(x), model(mixed)
    return rmx.rankmixup_loss(logits, mix_logits, y, lam, index, mode=mode, alpha=0.5, margin=1.0).loss


def _ddp_worker(rank: int, port: int, mode: str, out_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        _loss(model, *_shard(rank), mode).backward()
        if rank == 0:
            torch.save([p.grad for p in model.parameters()], out_path)
        dist.barrier()  # leave together (see examples/train_ddp.py)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["mndcg", "mrl"])
def test_ddp_gradients_equal_single_process(mode, tmp_path):
    out_path = str(tmp_path / "grads.pt")
    # spawn raises if a worker fails, so a crash in a child fails this test.
    mp.start_processes(_ddp_worker, args=(_free_port(), mode, out_path), nprocs=WORLD, start_method="spawn")
    ddp_grads = torch.load(out_path)

    model = _model()
    # DDP averages the ranks' gradients: the gradient of the mean of the ranks' losses.
    (sum(_loss(model, *_shard(rank), mode) for rank in range(WORLD)) / WORLD).backward()
    for got, expected in zip(ddp_grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, expected)


FSDP_EXIT_ABORT = pytest.mark.xfail(
    reason="known, outside this package: after training and evaluation have finished, a rank can "
    "abort while tearing down FSDP2 over gloo ('terminate called without an active exception'); "
    "intermittent on a 2-core machine",
    strict=False,
)


@pytest.mark.parametrize("extra", [[], pytest.param(["--fsdp"], marks=FSDP_EXIT_ABORT)], ids=["ddp", "fsdp"])
def test_train_ddp_example_runs_under_torchrun(extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
        str(ROOT / "examples" / "train_ddp.py"), "--epochs", "1", *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{WORLD} ranks" in result.stdout and "ece" in result.stdout, result.stdout
