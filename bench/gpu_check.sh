#!/usr/bin/env bash
# The one device script: on the GPU machine (no network), within GPU_CHECK_BUDGET_S seconds (default 480 = 8 min).
# Stages, in order of importance (each under `timeout` with the time left; what does not fit is skipped and says so):
#   env               nvidia-smi, pip freeze, versions                             -> $OUT/env/
#   build             pip install --no-build-isolation --no-deps -e . (builds the CUDA extension; no downloads)
#   bench-fast        the fast path (sam3lt.optimize, bf16, CUDA graphs): breakdown, memory, accuracy, end to end
#   kernel-goals      issue 13's kernel goals: window/global/box-bias attention per backend vs SDPA / HF's call,
#                     interleaved, checked against the eager reference   -> $OUT/bench/kernel_goals.{json,md}
#   bench-e2e         end to end per backend and HF eager (bf16 first): the goals table's HF eager column
#   tests             pytest -q -m "not slow" on the GPU-relevant test files (GPU_TESTS) -> $OUT/tests/ (log, junit)
#   bench-fast-compile  the fast path with torch.compile (batch 1, then batch 8 if the time allows)
#   bench-compile     HF torch.compile: whole model first (the goals table's HF compile column), then components
#   probe             which backend can run which op at the model's shapes           -> $OUT/env/probe.json
#   bench-ops, bench-layers   per-op microbenchmarks, per-layer breakdown
#   bench-ops-pytest  the per-op microbenchmarks on pytest-benchmark (`pytest bench/ops`) -> $OUT/bench_ops.json
#   report            results.json, bench.md, summary.md, goals.md (issue 6's goals)  -> $OUT/bench/
# Each bench stage is a process of its own writing its section JSON after every measurement, so a hang or a
# timeout keeps what was measured. $OUT/stages.tsv has one line per stage (name, exit code, seconds; 124 = timed
# out), $OUT/SUMMARY.md the overview: stages, test result, then goals.md, kernel_goals.md and the summary tables.
#
#   OUT=/path/to/out bash bench/gpu_check.sh                 # on the GPU machine
#   OUT=/tmp/x bash bench/gpu_check.sh --cpu-dry-run         # here, on the CPU: the same stages, made small
#
# --cpu-dry-run: pip --dry-run (nothing installed), pytest --collect-only, and the bench at the CPU --quick sizes
# with fewer cases (fast-compile is skipped on the CPU); it checks that the script and every command in it are
# sound. Environment knobs: PYTHON (default python, else python3), GPU_CHECK_BUDGET_S, GPU_CHECK_BENCH_ARGS (extra
# arguments for every bench section), GPU_CHECK_SKIP (comma-separated stage names to skip, e.g.
# "build,tests,bench-compile"), and the stage limits GPU_CHECK_{BUILD,FAST,KERNEL_GOALS,E2E,TESTS,FAST_COMPILE,
# COMPILE,PROBE,OPS,LAYERS,OPS_PYTEST}_S (defaults 170, 110, 45, 60, 110, 120, 110, 25, 45, 60, 60 s; each capped by
# the time left).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (expected --cpu-dry-run)" >&2; exit 2 ;;
  esac
done
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT/env" "$OUT/logs" "$OUT/tests" "$OUT/bench"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}
# The CPU dry run checks the script's plumbing, not its timing: on a loaded 2-core machine (CI, the ONEDNN AVX2
# code paths) the same small stages take several times longer, so there every limit and the budget are scaled.
TIME_SCALE=${GPU_CHECK_TIME_SCALE:-$(( DRY ? 4 : 1 ))}
BUDGET=${GPU_CHECK_BUDGET_S:-$(( 480 * TIME_SCALE ))}
SKIP=",${GPU_CHECK_SKIP:-},"
START=$(date +%s)
REPORT_RESERVE=25  # seconds kept for the bench report and the summary
printf 'stage\trc\tseconds\tnote\n' > "$OUT/stages.tsv"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MAX_JOBS=${MAX_JOBS:-16}

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# stage NAME LIMIT_S CMD...: run CMD under timeout (LIMIT_S, capped by the budget left), log to $OUT/logs/NAME.log
stage() {
  local name=$1 limit=$(( $2 * TIME_SCALE )); shift 2
  if [[ "$SKIP" == *",$name,"* ]]; then
    printf '%s\t-\t0\tskipped (GPU_CHECK_SKIP)\n' "$name" >> "$OUT/stages.tsv"; return 0
  fi
  local avail=$(( $(left) - REPORT_RESERVE ))
  [[ "$name" == report ]] && avail=$(left)
  (( limit > avail )) && limit=$avail
  if (( limit < 10 )); then
    printf '%s\t-\t0\tskipped: no time left in the %ss budget\n' "$name" "$BUDGET" >> "$OUT/stages.tsv"
    echo "gpu_check: $name skipped (no time left)"; return 0
  fi
  echo "gpu_check: $name (limit ${limit}s, $(left)s left) ..."
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local note=ok
  (( rc == 124 || rc == 137 )) && note="timed out after ${limit}s"
  (( rc != 0 && rc != 124 && rc != 137 )) && note="failed"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$note" >> "$OUT/stages.tsv"
  echo "gpu_check: $name rc=$rc ${dt}s ($note); tail of $OUT/logs/$name.log:"
  tail -n 3 "$OUT/logs/$name.log" | sed 's/^/    /'
  return 0
}

env_info() {
  echo "date: $(date -u +%FT%TZ)"; echo "host cores: $(nproc)"; free -g 2>/dev/null || true
  git log -1 --oneline 2>/dev/null || true; git status --short 2>/dev/null | head -50 || true
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi > "$OUT/env/nvidia-smi.txt" 2>&1
    nvidia-smi -q > "$OUT/env/nvidia-smi-q.txt" 2>&1
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv
  else
    echo "no nvidia-smi on this machine" | tee "$OUT/env/nvidia-smi.txt"
  fi
  command -v nvcc > /dev/null && nvcc --version || echo "no nvcc on PATH"
  "$PY" -m pip freeze > "$OUT/env/pip-freeze.txt" 2>&1
  "$PY" -m pip --version
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  "$PY" -c "import triton; print('triton', triton.__version__)" || true
  "$PY" -c "import transformers; print('transformers', transformers.__version__)" || true
}

# The tests that do something different on a GPU, most important first (CI runs the whole suite on the CPU; the
# HF parity, loading and processor tests are device-independent and would not fit in the budget).
GPU_TESTS=(tests/test_fast.py tests/test_model_backends.py tests/test_cuda_backend.py tests/test_cuda_ext.py
           tests/test_window_attention.py tests/test_cross_attention.py tests/test_repmixer.py
           tests/test_upsample.py tests/test_layer_norm.py tests/test_linear.py tests/test_tuning.py
           tests/test_compile.py tests/test_box_bias.py tests/test_box_refine.py tests/test_rope.py
           tests/test_autotune.py)
if (( DRY )); then
  echo "gpu_check: --cpu-dry-run (CPU, small sizes; nothing is installed)"
  BUILD=("$PY" -m pip install --no-build-isolation --no-deps -e . --dry-run)
  TESTS=("$PY" -m pytest -q -m "not slow" "${GPU_TESTS[@]}" -p no:cacheprovider --collect-only)
  BENCH_BASE=(--device cpu --quick --threads 1 --dtypes float32 --batches 1,2 --prompts 1,2 --reps 3
              --case-budget-s 0.2 --families attention,repmixer)
  E2E_ARGS=()
  PROBE_SIZE=tiny
  OPS_PYTEST=(--device cpu -k "window_attention or repmixer")  # tiny shapes, fp32 (--quick on the CPU)
  KERNEL_GOALS=(--device cpu --quick --threads 1)  # tiny shapes, fp32; labelled "CPU dry run", never met
else
  BUILD=("$PY" -m pip install --no-build-isolation --no-deps -v -e .)
  TESTS=("$PY" -m pytest -q -m "not slow" "${GPU_TESTS[@]}" -p no:cacheprovider -ra --durations=20
         --junitxml="$OUT/tests/junit.xml")
  BENCH_BASE=(--device cuda --quick)
  E2E_ARGS=(--dtypes bfloat16,float32)  # bf16 first: the goals table's HF eager numbers
  PROBE_SIZE=full
  OPS_PYTEST=(--device cuda)  # the real shapes, fp32 and bf16 (--quick on a GPU: fewer rounds)
  KERNEL_GOALS=(--device cuda)  # the model's shapes, bf16
fi
read -r -a EXTRA <<< "${GPU_CHECK_BENCH_ARGS:-}"
BENCH=("$PY" -m sam3lt.cli bench --out "$OUT/bench" --name gpu-check --no-progress "${BENCH_BASE[@]}" "${EXTRA[@]}")

export OUT PY
export -f env_info
stage env 30 bash -c env_info
cp "$OUT/logs/env.log" "$OUT/env/versions.txt" 2>/dev/null
stage build "${GPU_CHECK_BUILD_S:-170}" "${BUILD[@]}"
if (( ! DRY )) && ! awk -F'\t' '$1 == "build" && $2 == "0" {ok = 1} END {exit !ok}' "$OUT/stages.tsv"; then
  # The CUDA extension did not build (or timed out): install pure Python so that the tests and the Triton/eager
  # benchmarks still run; the cuda backend then reports why it is unavailable.
  SAM3LT_SKIP_CUDA_BUILD=1 stage build-pure 60 "$PY" -m pip install --no-build-isolation --no-deps -e .
fi
# Bench sections: each a process of its own with a --time-budget-s a little under its timeout, so that it
# normally ends by itself (recording the cases it had no time for as skipped) before `timeout` would kill it.
# budgeted NAME LIMIT CMD...: stage NAME running CMD --time-budget-s (a little under LIMIT, capped by the time left)
budgeted() {
  local name=$1 limit=$2; shift 2
  local avail=$(( ($(left) - REPORT_RESERVE) / TIME_SCALE ))
  (( limit > avail )) && limit=$avail
  local inner=$(( limit > 40 ? limit - 15 : limit * 2 / 3 ))
  stage "$name" "$limit" "$@" --time-budget-s "$inner"
}
bench_stage() {
  local section=$1 limit=$2; shift 2
  budgeted "bench-$section" "$limit" "${BENCH[@]}" --sections "$section" "$@"
}
# the fast path first: it is what issue 6's goals measure
bench_stage fast "${GPU_CHECK_FAST_S:-110}"
# issue 13's kernel goals (short: a few cases; Triton's cache is warm from bench-fast's autotuning)
budgeted kernel-goals "${GPU_CHECK_KERNEL_GOALS_S:-45}" "$PY" -m bench.kernel_goals --out "$OUT/bench" \
  "${KERNEL_GOALS[@]}"
bench_stage e2e "${GPU_CHECK_E2E_S:-60}" "${E2E_ARGS[@]}"
stage tests "${GPU_CHECK_TESTS_S:-110}" "${TESTS[@]}"
cp "$OUT/logs/tests.log" "$OUT/tests/pytest.log" 2>/dev/null
bench_stage fast-compile "${GPU_CHECK_FAST_COMPILE_S:-120}"
COMPILE_S=$(( $(left) - REPORT_RESERVE ))
(( COMPILE_S > ${GPU_CHECK_COMPILE_S:-110} )) && COMPILE_S=${GPU_CHECK_COMPILE_S:-110}
bench_stage compile "$COMPILE_S" --compile-budget-s $(( COMPILE_S > 60 ? COMPILE_S - 40 : 20 ))
stage probe "${GPU_CHECK_PROBE_S:-25}" "$PY" -m bench.probe --out "$OUT/env/probe.json" --size "$PROBE_SIZE"
bench_stage ops "${GPU_CHECK_OPS_S:-45}"
bench_stage layers "${GPU_CHECK_LAYERS_S:-60}"
# the ops cases again on pytest-benchmark, in the time left (Triton's cache is warm from bench-ops); a
# --time-budget-s under the stage's limit skips what does not fit, so that pytest ends by itself and writes the JSON
OPS_PYTEST_S=$(( $(left) - REPORT_RESERVE ))
(( OPS_PYTEST_S > ${GPU_CHECK_OPS_PYTEST_S:-60} )) && OPS_PYTEST_S=${GPU_CHECK_OPS_PYTEST_S:-60}
stage bench-ops-pytest "$OPS_PYTEST_S" "$PY" -m pytest bench/ops --quick -q -p no:cacheprovider \
  --benchmark-json="$OUT/bench_ops.json" --time-budget-s $(( OPS_PYTEST_S > 40 ? OPS_PYTEST_S - 15 : OPS_PYTEST_S * 2 / 3 )) \
  "${OPS_PYTEST[@]}"
stage report 20 "$PY" -m sam3lt.cli bench --out "$OUT/bench" --name gpu-check --report-only

{
  echo "# gpu_check $( ((DRY)) && echo '(--cpu-dry-run)' ) — $(date -u +%FT%TZ), $(( $(date +%s) - START )) s of ${BUDGET} s"
  echo
  echo '| stage | rc | seconds | note |'
  echo '|---|---|---|---|'
  tail -n +2 "$OUT/stages.tsv" | awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}'
  echo
  echo "tests: $(grep -E '(passed|failed|error|tests? collected|no tests ran)' "$OUT/logs/tests.log" 2>/dev/null | tail -n 1)"
  echo
  # goals.md first; then summary.md after its own copy of the goals (the line "<!-- end of goals -->")
  if [ -f "$OUT/bench/goals.md" ]; then
    cat "$OUT/bench/goals.md"; echo
  else
    echo "goals.md: not written (the report stage did not run or failed: see $OUT/logs/report.log)"; echo
  fi
  # issue 13's kernel goals (the kernel-goals stage rewrites kernel_goals.md after every measurement)
  if [ -f "$OUT/bench/kernel_goals.md" ]; then
    cat "$OUT/bench/kernel_goals.md"; echo
  else
    echo "kernel_goals.md: not written (the kernel-goals stage did not run: see $OUT/logs/kernel-goals.log)"; echo
  fi
  if [ -f "$OUT/bench/summary.md" ]; then
    if grep -q '^<!-- end of goals -->' "$OUT/bench/summary.md"; then
      awk 'done; /^<!-- end of goals -->/ {done = 1}' "$OUT/bench/summary.md"
    else
      cat "$OUT/bench/summary.md"
    fi
  fi
} > "$OUT/SUMMARY.md"
echo "gpu_check: done in $(( $(date +%s) - START )) s; see $OUT/SUMMARY.md"
cat "$OUT/stages.tsv"
