"""The quantized checkpoint, with the exact integers and float16 scales the reported perplexity was
measured on, in any registered format (export/formats/):

    gptq                GPTQ v1: transformers + GPTQModel and vLLM load the weights
    compressed-tensors  the weights AND the activation quantization, so vLLM serves an A8 cell with
                        int8 activations; transformers loads it too

    quantize_(model, Scheme("W4A16", GPTQConfig(4, 64)), ids)
    export_quantized(model, tokenizer, "smollm2-w4a16", plan=plan)                 # GPTQ
    export_quantized(model, tokenizer, "smollm2-w8a8", format="compressed-tensors")

Besides the format's files the folder holds what a format cannot say, for our loader
(`smooth_then_quant.load_model(folder)`): `smoothing_plan.json` when runtime interventions (TMA
removal) must run, and `activation_quant.json` (bits, granularity, static ranges) for A8 schemes.
Other loaders run in their own precision; with GPTQ they run no activation quantization (the model
card says so).
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..arch import runtime_ops
from ..errors import SmoothQuantError
from ..io import atomic_output_dir
from ..quantize.fake import act_quant_state
from .checkpoint import PLAN_FILE
from .formats import ExportFormat, get_format

log = logging.getLogger(__name__)
ACT_FILE = "activation_quant.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class QuantizedCheckpoint:
    """Everything a quantized export writes, taken from the model (nothing written yet): the run takes it
    at its table cell and writes it in the export stage, after the model it came from is gone."""
    format: ExportFormat
    tensors: dict[str, torch.Tensor]
    config: object  # the model's config, with quantization_config set
    generation_config: object | None
    act_quant: dict | None  # activation_quant.json
    plan: object | None  # SmoothingPlan


def quantized_checkpoint(model: nn.Module, plan=None, format: str = "gptq") -> QuantizedCheckpoint:
    fmt = get_format(format)
    ops = runtime_ops(model)
    if ops and plan is None:
        raise SmoothQuantError(f"the model runs {len(ops)} runtime interventions (TMA removal): pass its smoothing plan "
                               "(export_quantized(..., plan=plan)) so the checkpoint can restore them.")
    tensors, qc = fmt.state_dict(model)
    config = copy.deepcopy(model.config)
    config.quantization_config = qc
    state = act_quant_state(model)
    act = None
    if state is not None:
        q, ranges = state
        act = {"bits": q.bits, "granularity": q.granularity, "symmetric": q.symmetric,
               "ranges": None if ranges is None else {k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()}}
    return QuantizedCheckpoint(fmt, tensors, config, getattr(model, "generation_config", None), act, plan)


def write_quantized(ckpt: QuantizedCheckpoint, tokenizer, folder: Path) -> Path:
    """Write into an existing (temporary) folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(ckpt.tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    ckpt.config.save_pretrained(folder)
    qc = ckpt.config.quantization_config
    for name, text in (ckpt.format.extra_files(qc) if ckpt.format.extra_files else {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    if ckpt.generation_config is not None:
        ckpt.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if ckpt.plan is not None:
        ckpt.plan.save(folder / PLAN_FILE)
    if ckpt.act_quant is not None:
        (folder / ACT_FILE).write_text(json.dumps(ckpt.act_quant, indent=1), encoding="utf-8")
        if ckpt.format.act_quant is None:
            log.info("A%d activation quantization is in %s: smooth_then_quant.load_model re-attaches it; other "
                     "loaders run the weights without it (format compressed-tensors carries it)",
                     ckpt.act_quant["bits"], ACT_FILE)
    return folder


def save_quantized(model: nn.Module, tokenizer, folder: Path, plan=None, format: str = "gptq") -> Path:
    """Write into an existing (temporary) folder."""
    return write_quantized(quantized_checkpoint(model, plan, format), tokenizer, folder)


def export_quantized(model: nn.Module, tokenizer, path: str | Path, plan=None, overwrite: bool = False,
                     format: str = "gptq") -> Path:
    """Atomic export of a quantized model to `path` (refused if it exists and is not empty, unless overwrite)."""
    path = Path(path)
    ckpt = quantized_checkpoint(model, plan, format)  # refusals (format limits) before any folder is made
    with atomic_output_dir(path, overwrite) as tmp:
        write_quantized(ckpt, tokenizer, tmp)
    return path
