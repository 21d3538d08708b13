#!/usr/bin/env bash
# Everything that needs a GPU, in one run of at most 8 minutes on one H100/H200:
#
#     PYTHONPATH=. bash benchmarks/gpu_check.sh OUTDIR
#
# Steps: the GPU tests (kernels against NumPy, AlexNet on the GPU against the CPU,
# two towers on one GPU against one device in float64, the training program),
# any other gpu-marked tests, the kernel tests under compute-sanitizer (memcheck,
# racecheck, initcheck), two short training runs (--towers 1 and 2), and the
# whole-network benchmark at batch 32 and 128 beside PyTorch + cuDNN and again with
# two towers on GPU 0.  On an H200 (2026-11-30) the steps took about 430 s in all.
#
# Each step has its own time limit and the run goes on after a failure.  All logs
# and results go into OUTDIR; OUTDIR/summary.txt lists every step as PASS, FAIL,
# TIMEOUT or SKIP (with the reason) and its seconds.  The exit status is 0 when
# no step failed or timed out.  Without CuPy or a CUDA device every step is
# skipped with the reason said, so the script can be tried on any machine.
# GPU_CHECK_BUDGET (seconds, default 470) caps the whole run: a step never gets
# more time than is left.

set -u
if [ $# -ne 1 ]; then
    echo "usage: PYTHONPATH=. bash benchmarks/gpu_check.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
SUMMARY="$OUT/summary.txt"
BUDGET=${GPU_CHECK_BUDGET:-470}
START=$(date +%s)
FAILED=0
: > "$SUMMARY"

note() {  # NAME STATUS SECONDS DETAIL
    printf '%-28s %-7s %5ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
}

skip() {  # NAME REASON
    note "$1" SKIP 0 "$2"
}

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with its output in OUTDIR/NAME.log
step() {
    local name=$1 limit=$2 left t0 rc status
    shift 2
    left=$(( BUDGET - ($(date +%s) - START) - 5 ))
    if [ "$left" -lt 20 ]; then
        skip "$name" "the run's budget of ${BUDGET}s is spent"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    t0=$(date +%s)
    echo "\$ $*" > "$OUT/$name.log"
    timeout -k 10 "$limit" "$@" >> "$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=PASS ;;
        124|137) status=TIMEOUT; FAILED=1 ;;
        *) status=FAIL; FAILED=1 ;;
    esac
    note "$name" "$status" "$(( $(date +%s) - t0 ))" "limit ${limit}s, exit $rc, log $name.log"
}

# pytest NAME LIMIT ARGS...: a pytest step; "no tests collected" (exit 5) counts as a pass
pytest_step() {
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" bash -c '"$0" -m pytest -q -rs -p no:cacheprovider "$@"; rc=$?; [ $rc -eq 5 ] && { echo "no tests selected"; exit 0; }; exit $rc' \
        "$PY" --junitxml="$OUT/$name.xml" "$@"
}

# --- what machine, what software --------------------------------------------
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | grep -q . && echo '(uncommitted changes)')"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "torch"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:
        print(name, "not importable:", e)
EOF
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

GPU_REASON=$("$PY" - <<'EOF' 2>&1
try:
    import cupy
except Exception as e:
    print(f"CuPy is not importable ({e}); pip install -e .[gpu-cuda12] or .[gpu-cuda13]")
else:
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        print("" if n > 0 else "CuPy is installed but there is no CUDA device")
    except Exception as e:
        print(f"CuPy is installed but CUDA is not usable: {e}")
EOF
)
GPU_REASON=$(echo "$GPU_REASON" | tail -n 1)

GPU_STEPS="gpu_kernels alexnet_gpu_vs_cpu towers_0_0_vs_one_device training_program_tests other_gpu_tests
sanitizer_memcheck sanitizer_racecheck sanitizer_initcheck train_cuda_towers1 train_cuda_towers2
benchmark_alexnet_cuda benchmark_alexnet_cuda_towers"
if [ -n "$GPU_REASON" ]; then
    for name in $GPU_STEPS; do skip "$name" "$GPU_REASON"; done
    echo "summary: $SUMMARY (nothing ran: $GPU_REASON)"
    exit 0
fi

# --- the GPU tests, one line each in the summary -----------------------------
KERNELS="match_numpy or matches_numpy"  # im2col/col2im, max-pool, LRN against NumPy
ALEXNET="alexnet_forward_backward_gpu_matches_cpu or a_few_training_steps_on_the_gpu"
TOWERS="two_towers_on_one_gpu_match_one_device"
PROGRAM="training_program_on_the_gpu"
pytest_step gpu_kernels 90 tests/test_gpu.py -k "$KERNELS"
pytest_step alexnet_gpu_vs_cpu 90 tests/test_gpu.py -k "$ALEXNET"
pytest_step towers_0_0_vs_one_device 60 tests/test_gpu.py -k "$TOWERS"
pytest_step training_program_tests 90 tests/test_gpu.py -k "$PROGRAM"
# whatever else carries the gpu marker (tests added later, other files)
pytest_step other_gpu_tests 90 -m gpu tests -k "not ($KERNELS or $ALEXNET or $TOWERS or $PROGRAM)"

# --- the kernel tests under compute-sanitizer ---------------------------------
SANITIZER=$(command -v compute-sanitizer || true)
for candidate in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [ -z "$SANITIZER" ] && [ -x "$candidate" ] && SANITIZER=$candidate
done
# memcheck: accesses outside an allocation; racecheck: shared-memory hazards (our kernels use
# no shared memory, so it must find none); initcheck: reads of memory never written.
for tool in memcheck racecheck initcheck; do
    if [ -z "$SANITIZER" ]; then
        skip "sanitizer_$tool" "compute-sanitizer not found (it comes with the CUDA toolkit)"
        continue
    fi
    # CuPy's memory pool off, so that every array is its own allocation and an access
    # past an array's end is outside any allocation (memcheck), not inside a pool block.
    step "sanitizer_$tool" 60 "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PY" -c \
        'import sys, cupy, pytest; cupy.cuda.set_allocator(None); sys.exit(pytest.main(["-q", "-rs", "-p", "no:cacheprovider", "tests/test_gpu.py", "-k", sys.argv[1]]))' "$KERNELS"
done

# --- short training runs on the GPU ------------------------------------------
for towers in 1 2; do
    step "train_cuda_towers$towers" 80 env TINYNET_DEVICES=0,0 "$PY" examples/alexnet_train.py \
        --preset demo --time-budget 45 --device cuda --towers "$towers" --quiet \
        --out "$OUT/train_cuda_towers$towers" --cache-dir "$OUT/data-cache"
done

# --- the benchmark beside PyTorch + cuDNN ------------------------------------
# (with the GEMM floor, cuBLAS's products alone, and a profile whose ops each wait for their kernels)
step benchmark_alexnet_cuda 230 "$PY" benchmarks/alexnet.py --device cuda --batches 32 128 --repeat 5 --rounds 2 \
    --out "$OUT/alexnet_cuda"
# the two towers, both on GPU 0 (one stream each): what the split itself costs, against the row above
step benchmark_alexnet_cuda_towers 90 env TINYNET_DEVICES=0,0 "$PY" benchmarks/alexnet.py --device cuda --towers \
    --batches 32 128 --repeat 5 --rounds 1 --no-torch --out "$OUT/alexnet_cuda_towers"

# --- the numbers worth a glance, appended to the summary ----------------------
{
    for towers in 1 2; do
        log="$OUT/train_cuda_towers$towers.log"
        [ -f "$log" ] && printf '\ntrain_cuda_towers%s, last lines of its log:\n%s\n' "$towers" "$(tail -n 4 "$log")"
    done
    # peak memory there: used / reserved for both engines alike
    for name in alexnet_cuda alexnet_cuda_towers; do
        [ -f "$OUT/$name.md" ] && printf '\n%s\n' "$(cat "$OUT/$name.md")"
    done
} >> "$SUMMARY"

echo "results: $OUT"
echo "summary: $SUMMARY"
exit $FAILED
