#!/usr/bin/env bash
# GPU evidence in one prepared command (see benchmarks/gpu_check.py for the steps).
#   bash benchmarks/gpu_check.sh OUTDIR              GPU machine: install what the calls carried, run every step
#   bash benchmarks/gpu_check.sh --install-only      GPU machine, an earlier call: install what this call carried
#   bash benchmarks/gpu_check.sh --cpu OUTDIR        here: tiny shapes on the CPU, end to end
# Carried files (.gpu-bundle/call-N from `make gpu-bundle`): wheels are installed, the rest copied to /tmp; both
# last only while the machine stays warm between calls.
set -u
cd "$(dirname "$0")/.."
BUNDLE=/tmp/tunebench-bundle
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

install_carried() {
  mkdir -p "$BUNDLE"
  for call in .gpu-bundle/call-*; do
    [ -d "$call" ] || continue
    cp -r "$call" "$BUNDLE/"
    if ls "$call"/wheels/*.whl >/dev/null 2>&1; then
      # Into the interpreter's own site-packages, not a --target folder: datasets fingerprints with dill, which
      # pickles any module outside the standard paths by value, and pyarrow's then fails (seen on Python 3.12).
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$call"/wheels/*.whl ||
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --break-system-packages \
          "$call"/wheels/*.whl
    fi
  done
  if ! "$PY" -c "import tunebench.methods" 2>/dev/null; then
    # Not installed there: tunebench.methods and .benchmarks live in methods/ and benchmarks/, so a folder of
    # links lays the package out as an install would (REPO_ROOT resolves the links back to this checkout).
    mkdir -p /tmp/tunebench-src/tunebench
    ln -sf "$PWD"/tunebench/*.py /tmp/tunebench-src/tunebench/
    ln -sfn "$PWD"/methods /tmp/tunebench-src/tunebench/methods
    ln -sfn "$PWD"/benchmarks /tmp/tunebench-src/tunebench/benchmarks
    export PYTHONPATH="/tmp/tunebench-src${PYTHONPATH:+:$PYTHONPATH}"
  fi
}

case "${1:-}" in
  --install-only) install_carried; ls "$BUNDLE"; exit 0 ;;
  --cpu) shift; [ $# -eq 1 ] || { echo "usage: gpu_check.sh --cpu OUTDIR" >&2; exit 2; }
         # the CPU on any machine: on a GPU machine too, no process sees the GPUs
         CUDA_VISIBLE_DEVICES= ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 \
           exec "$PY" -m tunebench.benchmarks.gpu_check run --cpu "$1" ;;
  ""|-*) echo "usage: gpu_check.sh [--cpu] OUTDIR | --install-only" >&2; exit 2 ;;
esac
install_carried
mkdir -p "$1" && "$PY" -m pip check > "$1/pip-check.txt" 2>&1  # the image's versions against what was carried
HF_HUB_OFFLINE=1 "$PY" -m tunebench.benchmarks.gpu_check run "$1" --bundle "$BUNDLE"
status=$?
"$PY" - "$1" <<'PYEOF'
import json, sys
summary = json.load(open(f"{sys.argv[1]}/summary.json"))
for step in summary["steps"]:
    print(f"{step['step']:11} {step['status']:8} {step['seconds']:7.0f} s  {step['error'] or ''}")
PYEOF
exit $status
