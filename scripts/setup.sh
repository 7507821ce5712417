#!/usr/bin/env bash
# Install hyperlab into the active Python environment: `scripts/setup.sh` for a user, `--dev` also for the
# tests. PyTorch comes first: the CPU build on a Linux machine without an NVIDIA GPU (PyPI's default
# there is a CUDA build of several GB), PyPI's own elsewhere (macOS; machines with a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TORCH="torch==2.13.0"
if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.'))" 2>/dev/null; then
    if [[ "$(uname -s)" == Linux ]] && ! command -v nvidia-smi >/dev/null; then
        # PyTorch's CPU index as an extra one: its 2.13.0+cpu outranks PyPI's CUDA build of that version
        "$PYTHON" -m pip install "$TORCH" --extra-index-url https://download.pytorch.org/whl/cpu --retries 1 --timeout 20
    else
        "$PYTHON" -m pip install "$TORCH"
    fi
fi
if [[ "${1:-}" == --dev ]]; then
    "$PYTHON" -m pip install -e ".[dev]"
else
    "$PYTHON" -m pip install -e .
fi
