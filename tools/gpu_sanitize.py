"""Runs a small workload of the CUDA backend under compute-sanitizer and fails on any report.

Every path of the kernels runs at least once (narrow and block-wide row teams, vector and
element-wise loads, ignored samples, many mixes, every reduction, float32 and bfloat16, class
weights, the mix and the CutMix paste with their gather-based backwards) under memcheck (out-of-bounds and misaligned accesses) and
racecheck (shared-memory hazards), then initcheck (reads of uninitialised global memory) and
synccheck (barrier misuse) while the time budget lasts. Only the kernels of this package are
instrumented; PyTorch's caching allocator is switched off so that memcheck sees every tensor's
true bounds. Exit status 1 when a tool reports an error or the workload fails, 2 when no GPU or
compute-sanitizer is found, else 0. One log per tool goes to $OUT (default out/sanitizer).

    python tools/gpu_sanitize.py [--tools memcheck racecheck ...] [--budget-s 110]

Needs a CUDA GPU, the extension built with its CUDA kernels, and the CUDA toolkit's
compute-sanitizer (found on PATH, under $CUDA_HOME, or beside nvcc).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
KERNEL_FILTER = "rankmixup"  # a substring of every kernel's mangled name (namespace rankmixup::cuda)


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else in the toolkit that $CUDA_HOME or nvcc points to."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:  # nvcc may be a wrapper outside the toolkit: ask it where the toolkit is
        dryrun = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                                capture_output=True, text=True, check=False)
        top = re.search(r"^#\$ TOP=(.*)$", dryrun.stderr + dryrun.stdout, re.MULTILINE)
        homes.insert(0, top.group(1).strip() if top else str(Path(nvcc).resolve().parent.parent))
    for home in filter(None, homes):
        for candidate in ("bin/compute-sanitizer", "compute-sanitizer/compute-sanitizer"):
            if (Path(home) / candidate).is_file():
                return str(Path(home) / candidate)
    return None


def workload() -> None:
    """Forward and backward of every op over shapes that reach every kernel path."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package, built in place
    import torch

    from rankmixup_ops import reference
    from rankmixup_ops._types import LossOptions
    from rankmixup_ops.compiled import load_backend

    cuda = load_backend("cuda")
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, dtype):
        return torch.randn(*shape, generator=gen).to("cuda", dtype)

    # (B, K, C): warp-narrow teams with a scalar tail, cross-warp teams, one block per row
    # (element-wise and vector), more rows per sample than teams per block, and a batch whose
    # mean is counted by a kernel of its own.
    for batch, num_mix, classes in [(7, 3, 10), (5, 2, 1000), (2, 1, 4099), (3, 2, 4096), (3, 40, 7), (2100, 1, 3)]:
        targets = torch.randint(0, classes, (batch,), generator=gen)
        targets[0] = -100
        index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)])
        lam = torch.rand(num_mix, batch, generator=gen).cuda()
        index, targets = index.cuda(), targets.cuda()
        for dtype in (torch.float32, torch.bfloat16):
            logits = randn(batch, classes, dtype=dtype)
            mix_logits = randn(num_mix * batch, classes, dtype=dtype)
            if dtype == torch.bfloat16:  # column stride != 1: element-wise loads even where C allows vectors
                mix_logits = mix_logits.t().contiguous().t()
            # Class weights (their ATen sums, the per-class constant) on float32 logits.
            class_weights = [None] + ([torch.rand(classes, generator=gen).cuda() + 0.5] if dtype == torch.float32 else [])
            for weight in class_weights:
                for mode, score in (("mrl", "logit"), ("mrl", "prob"), ("mndcg", "prob")):
                    for reduction in ("mean", "sum", "none"):
                        raw, mixed = logits.clone().requires_grad_(), mix_logits.clone().requires_grad_()
                        options = LossOptions(mode, score, 1.0, 0.5, 1.0, -100, 0.1, reduction, weight)
                        out = cuda.loss(raw, mixed, targets, lam, index, options)
                        out.loss.backward(torch.rand_like(out.loss))
            # The relevances given (the drop-in classes' call), and a partner outside the batch,
            # which the kernel must not read (its sample is NaN).
            rel = torch.where(lam < 0.5, 1 - lam, lam)
            outside = index.clone()
            outside[0, -1] = batch
            for pairing in ((rel, None), (lam, outside)):
                raw, mixed = logits.clone().requires_grad_(), mix_logits.clone().requires_grad_()
                out = cuda.loss(raw, mixed, targets, *pairing, LossOptions(mode="mrl", reduction="none"))
                out.loss.backward(torch.rand_like(out.loss))

    for batch, num_mix, feat in [(8, 3, (3, 8, 8)), (5, 2, (7,))]:  # vector and element-wise rows
        index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)]).cuda()
        lam = torch.rand(num_mix, batch, generator=gen).cuda()
        for dtype in (torch.float32, torch.bfloat16):
            x = randn(batch, *feat, dtype=dtype).requires_grad_()
            out = cuda.mix(x, lam, index)
            out.backward(torch.randn_like(out))

    # CutMix: boxes inside, across and outside the image, contiguous and channels-last images.
    batch, num_mix, height, width = 6, 3, 9, 13
    index = torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_mix)]).cuda()
    boxes = torch.randint(-4, 17, (num_mix, batch, 4), generator=gen).sort(dim=-1).values[..., [0, 2, 1, 3]].cuda()
    for dtype in (torch.float32, torch.bfloat16):
        for memory_format in (torch.contiguous_format, torch.channels_last):
            x = randn(batch, 3, height, width, dtype=dtype).contiguous(memory_format=memory_format).requires_grad_()
            out = cuda.paste_boxes(x, boxes, index)
            out.backward(torch.randn_like(out))
    torch.cuda.synchronize()


def supports_kernel_filter(sanitizer: str) -> bool:
    help_text = subprocess.run([sanitizer, "--help"], capture_output=True, text=True, check=False).stdout
    return "--kernel-name" in help_text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--budget-s", type=float, default=110.0,
                        help="start no tool after this many seconds (memcheck and racecheck always run)")
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)  # the sanitised child
    args = parser.parse_args()
    if args.workload:
        workload()
        return 0

    import torch

    if not torch.cuda.is_available():
        print("gpu_sanitize: no CUDA device", file=sys.stderr)
        return 2
    sanitizer = find_sanitizer()
    if sanitizer is None:
        print("gpu_sanitize: compute-sanitizer not found (install the CUDA toolkit or put it on PATH)", file=sys.stderr)
        return 2
    out_dir = Path(os.environ.get("OUT", "out/sanitizer"))
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel_filter = ["--kernel-name", f"kns={KERNEL_FILTER}"] if supports_kernel_filter(sanitizer) else []
    # Every tensor its own allocation, so that a read past its end is outside any allocation.
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")

    start, failed = time.monotonic(), []
    for tool in args.tools:
        if tool not in ("memcheck", "racecheck") and time.monotonic() - start > args.budget_s:
            print(f"{tool}: skipped, the budget of {args.budget_s:.0f}s is spent")
            continue
        # API errors are PyTorch's own probing; a failed launch of ours raises in the workload.
        command = [sanitizer, "--tool", tool, "--error-exitcode", "1", "--print-limit", "20",
                   "--report-api-errors", "no", *kernel_filter, sys.executable, __file__, "--workload"]
        begin = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        log = out_dir / f"{tool}.log"
        log.write_text(" ".join(command) + "\n\n" + result.stdout + result.stderr)
        summary = [line for line in (result.stdout + result.stderr).splitlines() if "SUMMARY" in line]
        status = "ok" if result.returncode == 0 else f"FAILED (exit status {result.returncode}, see {log})"
        print(f"{tool}: {status} in {time.monotonic() - begin:.0f}s; {' '.join(summary) or 'no summary line'}")
        if result.returncode != 0:
            failed.append(tool)
            print((result.stdout + result.stderr)[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
