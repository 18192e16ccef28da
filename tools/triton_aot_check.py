"""Compile every Triton kernel configuration the backend launches, for sm_80 and sm_90, on a
machine without a GPU, and report registers, spills and vector widths.

The configurations are not listed by hand: the real launchers (the triton_op bodies) run on
small CPU tensors with their launcher (``launch.launcher``) swapped for a recorder, over a grid of problems
(dtype, K, C, mode, score, smoothing, gradient or not). Each recorded launch is specialised
exactly as Triton's JIT would specialise it (pointer alignment, unit strides, constexprs) and
compiled with ``triton.compile`` for a named target; ``cuobjdump -res-usage`` of the cubin
gives registers and local memory (spills). Exits 1 when a main configuration spills.

    python tools/triton_aot_check.py [--all] [--json PATH]

Needs Triton's bundled ptxas/cuobjdump (or ones on PATH); no GPU, no CUDA driver. Uses
Triton's internal binder (``create_function_from_signature``, ``JITFunction._pack_args``),
which the pinned Triton provides; a Triton that changed them fails here loudly.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not interpreted ones

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rankmixup_ops.triton import cutmix as cutmix_module  # noqa: E402
from rankmixup_ops.triton import launch  # noqa: E402
from rankmixup_ops.triton import loss as loss_module  # noqa: E402
from rankmixup_ops.triton import mix as mix_module  # noqa: E402
from rankmixup_ops.triton import reduce as reduce_module  # noqa: E402

TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90": GPUTarget("cuda", 90, 32)}


class _Recorder:
    """Stands in for ``launch.launcher``: records ``kernel[grid](*args, **kwargs)`` instead of launching."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel):
        return _Launch(self.launches, kernel)


class _Launch:
    def __init__(self, launches, kernel):
        self.launches, self.kernel = launches, kernel

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


@contextlib.contextmanager
def recording():
    recorder = _Recorder()
    original, launch.launcher = launch.launcher, recorder
    try:
        yield recorder.launches
    finally:
        launch.launcher = original


def loss_problems(everything: bool):
    """(main?, description, thunk) for each fused-loss problem. Main: bfloat16 and float32,
    K = 1 and 3 (the paper's), C from 10 to 32k, every ranking, with and without smoothing,
    with gradients, the relevance derived from lam and the partners (at K = 3 also with class
    weights, and for a few shapes with the relevance given, as the drop-in classes give it).
    ``everything`` adds float16, float64, K = 8 and forward-only launches."""
    dtypes = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
    rankings = (("mrl", "logit"), ("mrl", "prob"), ("mndcg", "logit"))
    for dtype, k, c, (mode, score), smoothing, need_grad in itertools.product(
        dtypes, (1, 3, 8), (10, 100, 1000, 32768), rankings, (0.0, 0.1), (True, False)
    ):
        main = dtype in (torch.bfloat16, torch.float32) and k in (1, 3) and need_grad
        if not (main or everything):
            continue
        batch = 2
        logits = torch.zeros(batch, c, dtype=dtype)
        mix_logits = torch.zeros(k * batch, c, dtype=dtype)
        targets = torch.zeros(batch, dtype=torch.int64)
        lam = torch.zeros(k, batch, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        index = torch.zeros(k, batch, dtype=torch.int64)
        options = (mode, score, -100, 1.0, 0.1, 2.0, smoothing, need_grad, 0)
        args = (logits, mix_logits, targets, lam, index, *options)
        name = f"loss {str(dtype)[6:]} K={k} C={c} {mode}/{score} ls={smoothing} grad={need_grad}"
        yield main, name, lambda args=args: _run_loss(args)
        if main and k == 3 and c in (10, 1000) and smoothing == 0.0:
            # The relevance given: only its loads differ, a few configurations show them.
            given = (logits, mix_logits, targets, lam, None, *options)
            yield main, f"{name} relevance given", lambda args=given: _run_loss(args)
        if main and k == 3:
            # Class weights (and a weighted mean's CE factor): more loads per chunk.
            weighted = (*args, torch.ones(c, dtype=lam.dtype), torch.ones((), dtype=lam.dtype))
            yield main, f"{name} weighted", lambda args=weighted: _run_loss(args)


def _run_loss(args):
    loss_module.fused_loss._init_fn(*args)
    if args[12]:  # need_grad
        batch, classes = args[0].shape
        grad = torch.zeros((args[3].shape[0] + 1) * batch, classes, dtype=args[0].dtype)
        loss_module.fused_loss_backward._init_fn(grad, torch.ones(batch))


def reduce_problems(everything: bool):
    """The loss's reduction (one program): float32 per-sample values (float64 with everything),
    a batch in one block and one of several, mean and sum, and a weighted mean's CE scale."""
    dtypes = (torch.float32,) + ((torch.float64,) if everything else ())
    for dtype, batch, (mean, ce_scaled) in itertools.product(
        dtypes, (128, 5000), ((True, False), (False, False), (True, True))
    ):
        per_sample = [torch.zeros(batch, dtype=dtype) for _ in range(3)]
        targets = torch.zeros(batch, dtype=torch.int64)
        ce_scale = torch.ones((), dtype=dtype) if ce_scaled else None

        def run(per_sample=per_sample, targets=targets, mean=mean, ce_scale=ce_scale):
            reduce_module.reduce_loss._init_fn(*per_sample, targets, -100, mean, ce_scale)

        name = f"reduce {str(dtype)[6:]} B={batch} {'mean' if mean else 'sum'}{' ce-scaled' if ce_scaled else ''}"
        yield dtype == torch.float32, name, run


def mix_problems(everything: bool):
    dtypes = (torch.bfloat16, torch.float32) + ((torch.float16, torch.float64) if everything else ())
    for dtype, features in itertools.product(dtypes, (3 * 32 * 32, 10, 4096 + 8)):
        x = torch.zeros(4, features, dtype=dtype)
        lam = torch.zeros(3, 4, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        index = torch.zeros(3, 4, dtype=torch.int64)
        grad = torch.zeros(12, features, dtype=dtype)

        def run(x=x, lam=lam, index=index, grad=grad):
            mix_module.mix._init_fn(x, lam, index)
            mix_module.mix_backward._init_fn(grad, lam, index)

        yield dtype in (torch.bfloat16, torch.float32), f"mix {str(dtype)[6:]} F={features}", run


def cutmix_problems(everything: bool):
    """paste_boxes and its backward: contiguous and channels-last images of CIFAR's size (several
    blocks) and a small one (one partial block)."""
    dtypes = (torch.bfloat16, torch.float32) + ((torch.float16, torch.float64) if everything else ())
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    for dtype, (layout, memory_format), (channels, height, width) in itertools.product(
        dtypes, layouts.items(), ((3, 32, 32), (2, 5, 7))
    ):
        x = torch.zeros(4, channels, height, width, dtype=dtype).contiguous(memory_format=memory_format)
        grad = torch.zeros(12, channels, height, width, dtype=dtype).contiguous(memory_format=memory_format)
        boxes = torch.zeros(3, 4, 4, dtype=torch.int64)
        index = torch.zeros(3, 4, dtype=torch.int64)

        def run(x=x, grad=grad, boxes=boxes, index=index):
            cutmix_module.paste_boxes._init_fn(x, boxes, index)
            cutmix_module.paste_boxes_backward._init_fn(grad, boxes, index)

        name = f"paste_boxes {str(dtype)[6:]} {layout} {channels}x{height}x{width}"
        yield dtype in (torch.bfloat16, torch.float32), name, run


def compile_launch(kernel, args, kwargs, target):
    """Specialise as the JIT would for ``target`` and compile; returns the CompiledKernel, its
    constexprs and its options."""
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    source = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__), constexprs, options


def _tool(name):
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.exists() else shutil.which(name)


def resource_usage(cubin: bytes) -> dict:
    """Registers and local memory (spill space) of the cubin's one kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        report = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", handle.name], check=True, capture_output=True, text=True
        ).stdout
    usage = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", report))
    return {key.lower(): int(value) for key, value in usage.items()}


def vector_width(ptx: str) -> int:
    """The widest vector global load in the PTX, in bytes (16: 128-bit loads; 0: none)."""
    lanes_bits = re.findall(r"ld\.global(?:\.\w+)*?\.v(\d)\.[bfsu](\d+)", ptx)
    return max((int(lanes) * int(bits) // 8 for lanes, bits in lanes_bits), default=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="also float16, float64, K=8 and forward-only (slow)")
    parser.add_argument("--json", type=Path, help="write the report here")
    options = parser.parse_args()
    if not _tool("cuobjdump"):
        print("triton_aot_check: no cuobjdump (neither bundled with Triton nor on PATH)", file=sys.stderr)
        return 2

    # One compile per distinct specialisation; remember whether any problem needing it is main.
    launches = {}
    problems = itertools.chain(loss_problems(options.all), reduce_problems(options.all), mix_problems(options.all),
                               cutmix_problems(options.all))
    for main_problem, name, run in problems:
        with recording() as recorded:
            run()
        for kernel, args, kwargs in recorded:
            key = (kernel.fn.__name__, repr(_spec_key(kernel, args, kwargs)))
            entry = launches.setdefault(key, dict(kernel=kernel, args=args, kwargs=kwargs, main=False, example=name))
            entry["main"] |= main_problem

    rows, failures = [], 0
    started = time.perf_counter()
    for (kernel_name, _), entry in launches.items():
        for arch, target in TARGETS.items():
            compiled, constexprs, opts = compile_launch(entry["kernel"], entry["args"], entry["kwargs"], target)
            usage = resource_usage(compiled.asm["cubin"])
            spills = usage.get("local", 0) + usage.get("stack", 0)
            row = {
                "kernel": kernel_name,
                "arch": arch,
                "main": entry["main"],
                "example": entry["example"],
                "num_warps": opts.num_warps,
                "constexprs": {entry["kernel"].arg_names[path[0]]: str(value) for path, value in constexprs.items()},
                "registers": usage.get("reg"),
                "spill_bytes": spills,
                "vector_bytes": vector_width(compiled.asm["ptx"]),
            }
            rows.append(row)
            failures += bool(spills) and entry["main"]
            print(
                f"{arch} {kernel_name:22s} regs={row['registers']:>3} spill={spills:>5}B vec={row['vector_bytes']:>2}B "
                f"warps={opts.num_warps} {'main ' if entry['main'] else 'extra'} {entry['example']}"
            )
    elapsed = time.perf_counter() - started
    print(f"{len(rows)} compiles ({len(launches)} configurations x {len(TARGETS)} targets) in {elapsed:.0f}s; "
          f"{failures} main configurations spill")
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=1))
    return 1 if failures else 0


def _spec_key(kernel, args, kwargs):
    """What makes two launches compile to the same binary: Triton's specialisation of the
    arguments (types, alignment, unit values) and the options."""
    backend = make_backend(TARGETS["sm_90"])
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    _, specialization, _ = binder(*args, **kwargs)
    return [str(item) for item in specialization], kwargs.get("num_warps")


if __name__ == "__main__":
    sys.exit(main())
