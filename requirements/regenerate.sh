#!/usr/bin/env bash
# Regenerates requirements/cpu.txt and requirements/gpu.txt: the fully pinned closure of the scoring install
# (pyproject's [project].dependencies), resolved in fresh Python 3.11 venvs, leakhunter itself dropped.
# gpu.txt resolves the same pins with onnxruntime swapped for onnxruntime-gpu==$ORT_GPU_VERSION (default: the
# cpu file's onnxruntime version; set it when that onnxruntime-gpu release does not exist on PyPI).
# Usage: requirements/regenerate.sh [python3.11]    Needs PyPI; writes nothing else in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python3.11}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

pinned_closure() {  # $1: venv folder; the rest: pip install arguments
    local venv="$1"; shift
    "$PYTHON" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
    "$venv/bin/pip" freeze --disable-pip-version-check | grep -viE '^leakhunter(==| @)' | LC_ALL=C sort --ignore-case
}

header() {  # $1: what the file is for
    cat <<HEADER
# $1
# The pinned (==) closure of leakhunter's scoring install ([project].dependencies of pyproject.toml), no torch.
# Regenerate both files with: $command
# (fresh Python 3.11 venvs, pip install of the project, pip freeze, leakhunter itself dropped). The Dockerfile
# installs this file before copying the source, then the project with --no-deps.
HEADER
}

cp -r pyproject.toml README.md leakhunter training inference export "$work/"  # keeps build/ out of the checkout
pinned_closure "$work/cpu" "$work" > "$work/cpu.txt"
ort_version="$(sed -n 's/^onnxruntime==//p' "$work/cpu.txt")"
gpu_version="${ORT_GPU_VERSION:-$ort_version}"
command="${ORT_GPU_VERSION:+ORT_GPU_VERSION=$ORT_GPU_VERSION }requirements/regenerate.sh"
if ! "$work/cpu/bin/pip" download --quiet --disable-pip-version-check --no-deps --dest "$work/probe" \
        "onnxruntime-gpu==$gpu_version" >/dev/null 2>&1; then
    echo "onnxruntime-gpu==$gpu_version is not on the index: rerun with ORT_GPU_VERSION=<the closest release>" >&2
    exit 1
fi
# The project's direct dependencies with onnxruntime swapped, held to the cpu pins where they overlap.
"$PYTHON" -c 'import re, tomllib, sys
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    print(sys.argv[1] if re.match(r"onnxruntime\b(?!-)", requirement) else requirement)' \
    "onnxruntime-gpu==$gpu_version" > "$work/gpu-direct.txt"
grep -v '^onnxruntime==' "$work/cpu.txt" > "$work/cpu-constraints.txt"
pinned_closure "$work/gpu" -r "$work/gpu-direct.txt" -c "$work/cpu-constraints.txt" > "$work/gpu.txt"

{ header "Image target cpu (onnxruntime $ort_version)."; cat "$work/cpu.txt"; } > requirements/cpu.txt
{ header "Image target gpu: onnxruntime-gpu $gpu_version instead of onnxruntime $ort_version (CUDA/cuDNN: see the Dockerfile)."
  cat "$work/gpu.txt"; } > requirements/gpu.txt
echo "wrote requirements/cpu.txt and requirements/gpu.txt (onnxruntime $ort_version, onnxruntime-gpu $gpu_version)"
