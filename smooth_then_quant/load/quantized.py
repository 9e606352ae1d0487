"""Load a GPTQ-format checkpoint (ours, or any symmetric GPTQ v1 one, e.g. GPTQModel's) into a
float model whose projections hold the dequantized weights and carry their grids.

Why not `from_pretrained`: transformers runs GPTQ checkpoints through GPTQModel's kernels, which
on CPU compute in float16/bfloat16 and load every other tensor in that dtype too. Our fake
quantization is float32; to reproduce a reported perplexity exactly the integers and scales are
unpacked here (the tests check the result against GPTQModel's own dequantization).
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..arch import adapter_for
from ..errors import SmoothQuantError
from ..quantize.fake import attach_act_quant_, weight_view
from ..quantize.grid import GRID_ATTR, natural_g_idx
from ..quantize.rtn import ActQuant

log = logging.getLogger(__name__)


def gptq_settings(config) -> tuple[int, int, bool] | None:
    """(bits, group_size, sym) when config describes a GPTQ checkpoint (unpacked here); None for any
    other checkpoint (float, or another quantization transformers loads itself)."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    if qc.get("quant_method") != "gptq":
        return None
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    if fmt != "gptq" or qc.get("bits") not in (2, 4, 8) or not qc.get("sym", True):
        raise SmoothQuantError(f"GPTQ checkpoint with format {fmt}, bits {qc.get('bits')}, sym {qc.get('sym')}: only "
                               "symmetric v1 (format gptq) with 2, 4 or 8 bits is unpacked here; load it with "
                               "transformers directly.")
    return int(qc["bits"]), int(qc["group_size"]), True


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            tensors.update({k: st.get_tensor(k) for k in st.keys()})
    if not tensors:
        raise SmoothQuantError(f"{folder} has no .safetensors weights.")
    return tensors


@torch.no_grad()
def load_gptq_projections_(model: nn.Module, tensors: dict[str, torch.Tensor], bits: int, group_size: int,
                           sym: bool, source: str = "checkpoint") -> None:
    """Every projection of `model` from its GPTQ tensors (popped from `tensors`): dequantized
    float weights, float16-exact biases, and the grid."""
    from ..export.gptq_format import from_gptq_tensors

    for name, m in adapter_for(model).named_projections(model):
        parts = {k: tensors.pop(f"{name}.{k}") for k in ("qweight", "qzeros", "scales", "g_idx", "bias")
                 if f"{name}.{k}" in tensors}
        if "qweight" not in parts:
            raise SmoothQuantError(f"{source}: projection {name} has no qweight; not a GPTQ checkpoint of this model.")
        if "g_idx" not in parts:  # older checkpoints without act order omit it
            parts["g_idx"] = natural_g_idx(weight_view(m).shape[1], group_size)
        w, grid = from_gptq_tensors(parts, bits, group_size, sym)
        weight_view(m).copy_(w.to(m.weight.dtype))
        if "bias" in parts:
            m.bias.copy_(parts["bias"].to(m.bias.dtype))
        setattr(m, GRID_ATTR, grid)


@torch.no_grad()
def load_gptq_model(folder: Path, config, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    bits, group_size, sym = gptq_settings(config)
    cfg = copy.deepcopy(config)
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tensors = read_safetensors(folder)
    load_gptq_projections_(model, tensors, bits, group_size, sym, str(folder))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    projections = {n for n, _ in adapter_for(model).named_projections(model)}
    missing = [k for k in missing if k.rpartition(".")[0] not in projections and k != "lm_head.weight"]
    if missing or unexpected:
        raise SmoothQuantError(f"{folder}: weights do not match the config (missing {missing[:3]}, unexpected "
                               f"{unexpected[:3]}).")
    model.tie_weights()
    return model.to(dtype)


def reattach_act_quant_(model: nn.Module, folder: Path) -> dict:
    """A8 schemes: the exported activation quantizer (with its static ranges) back on the projections."""
    from ..export.quantized import ACT_FILE

    path = folder / ACT_FILE
    if not path.is_file():
        return {}
    d = json.loads(path.read_text(encoding="utf-8"))
    q = ActQuant(d["bits"], d["granularity"], d["symmetric"])
    ranges = None if d["ranges"] is None else {k: (torch.tensor(lo), torch.tensor(hi))
                                               for k, (lo, hi) in d["ranges"].items()}
    attach_act_quant_(model, q, ranges=ranges, progress=False)
    log.info("re-attached A%d %s activation quantization from %s", q.bits, q.granularity, path)
    return {"activation_quant": str(path)}
