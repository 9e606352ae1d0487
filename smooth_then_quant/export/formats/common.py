"""What every quantized format shares: one grid per projection, the other tensors in float, and the
reload of a checkpoint into a float model whose projections hold the dequantized weights.

Why not `from_pretrained` for the reload: transformers runs GPTQ checkpoints through GPTQModel's
kernels, which on CPU compute in float16/bfloat16 and load every other tensor in that dtype too. Our
fake quantization is float32; to reproduce a reported perplexity exactly the integers and scales are
unpacked here (the tests check the result against GPTQModel's own dequantization).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ...arch import adapter_for
from ...errors import SmoothQuantError
from ...load import quantization_config, read_safetensors
from ...quantize.grid import grid_of


def uniform_grids(model: nn.Module) -> dict:
    """{projection: grid}; every projection quantized, all with one bits / group_size / sym."""
    grids = {name: grid_of(m) for name, m in adapter_for(model).named_projections(model)}
    missing = [n for n, g in grids.items() if g is None]
    if missing:
        raise SmoothQuantError(f"{len(missing)} projections (e.g. {missing[0]}) are not quantized: export_quantized "
                               "needs a model quantized with quantize_ / gptq_ / rtn_weights_ first.")
    kinds = {(g.bits, g.group_size, g.symmetric) for g in grids.values()}
    if len(kinds) > 1:
        raise SmoothQuantError(f"projections are quantized with different settings {sorted(kinds)}; a quantized "
                               "checkpoint has one bits / group_size / sym for the whole model.")
    return grids


def float_tensors(model: nn.Module, skip: set[str]) -> dict[str, torch.Tensor]:
    """The model's tensors except `skip` (qualified names); tied copies once."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if name in skip:
            continue
        if t.data_ptr() in seen:  # tied (lm_head = embed_tokens): transformers re-ties on load
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().cpu().contiguous()  # safetensors writes from the CPU
    return out


@torch.no_grad()
def load_quantized_model(fmt, folder: Path, config, dtype: torch.dtype) -> nn.Module:
    """A float model from `folder`, its projections unpacked by `fmt` (an ExportFormat)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tensors = read_safetensors(folder)
    fmt.load_projections(model, tensors, quantization_config(config), str(folder))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    projections = {n for n, _ in adapter_for(model).named_projections(model)}
    missing = [k for k in missing if k.rpartition(".")[0] not in projections and k != "lm_head.weight"]
    if missing or unexpected:
        raise SmoothQuantError(f"{folder}: weights do not match the config (missing {missing[:3]}, unexpected "
                               f"{unexpected[:3]}).")
    model.tie_weights()
    return model.to(dtype)
