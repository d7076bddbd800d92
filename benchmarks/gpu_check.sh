#!/usr/bin/env bash
# GPU evidence in one prepared command (see benchmarks/gpu_check.py for the steps).
#   bash benchmarks/gpu_check.sh OUTDIR              GPU machine: install what the calls carried, run every step
#   bash benchmarks/gpu_check.sh --install-only      GPU machine, an earlier call: install what this call carried
#   bash benchmarks/gpu_check.sh --cpu OUTDIR        here: tiny shapes on the CPU, end to end
# Carried files (.gpu-bundle/call-N from `make gpu-bundle`) go to /tmp, which lasts while the machine stays warm.
set -u
cd "$(dirname "$0")/.."
BUNDLE=/tmp/tunebench-bundle
SITE=/tmp/site
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

install_carried() {
  mkdir -p "$BUNDLE" "$SITE"
  for call in .gpu-bundle/call-*; do
    [ -d "$call" ] || continue
    cp -r "$call" "$BUNDLE/"
    if ls "$call"/wheels/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$call"/wheels/*.whl
    fi
  done
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c "import tunebench.methods" 2>/dev/null; then
    # tunebench.methods lives in methods/: only an install maps it (setuptools: torch requires it on Python 3.12)
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || echo "[gpu_check] installing tunebench failed"
  fi
}

case "${1:-}" in
  --install-only) install_carried; ls "$BUNDLE"; exit 0 ;;
  --cpu) shift; [ $# -eq 1 ] || { echo "usage: gpu_check.sh --cpu OUTDIR" >&2; exit 2; }
         OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 exec "$PY" -m tunebench.benchmarks.gpu_check run --cpu "$1" ;;
  ""|-*) echo "usage: gpu_check.sh [--cpu] OUTDIR | --install-only" >&2; exit 2 ;;
esac
install_carried
HF_HUB_OFFLINE=1 "$PY" -m tunebench.benchmarks.gpu_check run "$1" --bundle "$BUNDLE"
status=$?
"$PY" - "$1" <<'PYEOF'
import json, sys
summary = json.load(open(f"{sys.argv[1]}/summary.json"))
for step in summary["steps"]:
    print(f"{step['step']:11} {step['status']:8} {step['seconds']:7.0f} s  {step['error'] or ''}")
PYEOF
exit $status
