#!/usr/bin/env bash
# The one device script: on the GPU machine (no network), within GPU_CHECK_BUDGET_S seconds (default 480 = 8 min):
#   env      nvidia-smi, pip freeze, versions                         -> $OUT/env/
#   build    pip install --no-build-isolation --no-deps -e . (builds the CUDA extension; no downloads)
#   probe    which backend can run which op at the model's shapes     -> $OUT/env/probe.json
#   tests    pytest -q -m "not slow" tests/                            -> $OUT/tests/ (log, junit xml)
#   bench    sections ops, layers, e2e, compile as separate processes, then the report
#                                                                       -> $OUT/bench/ (json, md, png)
# Every stage runs under `timeout`, with the time left in the budget, so a hang in one stage leaves the others'
# results; each bench section also writes its JSON after every measurement. $OUT/stages.tsv has one line per
# stage (name, exit code, seconds; 124 = timed out), $OUT/SUMMARY.md the overview.
#
#   OUT=/path/to/out bash bench/gpu_check.sh                 # on the GPU machine
#   OUT=/tmp/x bash bench/gpu_check.sh --cpu-dry-run         # here, on the CPU: the same stages, made small
#
# --cpu-dry-run: pip --dry-run (nothing installed), pytest --collect-only, and the bench at the CPU --quick sizes
# with fewer cases; it checks that the script and every command in it are sound. Environment knobs:
# PYTHON (default python, else python3), GPU_CHECK_BUDGET_S, GPU_CHECK_BENCH_ARGS (extra arguments for every bench
# section), GPU_CHECK_SKIP (comma-separated stage names to skip, e.g. "build,tests,bench-compile"), and the stage
# limits GPU_CHECK_{BUILD,TESTS,OPS,LAYERS,E2E}_S (defaults 170, 120, 70, 60, 100 s; compile gets what is left).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (expected --cpu-dry-run)" >&2; exit 2 ;;
  esac
done
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT/env" "$OUT/logs" "$OUT/tests" "$OUT/bench"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
SKIP=",${GPU_CHECK_SKIP:-},"
START=$(date +%s)
REPORT_RESERVE=25  # seconds kept for the bench report and the summary
printf 'stage\trc\tseconds\tnote\n' > "$OUT/stages.tsv"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MAX_JOBS=${MAX_JOBS:-16}

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# stage NAME LIMIT_S CMD...: run CMD under timeout (LIMIT_S, capped by the budget left), log to $OUT/logs/NAME.log
stage() {
  local name=$1 limit=$2; shift 2
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

if (( DRY )); then
  echo "gpu_check: --cpu-dry-run (CPU, small sizes; nothing is installed)"
  BUILD=("$PY" -m pip install --no-build-isolation --no-deps -e . --dry-run)
  TESTS=("$PY" -m pytest -q -m "not slow" tests/ -p no:cacheprovider --collect-only)
  BENCH_BASE=(--device cpu --quick --threads 1 --dtypes float32 --batches 1,2 --prompts 1,2 --reps 3
              --case-budget-s 0.2 --families attention,repmixer)
  PROBE_SIZE=tiny
else
  BUILD=("$PY" -m pip install --no-build-isolation --no-deps -v -e .)
  TESTS=("$PY" -m pytest -q -m "not slow" tests/ -p no:cacheprovider -ra --durations=20
         --junitxml="$OUT/tests/junit.xml")
  BENCH_BASE=(--device cuda --quick)
  PROBE_SIZE=full
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
stage probe 40 "$PY" -m bench.probe --out "$OUT/env/probe.json" --size "$PROBE_SIZE"
stage tests "${GPU_CHECK_TESTS_S:-120}" "${TESTS[@]}"
cp "$OUT/logs/tests.log" "$OUT/tests/pytest.log" 2>/dev/null
# Bench sections: each a process of its own with a --time-budget-s a little under its timeout, so that it
# normally ends by itself (recording the cases it had no time for as skipped) before `timeout` would kill it.
bench_stage() {
  local section=$1 limit=$2; shift 2
  local avail=$(( $(left) - REPORT_RESERVE ))
  (( limit > avail )) && limit=$avail
  local inner=$(( limit > 40 ? limit - 15 : limit * 2 / 3 ))
  stage "bench-$section" "$limit" "${BENCH[@]}" --sections "$section" --time-budget-s "$inner" "$@"
}
bench_stage ops "${GPU_CHECK_OPS_S:-70}"
bench_stage layers "${GPU_CHECK_LAYERS_S:-60}"
bench_stage e2e "${GPU_CHECK_E2E_S:-100}"
COMPILE_LEFT=$(( $(left) - REPORT_RESERVE ))
bench_stage compile "$COMPILE_LEFT" --compile-budget-s $(( COMPILE_LEFT > 60 ? COMPILE_LEFT - 40 : 20 ))
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
  [ -f "$OUT/bench/summary.md" ] && cat "$OUT/bench/summary.md"
} > "$OUT/SUMMARY.md"
echo "gpu_check: done in $(( $(date +%s) - START )) s; see $OUT/SUMMARY.md"
cat "$OUT/stages.tsv"
