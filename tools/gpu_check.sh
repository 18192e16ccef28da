#!/usr/bin/env bash
# One command for a machine with a CUDA GPU (`make gpu-check`): builds the extension in place
# against the installed torch, prints the GPU and versions, runs the GPU tests, compute-sanitizer
# on the CUDA kernels, and the benchmarks. No network, no venv, no pip: it uses what is installed.
#
#   bash tools/gpu_check.sh
#
# Every stage runs even when an earlier one failed (the benchmark still times Triton if the
# build broke); each stage's exit status goes to the summary, and the script exits 1 at the end
# if any stage failed. The whole run keeps within GPU_CHECK_BUDGET_S seconds (default 540, for
# a 10-minute slot): each stage has a time cap, and the benchmark gets what is left.
#
# Environment: PYTHON (python3), OUT (out/gpu-check), GPU_CHECK_BUDGET_S (540), MAX_JOBS (16),
# TORCH_CUDA_ARCH_LIST (9.0), RANKMIXUP_GIT_COMMIT (the commit to record where there is no .git).
#
# Leaves in $OUT (few files, so that a remote runner can bring them all back):
#   summary.txt          each stage's status and seconds, then the benchmark's headline table
#   gpu-check.log        the output of every stage, in order
#   junit-gpu.xml        pytest -m gpu tests (all but the slow ones)
#   junit-gpu-large.xml  the slow GPU tests: tensors past 2^32 elements (tests/test_large_sizes.py)
#   junit-backends.xml   the Triton and CUDA backend test files, in full
#   bench/               the benchmark JSON and its two plots
#   sanitizer.tar.gz     whatever the sanitizer script wrote, when it wrote anything

set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:-out/gpu-check}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

mkdir -p "$OUT"
rm -rf "$OUT/bench" "$OUT"/junit-*.xml "$OUT/sanitizer" "$OUT/sanitizer.tar.gz"  # this run's files only
LOG=$OUT/gpu-check.log
SUMMARY=$OUT/summary.txt
: >"$LOG"
printf '%-16s %-10s %8s  %s\n' stage status seconds note >"$SUMMARY"
START=$SECONDS
FAILED=()

record() {  # record STAGE STATUS SECONDS NOTE
    printf '%-16s %-10s %8s  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
}

# stage NAME CAP_S COMMAND...: runs COMMAND, its output into the log and onto the terminal,
# for at most CAP_S seconds or what is left of the budget, and records how it ended.
stage() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    ((cap > left)) && cap=$left
    if ((cap < 10)); then
        record "$name" skipped 0 "the run's budget of ${BUDGET_S}s is spent"
        FAILED+=("$name")
        return
    fi
    local command="$*"
    echo "=== $name (limit ${cap}s): ${command:0:200}" | tee -a "$LOG"
    local begin=$SECONDS status
    timeout --kill-after=15 "$cap" "$@" 2>&1 | tee -a "$LOG"
    status=${PIPESTATUS[0]}
    local took=$((SECONDS - begin))
    case $status in
    0) record "$name" ok "$took" "" ;;
    5) record "$name" "no tests" "$took" "pytest selected no tests" ;;  # not a failure of the code
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

stage build 240 env RANKMIXUP_BUILD_CUDA=1 "$PYTHON" setup.py build_ext --inplace

stage environment 60 bash -c "
nvidia-smi || exit
nvcc --version | tail -n 2
'$PYTHON' - <<'EOF'
import sys, torch
print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '|', torch.cuda.get_device_name(), torch.cuda.get_device_capability())
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

stage tests-gpu 120 "$PYTHON" -m pytest -m "gpu and not slow" tests -q -p no:cacheprovider \
    --junitxml="$OUT/junit-gpu.xml"

# Their own stage and cap: they allocate tens of GB of GPU memory and would crowd the one above.
stage tests-gpu-large 90 "$PYTHON" -m pytest -m "gpu and slow" tests -q -p no:cacheprovider \
    --junitxml="$OUT/junit-gpu-large.xml"

shopt -s nullglob
BACKEND_TESTS=(tests/test_triton_backend.py tests/test_cuda*.py)
shopt -u nullglob
if ((${#BACKEND_TESTS[@]})); then
    stage tests-backends 150 "$PYTHON" -m pytest "${BACKEND_TESTS[@]}" -q -p no:cacheprovider \
        --junitxml="$OUT/junit-backends.xml"
else
    record tests-backends skipped 0 "no backend test files in this tree"
fi

# compute-sanitizer over the CUDA kernels, by the project's driver (either name); it writes one
# log per tool under $OUT and spends at most --budget-s.
if [[ -f tools/gpu_sanitize.py ]]; then
    stage sanitizer 110 env OUT="$OUT/sanitizer" "$PYTHON" tools/gpu_sanitize.py --budget-s 90
elif [[ -f tools/compute_sanitizer.sh ]]; then
    stage sanitizer 110 env OUT="$OUT/sanitizer" bash tools/compute_sanitizer.sh
else
    record sanitizer skipped 0 "no tools/compute_sanitizer.sh or tools/gpu_sanitize.py in this tree"
fi
if [[ -d $OUT/sanitizer ]]; then
    [[ -n $(ls -A "$OUT/sanitizer") ]] && tar -czf "$OUT/sanitizer.tar.gz" -C "$OUT" sanitizer
    rm -rf "$OUT/sanitizer"
fi

# The benchmark starts no new case after BENCH_S and needs up to 45 s to finish the one under
# way and draw the plots; the headline table (its stdout) goes to the summary.
BENCH_CAP=$((BUDGET_S - (SECONDS - START)))
BENCH_S=$((BENCH_CAP > 45 ? BENCH_CAP - 45 : 0))
stage benchmark "$BENCH_CAP" bash -c "'$PYTHON' -m benchmarks --device cuda --budget-s $BENCH_S \
    --out '$OUT/bench' --markdown >'$OUT/headline.md'"
if [[ -f $OUT/headline.md ]]; then
    { echo; cat "$OUT/headline.md"; } >>"$SUMMARY"
    rm "$OUT/headline.md"
fi

if ((${#FAILED[@]})); then
    echo "gpu-check: FAILED stages: ${FAILED[*]} (total $((SECONDS - START))s)" | tee -a "$SUMMARY"
    exit 1
fi
echo "gpu-check: every stage passed (total $((SECONDS - START))s)" | tee -a "$SUMMARY"
