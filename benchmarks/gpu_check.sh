#!/usr/bin/env bash
# The GPU check: the training benchmark on CUDA, plain PyTorch vs cctrain (no DP) vs cctrain
# DP, each ratio against the plain loop measured in the same run. Under 5 minutes on one GPU.
#
#   benchmarks/gpu_check.sh             on CUDA (exit 1 when this machine has none)
#   benchmarks/gpu_check.sh --dry-run   the same script on the CPU, one tiny workload (seconds;
#                                       CI runs it so the script cannot rot)
#
# It uses the project's .venv (./dev setup makes it) and writes its results as JSON to
# ${GPU_CHECK_OUT:-${TMPDIR:-/tmp}/gpu_check.json}, never over the committed results.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
OUT=${GPU_CHECK_OUT:-${TMPDIR:-/tmp}/gpu_check.json}

if [[ "${1:-}" == "--dry-run" ]]; then
  echo "gpu_check: DRY RUN on the CPU (tiny workload; the ratios mean nothing here)"
  exec "$PY" benchmarks/bench_training.py --tiny --repeats 1 --batch-size 64 --device cpu --json "$OUT"
fi
if [[ $# -gt 0 ]]; then
  echo "usage: benchmarks/gpu_check.sh [--dry-run]" >&2
  exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); --dry-run runs on the CPU" >&2
  exit 1
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__, "cuda", torch.version.cuda)'
exec "$PY" benchmarks/bench_training.py --quick --repeats 2 --threads 4 --device cuda --json "$OUT"
