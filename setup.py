"""Builds the compiled extension ``rankmixup_ops._C`` from csrc/ (ninja, via torch's BuildExtension).

CPU kernels are always built. CUDA kernels (csrc/cuda/*.cu) are built whenever the CUDA toolkit
and a CUDA build of torch are present — a GPU need not be visible. Environment switches:

- ``RANKMIXUP_BUILD_CUDA=0|1``: skip the CUDA kernels / require them (default: build if possible)
- ``TORCH_CUDA_ARCH_LIST``: GPU architectures (default "8.0;9.0+PTX")
- ``MAX_JOBS``: parallel compile jobs (read by ninja through BuildExtension)
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def find_cuda_home() -> str | None:
    """$CUDA_HOME (or $CUDA_PATH), else the toolkit of the `nvcc` on PATH, asked of nvcc itself:
    nvcc may be a wrapper script or symlink outside the toolkit (e.g. /usr/local/bin/nvcc)."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            return os.environ[variable]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    dryrun = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                            capture_output=True, text=True, check=False)
    top = re.search(r"^#\$ TOP=(.*)$", dryrun.stderr + dryrun.stdout, re.MULTILINE)
    return os.path.realpath(top.group(1).strip()) if top else os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


# torch.utils.cpp_extension reads CUDA_HOME once, when imported.
if (cuda_home := find_cuda_home()) is not None:
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
# The sources use C++20 (std::bit_cast, ...). torch's cpp_extension passes the standard its own
# headers need (C++17 in torch 2.11): ours comes after it on the command line and wins.
CXX_STANDARD = "c++20"


def sources(pattern: str) -> list[str]:
    # Paths relative to setup.py, as setuptools wants them.
    return sorted(str(path.relative_to(ROOT)) for path in CSRC.glob(pattern))


def build_cuda(cuda_sources: list[str]) -> bool:
    """Whether to compile the CUDA kernels; RANKMIXUP_BUILD_CUDA=1 turns "cannot" into an error."""
    switch = os.environ.get("RANKMIXUP_BUILD_CUDA", "").strip()
    if switch not in ("", "0", "1"):
        sys.exit(f"RANKMIXUP_BUILD_CUDA must be 0 or 1, got {switch!r}")
    # CUDA_HOME is torch's search: $CUDA_HOME / $CUDA_PATH, else the directory of `nvcc` on PATH.
    missing = [
        why
        for why, ok in (
            ("no CUDA toolkit (set CUDA_HOME or put nvcc on PATH)", CUDA_HOME is not None),
            ("torch is a CPU-only build", torch.version.cuda is not None),
            ("csrc/cuda has no kernels yet", bool(cuda_sources)),
        )
        if not ok
    ]
    if switch == "1" and missing:
        sys.exit("RANKMIXUP_BUILD_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(missing))
    return switch != "0" and not missing


def openmp_flags() -> list[str]:
    # at::parallel_for only runs in parallel in code compiled with OpenMP (torch's pip wheels
    # use the OpenMP backend); elsewhere keep at least the `omp simd` vectorisation hints.
    if sys.platform == "win32":
        return ["/openmp"]
    return ["-fopenmp"] if sys.platform.startswith("linux") else ["-fopenmp-simd"]


def extension():
    cuda_sources = sources("cuda/*.cu")
    with_cuda = build_cuda(cuda_sources)
    # -fno-trapping-math: the row kernels never rely on FP exceptions, and without them GCC
    # if-converts more of their selects (it changes the AVX2 and SSE2 versions of the loops).
    # -Wno-psabi: GCC notes that 64-byte vector arguments change ABI without AVX-512; the row
    # kernels' packs only cross inline calls inside row_ops.cpp, never between ISAs.
    cxx_flags = ["/O2"] if sys.platform == "win32" else ["-O3", "-fno-trapping-math", "-Wno-psabi"]
    cxx_flags += [f"/std:{CXX_STANDARD}" if sys.platform == "win32" else f"-std={CXX_STANDARD}"]
    cxx_flags += openmp_flags()
    macros = []
    kwargs = {}
    if with_cuda:
        arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        macros += [("RANKMIXUP_WITH_CUDA", None), ("RANKMIXUP_CUDA_ARCH_LIST", f'"{arch_list}"')]
        # -lineinfo: compute-sanitizer and profilers name source lines; no effect on the code.
        kwargs["extra_compile_args"] = {"cxx": cxx_flags, "nvcc": [f"-std={CXX_STANDARD}", "-O3", "--use_fast_math", "-lineinfo"]}
        make = CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx_flags}
        make = CppExtension
    return make(
        name="rankmixup_ops._C",
        sources=sources("*.cpp") + sources("cpu/*.cpp") + (cuda_sources if with_cuda else []),
        include_dirs=[str(CSRC), str(CSRC / "include")],
        define_macros=macros,
        extra_link_args=[] if sys.platform == "win32" else openmp_flags(),
        **kwargs,
    )


class BuildExtensionInTree(BuildExtension):
    """torch's BuildExtension, keeping its objects under build/ for every build.

    An editable install (``pip install -e .``) compiles in a throwaway directory; the objects
    kept here let the next ``setup.py build_ext --inplace`` (the Makefile's, after the install
    and after every change under csrc/) recompile only what changed, instead of everything.
    One directory per interpreter, as setuptools names it: each stack's torch headers differ.
    """

    def finalize_options(self):
        if self.build_temp is None:
            self.build_temp = str(ROOT / "build" / f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")
        super().finalize_options()


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtensionInTree.with_options(use_ninja=True)},
)
