"""The quantized checkpoint, with the exact integers and float16 scales the reported perplexity was
measured on, in one of two formats:

    gptq                GPTQ v1 (gptq_format.py): transformers + GPTQModel and vLLM load the weights
    compressed-tensors  (compressed_format.py): the weights AND the activation quantization, so vLLM
                        serves an A8 cell with int8 activations; transformers loads it too

    quantize_(model, Scheme("W4A16", GPTQConfig(4, 64)), ids)
    export_quantized(model, tokenizer, "smollm2-w4a16", plan=plan)                 # GPTQ
    export_quantized(model, tokenizer, "smollm2-w8a8", format="compressed-tensors")

Besides the GPTQ files the folder holds what the format cannot say, for our loader
(`smooth_then_quant.load_model(folder)`): `smoothing_plan.json` when runtime interventions (TMA
removal) must run, and `activation_quant.json` (bits, granularity, static ranges) for A8 schemes.
Other loaders run in their own precision; with GPTQ they run no activation quantization (the model
card says so).
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
from . import compressed_format as ct
from .gptq_format import check_packable, to_gptq_tensors

log = logging.getLogger(__name__)
ACT_FILE = "activation_quant.json"
WEIGHTS_FILE = "model.safetensors"
KERNEL_GROUP_SIZES = (-1, 16, 32, 64, 128, 256, 512, 1024)  # GPTQModel 7.7 TorchLinear's list
FORMATS = ("gptq", "compressed-tensors")


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


def quantization_config(model: nn.Module) -> dict:
    """The config.json `quantization_config` (GPTQ) of a model whose projections carry grids."""
    grids = uniform_grids(model)
    bits, group_size, sym = next((g.bits, g.group_size, g.symmetric) for g in grids.values())
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


def _float_tensors(model: nn.Module, skip: set[str]) -> dict[str, torch.Tensor]:
    """The model's tensors except `skip` (qualified names); tied copies once."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        if name in skip:
            continue
        if t.data_ptr() in seen:  # tied (lm_head = embed_tokens): transformers re-ties on load
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().contiguous()
    return out


@torch.no_grad()
def quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Float tensors of the model, with each projection replaced by its GPTQ tensors."""
    projections = dict(adapter_for(model).named_projections(model))
    out = _float_tensors(model, {f"{n}.{leaf}" for n in projections for leaf in ("weight", "bias")})
    for name, m in projections.items():
        grid, w = grid_of(m), weight_view(m)
        check_packable(name, grid, w.shape[0])
        for k, v in to_gptq_tensors(w, grid, getattr(m, "bias", None)).items():
            out[f"{name}.{k}"] = v
    return out


@torch.no_grad()
def compressed_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, quantization_config) in compressed-tensors format: float tensors of the model, each
    projection's weight replaced by its compressed tensors, plus input_scale for static A8."""
    projections = dict(adapter_for(model).named_projections(model))
    grids = uniform_grids(model)
    state = act_quant_state(model)
    act, ranges = state if state is not None else (None, None)
    scheme = ct.scheme_for(next(iter(grids.values())), act, ranges is not None)
    out = _float_tensors(model, {f"{n}.weight" for n in projections})
    for name, m in projections.items():
        if not isinstance(m, nn.Linear):  # the scheme targets nn.Linear (GPT-2's Conv1D is not one)
            raise SmoothQuantError(f"{name} is a {type(m).__name__}, not an nn.Linear: compressed-tensors targets "
                                   "Linear layers; export this model with format: gptq.")
        ct.check_grid(name, grids[name], m.in_features)
        out.update({f"{name}.{k}": v for k, v in ct.weight_tensors(m.weight, grids[name], scheme).items()})
        if act is not None and ranges is not None and act.granularity == "per_tensor":
            out.update({f"{name}.{k}": v for k, v in ct.input_tensors(act, *ranges[name]).items()})
    if act is not None and act.granularity == "per_tensor" and scheme.weights.num_bits < 8:
        log.warning("W%dA%d with per-tensor activations: vLLM (0.32) has no kernel for it (its W4A8 needs per-token "
                    "dynamic activations); transformers and smooth_then_quant load it", scheme.weights.num_bits,
                    act.bits)
    return out, ct.quantization_config(scheme, ct.ignored_linears(model, set(projections)))


def save_quantized(model: nn.Module, tokenizer, folder: Path, plan=None, format: str = "gptq") -> Path:
    """Write into an existing (temporary) folder."""
    if format not in FORMATS:
        raise SmoothQuantError(f"unknown quantized export format '{format}'; use one of {', '.join(FORMATS)}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ops = runtime_ops(model)
    if ops and plan is None:
        raise SmoothQuantError(f"the model runs {len(ops)} runtime interventions (TMA removal): pass its smoothing plan "
                               "(export_quantized(..., plan=plan)) so the checkpoint can restore them.")
    if format == "gptq":
        qc = quantization_config(model)
        tensors = quantized_state_dict(model)
    else:
        tensors, qc = compressed_state_dict(model)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    config.quantization_config = qc
    config.save_pretrained(folder)
    if format == "gptq":
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
        if format == "gptq":
            log.info("A%d activation quantization is in %s: smooth_then_quant.load_model re-attaches it; other "
                     "loaders run the weights without it (format compressed-tensors carries it)", q.bits, ACT_FILE)
    return folder


def export_quantized(model: nn.Module, tokenizer, path: str | Path, plan=None, overwrite: bool = False,
                     format: str = "gptq") -> Path:
    """Atomic export of a quantized model to `path` (refused if it exists and is not empty, unless overwrite)."""
    path = Path(path)
    with atomic_output_dir(path, overwrite) as tmp:
        save_quantized(model, tokenizer, tmp, plan, format)
    return path
