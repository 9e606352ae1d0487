"""The quantized checkpoint: GPTQ format (see gptq_format.py) that transformers + GPTQModel and
vLLM load, with the exact integers and float16 scales the reported perplexity was measured on.

    quantize_(model, Scheme("W4A16", GPTQConfig(4, 64)), ids)
    export_quantized(model, tokenizer, "smollm2-w4a16", plan=plan)

Besides the GPTQ files the folder holds what the format cannot say, for our loader
(`smooth_then_quant.load_model(folder)`): `smoothing_plan.json` when runtime interventions (TMA
removal) must run, and `activation_quant.json` (bits, granularity, static ranges) for A8 schemes.
Other loaders run the weights in their own precision (transformers on CPU: bfloat16) and without
activation quantization; the model card says so.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .. import __version__
from ..arch import adapter_for
from ..errors import SmoothQuantError
from ..quantize.fake import act_quant_state, weight_view
from ..quantize.grid import grid_of
from ..report.output import atomic_output_dir
from ..smooth.runtime import runtime_ops
from .checkpoint import PLAN_FILE
from .gptq_format import check_packable, to_gptq_tensors

log = logging.getLogger(__name__)
ACT_FILE = "activation_quant.json"
WEIGHTS_FILE = "model.safetensors"
KERNEL_GROUP_SIZES = (-1, 16, 32, 64, 128, 256, 512, 1024)  # GPTQModel 7.7 TorchLinear's list


def quantization_config(model: nn.Module) -> dict:
    """The config.json `quantization_config` of a model whose projections carry grids."""
    grids = {name: grid_of(m) for name, m in adapter_for(model).named_projections(model)}
    missing = [n for n, g in grids.items() if g is None]
    if missing:
        raise SmoothQuantError(f"{len(missing)} projections (e.g. {missing[0]}) are not quantized: export_quantized "
                               "needs a model quantized with quantize_ / gptq_ / rtn_weights_ first.")
    kinds = {(g.bits, g.group_size, g.symmetric) for g in grids.values()}
    if len(kinds) > 1:
        raise SmoothQuantError(f"projections are quantized with different settings {sorted(kinds)}; a GPTQ checkpoint "
                               "has one bits / group_size / sym for the whole model.")
    bits, group_size, sym = kinds.pop()
    if group_size not in KERNEL_GROUP_SIZES:
        log.warning("group_size %d: GPTQModel's kernels (which transformers uses) and vLLM accept only %s; our loader "
                    "reads it, theirs will refuse it", group_size, KERNEL_GROUP_SIZES)
    uneven = [n for n, m in adapter_for(model).named_projections(model)
              if group_size > 0 and weight_view(m).shape[1] % group_size]
    if uneven:
        log.warning("%d projections (e.g. %s) have a shorter last group (group_size %d does not divide their width): "
                    "our loader and GPTQModel's torch kernel read them; vLLM and GPTQModel's AVX512 kernel refuse "
                    "them. Use a group_size that divides every width (e.g. 64) for those.",
                    len(uneven), uneven[0], group_size)
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": sym,
            "desc_act": any(g.act_order for g in grids.values()), "checkpoint_format": "gptq", "format": "gptq",
            "pack_dtype": "int32", "lm_head": False, "meta": {"quantizer": [f"smooth-then-quant:{__version__}"]}}


@torch.no_grad()
def quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Float tensors of the model, with each projection replaced by its GPTQ tensors; tied copies once."""
    projections = dict(adapter_for(model).named_projections(model))
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        module, _, leaf = name.rpartition(".")
        if module in projections and leaf in ("weight", "bias"):
            continue
        if t.data_ptr() in seen:  # tied (lm_head = embed_tokens): transformers re-ties on load
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().contiguous()
    for name, m in projections.items():
        grid, w = grid_of(m), weight_view(m)
        check_packable(name, grid, w.shape[0])
        for k, v in to_gptq_tensors(w, grid, getattr(m, "bias", None)).items():
            out[f"{name}.{k}"] = v
    return out


def save_quantized(model: nn.Module, tokenizer, folder: Path, plan=None) -> Path:
    """Write into an existing (temporary) folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    qc = quantization_config(model)
    ops = runtime_ops(model)
    if ops and plan is None:
        raise SmoothQuantError(f"the model runs {len(ops)} runtime interventions (TMA removal): pass its smoothing plan "
                               "(export_quantized(..., plan=plan)) so the checkpoint can restore them.")
    save_file(quantized_state_dict(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    config.quantization_config = qc
    config.save_pretrained(folder)
    (folder / "quantize_config.json").write_text(json.dumps(qc, indent=1), encoding="utf-8")  # GPTQModel, vLLM
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if plan is not None:
        plan.save(folder / PLAN_FILE)
    state = act_quant_state(model)
    if state is not None:
        q, ranges = state
        (folder / ACT_FILE).write_text(json.dumps(
            {"bits": q.bits, "granularity": q.granularity, "symmetric": q.symmetric,
             "ranges": None if ranges is None else {k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()}},
            indent=1), encoding="utf-8")
        log.info("A%d activation quantization is in %s: smooth_then_quant.load_model re-attaches it; other loaders "
                 "run the weights without it", q.bits, ACT_FILE)
    return folder


def export_quantized(model: nn.Module, tokenizer, path: str | Path, plan=None, overwrite: bool = False) -> Path:
    """Atomic export of a quantized model to `path` (refused if it exists and is not empty, unless overwrite)."""
    path = Path(path)
    with atomic_output_dir(path, overwrite) as tmp:
        save_quantized(model, tokenizer, tmp, plan)
    return path
