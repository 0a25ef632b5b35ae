#!/usr/bin/env bash
# The device check, one short run on a machine with one CUDA GPU (about 6 minutes; sections and figures:
# benchmarks/gpu_check.py).  From the repository root, with the project's venv:
#   bash benchmarks/gpu_check.sh               # Janus-Pro-1B shapes (24 layers) and Show-o 256-px shapes, bf16
#   bash benchmarks/gpu_check.sh --cpu-smoke   # the same code on tiny models on the CPU (< 2 minutes)
# Writes $OUT/gpu_check.json and gpu_check.txt ($OUT unset: outputs/gpu_check/) and prints a table.
# Other options go to gpu_check.py (--sections, --selfplay-batches, --train-batches, --bandwidth-gbs, ...).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "gpu_check.sh: no Python at $PY (make setup, or PYTHON=/path/to/python)" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
exec "$PY" benchmarks/gpu_check.py "$@"
