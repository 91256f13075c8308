#!/usr/bin/env bash
# The GPU check: what a CPU-only machine cannot test, in one run of under 5 minutes on an NVIDIA GPU.
#
#   bash benchmarks/gpu_check.sh                          # from the repository root, on the GPU machine
#   GPU_CHECK_ALLOW_CPU=1 bash benchmarks/gpu_check.sh    # without CUDA: runs the rest, "no CUDA: skipped"
#
# Python: $PYTHON, else the project's .venv/bin/python, else python3 (leakhunter installed in it; nothing is
# downloaded). Also: GPU_CHECK_FILES (200 10-s files for the throughput table), GPU_CHECK_WORKERS (passed to
# leak predict --workers), GPU_CHECK_WORKDIR (default: a new temporary folder, kept for inspection).
# Prints: environment (nvidia-smi, torch, onnxruntime), golden-set parity CPU vs GPU for torch fp32 / AMP and
# onnxruntime's CUDA provider (max |ΔP(LEAK)|, verdict flips), the front-end's precision on the GPU, DDP on 2
# GPUs, and x real time of leak predict on CPU vs GPU. Exit: 0 passed, 1 failed, 2 no CUDA, 3 incomplete.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import leakhunter, torch, onnxruntime" 2>/dev/null; then
    echo "gpu_check: $PYTHON cannot import leakhunter, torch and onnxruntime; install the project in it first" \
         "(make setup; then pip uninstall -y onnxruntime && pip install '.[gpu]' for the GPU build) or point PYTHON at an" \
         "environment that has it" >&2
    exit 2
fi

echo "== nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null \
        || nvidia-smi || echo "nvidia-smi failed (exit $?)"
else
    echo "nvidia-smi: not found"
fi

export PYTHONUNBUFFERED=1
exec "$PYTHON" benchmarks/gpu_check.py
