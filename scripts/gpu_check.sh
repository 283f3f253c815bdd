#!/usr/bin/env bash
# The GPU checks of issue 24, for a machine with an NVIDIA GPU, in a clone after `make install`:
#
#   scripts/gpu_check.sh | tee benchmarks/gpu_check.txt
#
# 1. FastLSTM on a GPU falls back to Keras's cuDNN kernel, with outputs equal to its CPU fast path;
# 2. training.strategy=mirrored trains; 3. training.mixed_precision=true trains;
# 4. a default epoch timed with model.kernel=fast against model.kernel=keras (reported, not judged).
# Exit codes: 0 every check passed, or no GPU ("no GPU: skipped"); 1 a check failed;
# 3 a GPU is there but TensorFlow cannot use it (the line printed says the fix).
# PY=path/to/python picks another interpreter (default: .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu_check: no GPU: skipped (nvidia-smi finds none)"
    exit 0
fi
nvidia-smi -L
exec "$PY" scripts/gpu_check.py "$@"
