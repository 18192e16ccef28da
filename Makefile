# One-command entry points. Each target creates .venv when it is missing, installs the pinned
# dependencies and the package into it, and is safe to run again (the install is stamped).
PYTHON ?= python3
VENV ?= .venv
REQUIREMENTS ?= requirements.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The compiled extension, rebuilt whenever a source under csrc/ changes (ninja recompiles only
# what changed). MAX_JOBS caps the parallel compile jobs. One stamp per venv: each stack builds
# its own in-place module (its file name carries the Python version, _C.cpython-312-*.so).
EXTENSION_STAMP := $(VENV)/.extension
# The second stack of `make stack-check`: the GPU machine's Python, torch and Triton.
STACK_VENV ?= .venv-gpu-machine
# Its interpreter: python3.12 on PATH if it runs (a pyenv shim may not), else pyenv's 3.12.
ifndef STACK_PYTHON
STACK_PYTHON := $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),$(shell $(p) -c '' 2>/dev/null && echo $(p))))
endif
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

.PHONY: setup build test stack-check demo cmake-check aot-check bench bench-cpu bench-cutmix gpu-check clean

setup: $(STAMP) $(EXTENSION_STAMP)

build: $(EXTENSION_STAMP)

$(STAMP): $(REQUIREMENTS) pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(REQUIREMENTS)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

$(EXTENSION_STAMP): $(STAMP) $(CSRC) setup.py
	$(PY) setup.py --quiet build_ext --inplace
	touch $@

test: setup
	$(PY) -m pytest -q tests

# The whole suite again on the GPU machine's stack (requirements-gpu-machine.txt) in a venv of
# its own, with the CUDA kernels required and built for that machine's H200 alone (sm_90, as
# gpu-check builds them): what a GPU lease would build and import.
stack-check:
	@test -n "$(STACK_PYTHON)" || { echo "stack-check: no Python 3.12 found; set STACK_PYTHON=/path/to/python3.12"; exit 1; }
	RANKMIXUP_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 $(MAKE) test VENV=$(STACK_VENV) PYTHON=$(STACK_PYTHON) \
	    REQUIREMENTS=requirements-gpu-machine.txt

demo: setup
	$(PY) examples/train_digits.py --plots out/demo

# The same extension built by CMake from the same sources, plus the C++ test of the math headers.
cmake-check: $(STAMP)
	cmake -S . -B build/cmake -DPython_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake --parallel $${MAX_JOBS:-2}
	ctest --test-dir build/cmake --output-on-failure

# Compiles every Triton kernel configuration the backend launches for sm_80 and sm_90 (no GPU
# needed) and fails if a main configuration spills registers.
aot-check: $(STAMP)
	$(PY) tools/triton_aot_check.py

# Every available backend against the eager reference and torch.compile of it; JSON and plots
# under benchmarks/results/ (see benchmarks/README.md).
bench: setup
	$(PY) -m benchmarks --markdown

# One command for a machine with a GPU and no network: builds in place against the installed
# torch (no venv, no downloads), runs the GPU tests, compute-sanitizer and the benchmarks, and
# leaves logs and JSON in $$OUT (default out/gpu-check).
gpu-check:
	PYTHON=$(PYTHON) bash tools/gpu_check.sh

bench-cpu: setup
	$(PY) -m pytest benchmarks/test_bench_cpu.py --benchmark-only --benchmark-group-by=param:shape --benchmark-columns=median,iqr,rounds

# rankmixup_ops.cutmix against timm's and torchvision's CutMix (benchmarks/cutmix.py), with those
# two installed into the venv from requirements-bench.txt first.
bench-cutmix: setup
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) -m benchmarks.cutmix --markdown

clean:
	rm -rf $(VENV) $(STACK_VENV) build *.egg-info .pytest_cache
