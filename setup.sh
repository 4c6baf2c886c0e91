#!/usr/bin/env bash
# Install what nanopost needs on a fresh machine: CPU PyTorch when no torch is present (a plain
# `pip install torch` would pull gigabytes of CUDA packages), then tiktoken, numpy and pytest.
set -euo pipefail
PY=${PYTHON:-$(command -v python || command -v python3)}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet -r requirements.txt
