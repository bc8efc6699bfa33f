#!/usr/bin/env bash
# The GPU check: one command, under 5 minutes on one GPU.
#
#   1. the trainer's device tests (tests/enclave/test_trainer_device.py): on CUDA they check
#      that the GPU trains what the CPU trains (plain and every DP mode), that a checkpoint
#      holds CPU tensors and resumes, that no gradient comes back to the host during a DP
#      step, and that a release names the GPU it trained on;
#   2. the training benchmark with --device cuda: plain PyTorch (data on the GPU) vs cctrain
#      without DP vs cctrain DP per gradient mode, each a ratio to the plain loop measured in
#      the same run.
#
#   benchmarks/gpu_check.sh             on CUDA (exit 1 when this machine has none)
#   benchmarks/gpu_check.sh --dry-run   the same script on the CPU, tiny sizes, in seconds: the
#                                       tests are only collected, the benchmark runs one tiny
#                                       workload (CI runs it so the GPU's command cannot rot)
#
# It sets nothing up: it runs the project's virtual environment ($CCTRAIN_VENV, default .venv,
# which ./dev setup makes), or $PYTHON. Results go as JSON to
# ${GPU_CHECK_OUT:-${TMPDIR:-/tmp}/gpu_check.json}, never over the committed results.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CCTRAIN_VENV:-.venv}
if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ -x "$VENV/bin/python" ]]; then
  PY=$VENV/bin/python
else
  echo "gpu_check: no virtual environment at $VENV: run ./dev setup first (or set PYTHON)" >&2
  exit 2
fi
OUT=${GPU_CHECK_OUT:-${TMPDIR:-/tmp}/gpu_check.json}
TESTS=tests/enclave/test_trainer_device.py

case "${1:-}" in
  --dry-run)
    [[ $# -eq 1 ]] || { echo "usage: benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2; }
    echo "gpu_check: DRY RUN on the CPU (tiny sizes; the ratios mean nothing here)"
    echo "gpu_check: [1/2] device tests: collected only"
    "$PY" -m pytest -q -p no:cacheprovider --collect-only "$TESTS" | tail -n 1
    echo "gpu_check: [2/2] training benchmark"
    exec "$PY" benchmarks/bench_training.py --tiny --repeats 1 --batch-size 64 --device cpu \
      --json "$OUT" ;;
  "") ;;
  *)
    echo "usage: benchmarks/gpu_check.sh [--dry-run]" >&2
    exit 2 ;;
esac

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  "$PY" -c 'import torch
why = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, but it sees no GPU"
print(f"gpu_check: no CUDA device here: torch {torch.__version__} is {why}; --dry-run runs on the CPU")' >&2
  exit 1
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__, "cuda", torch.version.cuda)'
echo "gpu_check: [1/2] device tests on CUDA"
"$PY" -m pytest -q -p no:cacheprovider "$TESTS"
echo "gpu_check: [2/2] training benchmark on CUDA"
exec "$PY" benchmarks/bench_training.py --quick --repeats 2 --threads 4 --device cuda --json "$OUT"
