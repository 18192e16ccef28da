#!/usr/bin/env bash
# One command for the GPU machine (`make gpu-check`), sized to one lease: builds the extension
# in place against the installed torch (no venv, no pip, no network), then runs, in order of
# value, each stage capped and the whole run within GPU_CHECK_BUDGET_S seconds (default 540):
#
#   build           the extension with its CUDA kernels (RANKMIXUP_BUILD_CUDA=1), for
#                   TORCH_CUDA_ARCH_LIST (9.0) on MAX_JOBS (16) cores
#   environment     GPU, driver, Python, torch, Triton, the backends and build_info()
#   kernels         the gpu-marked tests but the slow ones and the next stage's: every Triton
#                   and CUDA kernel against the reference, forward and backward
#   graphs-compile  CUDA graph capture and torch.compile on the GPU (test_cuda_graphs.py,
#                   test_compile.py)
#   benchmark       `python -m benchmarks --headline`: the large bfloat16 loss and the paper's
#                   shapes, against the eager reference and torch.compile of it, with a copy's
#                   bandwidth measured in the same run
#   sanitizer       compute-sanitizer over the CUDA kernels (tools/gpu_sanitize.py)
#   tests-large     the slow GPU tests: tensors past 2^31 elements (tests/test_large_sizes.py)
#
# Leaves in $OUT (default out/gpu-check) five files and no folder, within what the device
# tool returns (8 files, two folders down); each is brought up to date as each stage ends, so
# that a run killed at its limit still returns what it had:
#
#   summary.txt     each stage's status, seconds and note, then the benchmark's headline table
#   gpu-check.log   every stage's output, in order
#   results.tar.gz  the JUnit XML of each test stage, the benchmark JSON, the sanitizer logs
#   throughput.png  the benchmark's plots
#   speedup.png
#
# Every stage runs even when an earlier one failed; the exit status is 1 if any stage failed.
# Without a CUDA device (a dry run, e.g. on a CPU machine) every stage still runs what it can,
# with status "dry-run" and the note "no CUDA device": the test stages collect and skip the GPU
# tests, the benchmark times its smoke shapes on the CPU, so the same files are left.
#
# Environment: PYTHON (python3), OUT, GPU_CHECK_BUDGET_S (540), GPU_CHECK_STAGES (all of the
# above; name some to rerun only those), MAX_JOBS (16), TORCH_CUDA_ARCH_LIST (9.0),
# RANKMIXUP_GIT_COMMIT (the commit to record where there is no .git).

set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:-out/gpu-check}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
ALL_STAGES="build environment kernels graphs-compile benchmark sanitizer tests-large"
STAGES=" ${GPU_CHECK_STAGES:-$ALL_STAGES} "
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# The in-place build is importable from any working directory (the torchrun example's workers).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

for name in $STAGES; do
    [[ " $ALL_STAGES " == *" $name "* ]] || { echo "GPU_CHECK_STAGES: unknown stage $name (stages: $ALL_STAGES)" >&2; exit 2; }
done

mkdir -p "$OUT"
rm -f "$OUT/summary.txt" "$OUT/gpu-check.log" "$OUT/results.tar.gz" "$OUT/throughput.png" "$OUT/speedup.png"
WORK=$(mktemp -d)  # what results.tar.gz packs: junit-*.xml, bench/, sanitizer/
trap 'rm -rf "$WORK" "$WORK.tar.gz"' EXIT
LOG=$OUT/gpu-check.log
SUMMARY=$OUT/summary.txt
: >"$LOG"
printf '%-16s %-10s %8s  %s\n' stage status seconds note >"$SUMMARY"
START=$SECONDS
FAILED=()

if "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    HAS_CUDA=1
else
    HAS_CUDA=0
fi

record() {  # record STAGE STATUS SECONDS NOTE
    printf '%-16s %-10s %8s  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
}

pack() {  # results.tar.gz from $WORK, replaced whole so that a kill never leaves half of one
    if [[ -n $(ls -A "$WORK") ]]; then
        tar -czf "$WORK.tar.gz" -C "$WORK" . && mv -f "$WORK.tar.gz" "$OUT/results.tar.gz"
    fi
}

# stage NAME CAP_S COMMAND...: runs COMMAND, its output into the log and onto the terminal,
# for at most CAP_S seconds or what is left of the budget, and records how it ended.
stage() {
    local name=$1 cap=$2
    shift 2
    if [[ $STAGES != *" $name "* ]]; then
        record "$name" skipped 0 "not in GPU_CHECK_STAGES"
        return
    fi
    local left=$((BUDGET_S - (SECONDS - START)))
    ((cap > left)) && cap=$left
    if ((cap < 10)); then
        record "$name" skipped 0 "the run's budget of ${BUDGET_S}s is spent"
        FAILED+=("$name")
        return
    fi
    local command="$*"
    echo "=== $name (limit ${cap}s): ${command:0:300}" | tee -a "$LOG"
    local begin=$SECONDS status
    timeout --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$LOG"
    status=${PIPESTATUS[0]}
    local took=$((SECONDS - begin))
    # The archive first, then the summary line: a run killed between the two (the device tool
    # kills at a command's limit) never names a stage whose results it did not keep.
    pack
    case $status in
    0)
        if ((HAS_CUDA)); then record "$name" ok "$took" ""; else record "$name" dry-run "$took" "no CUDA device"; fi
        ;;
    5)
        record "$name" failed "$took" "pytest selected no tests"
        FAILED+=("$name")
        ;;
    124 | 137)
        record "$name" "timed out" "$took" "killed after ${cap}s"
        FAILED+=("$name")
        ;;
    *)
        record "$name" failed "$took" "exit status $status"
        FAILED+=("$name")
        ;;
    esac
}

# pytest_stage NAME CAP_S PYTEST_ARGS...: pytest with the stage's JUnit XML in the archive, on
# several workers when pytest-xdist is installed (Triton's compiles run in parallel then).
pytest_stage() {
    local name=$1 cap=$2
    shift 2
    local workers=()
    ((HAS_CUDA)) && "$PYTHON" -c 'import xdist' 2>/dev/null && workers=(-n 6)
    stage "$name" "$cap" "$PYTHON" -m pytest -q -p no:cacheprovider "${workers[@]}" \
        --junitxml="$WORK/junit-$name.xml" "$@"
}

stage build 150 env RANKMIXUP_BUILD_CUDA=1 "$PYTHON" setup.py build_ext --inplace

stage environment 30 bash -c "
nvidia-smi || echo 'nvidia-smi: not found or failed'
nvcc --version | tail -n 2
'$PYTHON' - <<'EOF'
import sys, torch
print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda)
if torch.cuda.is_available():
    print('GPU', torch.cuda.get_device_name(), torch.cuda.get_device_capability())
else:
    print('no CUDA device')
try:
    import triton
    print('triton', triton.__version__)
except ImportError as error:
    print('triton: not importable:', error)
import rankmixup_ops
from rankmixup_ops import _extension
for name, status in rankmixup_ops.available_backends().items():
    print(f'backend {name}: {status.reason}')
print('build_info', _extension.build_info())
EOF"

GRAPHS_COMPILE=(tests/test_cuda_graphs.py tests/test_compile.py)
pytest_stage kernels 240 -m "gpu and not slow" tests "${GRAPHS_COMPILE[@]/#/--ignore=}"
pytest_stage graphs-compile 90 -m "gpu and not slow" "${GRAPHS_COMPILE[@]}"

# The benchmark starts no new case after BENCH_S and needs up to 40 s to finish the one under
# way and draw the plots; the headline table (its stdout) goes to the summary.
BENCH_CAP=$((BUDGET_S - (SECONDS - START)))
((BENCH_CAP > 110)) && BENCH_CAP=110
BENCH_S=$((BENCH_CAP > 40 ? BENCH_CAP - 40 : 0))
if ((HAS_CUDA)); then
    BENCH_ARGS="--device cuda --headline --budget-s $BENCH_S"
else
    BENCH_ARGS="--device cpu --smoke --no-compile"
fi
stage benchmark "$BENCH_CAP" bash -c "'$PYTHON' -m benchmarks $BENCH_ARGS --out '$WORK/bench' --markdown >'$WORK/headline.md'"
if [[ -f $WORK/headline.md ]]; then
    { echo; cat "$WORK/headline.md"; } >>"$SUMMARY"
    rm "$WORK/headline.md"
fi
shopt -s nullglob
for plot in "$WORK"/bench/*-throughput.png "$WORK"/bench/*-speedup.png; do
    cp "$plot" "$OUT/${plot##*-}"  # throughput.png, speedup.png
    rm "$plot"
done
shopt -u nullglob

# compute-sanitizer writes one log per tool; it exits 2 when there is no GPU to run on.
if ((HAS_CUDA)); then
    stage sanitizer 70 env OUT="$WORK/sanitizer" "$PYTHON" tools/gpu_sanitize.py --budget-s 50
else
    stage sanitizer 30 bash -c "env OUT='$WORK/sanitizer' '$PYTHON' tools/gpu_sanitize.py --budget-s 0; test \$? -eq 2"
fi

# Last: they allocate tens of GB of GPU memory and matter least.
pytest_stage tests-large 90 -m "gpu and slow" tests

pack
if ((${#FAILED[@]})); then
    echo "gpu-check: FAILED stages: ${FAILED[*]} (total $((SECONDS - START))s)" | tee -a "$SUMMARY"
    exit 1
fi
echo "gpu-check: no stage failed (total $((SECONDS - START))s)" | tee -a "$SUMMARY"
