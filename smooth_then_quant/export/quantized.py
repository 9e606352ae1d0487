"""The quantized checkpoint, with the exact integers and float16 scales the reported perplexity was
measured on, in any registered format (export/formats/):

    gptq                GPTQ v1: transformers + GPTQModel and vLLM load the weights
    compressed-tensors  the weights AND the activation quantization, so vLLM serves an A8 cell with
                        int8 activations; transformers loads it too

    quantize_(model, Scheme("W4A16", GPTQWeights(4, 64)), ids)     # resident or streamed
    export_quantized(model, tokenizer, "smollm2-w4a16", plan=plan)                 # GPTQ
    export_quantized(model, tokenizer, "smollm2-w8a8", format="compressed-tensors")

Besides the format's files the folder holds what a format cannot say, for our loader
(`smooth_then_quant.load_model(folder)`): `smoothing_plan.json` when runtime interventions (TMA
removal) must run, and `activation_quant.json` (bits, granularity, static ranges) for A8 schemes.
Other loaders run in their own precision; with GPTQ they run no activation quantization (the model
card says so).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from ..arch import runtime_ops
from ..errors import SmoothQuantError
from ..io import weights_digest
from ..output import OutputDir, check_output_path, model_folders
from ..quantize.fake import act_quant_state
from .card import api_card
from .checkpoint import MAX_SHARD_BYTES, PLAN_FILE, save_config
from .formats import ExportFormat, get_format
from .formats.common import model_tensors, uniform_grids, write_weights

log = logging.getLogger(__name__)
ACT_FILE = "activation_quant.json"


def check_quantized(model: nn.Module, plan=None, format: str = "gptq") -> tuple[ExportFormat, dict]:
    """What the format refuses, before any file is written -> (format, quantization_config)."""
    fmt = get_format(format)
    ops = runtime_ops(model)
    if ops and plan is None:
        raise SmoothQuantError(f"the model runs {len(ops)} runtime interventions (TMA removal): pass its smoothing plan "
                               "(export_quantized(..., plan=plan)) so the checkpoint can restore them.")
    return fmt, fmt.quantization_config(model)


def save_quantized(model: nn.Module, tokenizer, folder: Path, plan=None, format: str = "gptq",
                   max_shard_size: int = MAX_SHARD_BYTES) -> Path:
    """Write into an existing (temporary) folder, layer by layer (a streamed model is never whole)."""
    fmt, qc = check_quantized(model, plan, format)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(model_tensors(model, fmt.replaces, lambda n, m: fmt.projection_tensors(model, n, m, qc)), folder,
                  max_shard_size)
    save_config(model, folder, quantization_config=qc)
    for name, text in (fmt.extra_files(qc) if fmt.extra_files else {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    bound = weights_digest(folder)  # the plan and the A8 ranges are bound to these weights
    if plan is not None:
        plan.save(folder / PLAN_FILE, weights=bound)
    state = act_quant_state(model)
    if state is not None:
        q, ranges = state
        act = {"bits": q.bits, "granularity": q.granularity, "symmetric": q.symmetric,
               "ranges": None if ranges is None else {k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()},
               "weights_sha256": bound}
        (folder / ACT_FILE).write_text(json.dumps(act, indent=1), encoding="utf-8")
        if fmt.act_quant is None:
            log.info("A%d activation quantization is in %s: smooth_then_quant.load_model re-attaches it; other "
                     "loaders run the weights without it (format compressed-tensors carries it)", q.bits, ACT_FILE)
    api_card(folder, model, kind="quantized", plan=plan, scheme=carried_scheme(model), fmt=fmt)  # a run replaces it
    return folder


def carried_scheme(model: nn.Module) -> dict:
    """The scheme the quantized model carries (its grids and A8 quantizer), as Scheme.to_dict() gives it."""
    g = next(iter(uniform_grids(model).values()))
    state = act_quant_state(model)
    w = {"bits": g.bits, "group_size": g.group_size, "symmetric": g.symmetric}
    a = None if state is None else state[0].model_dump()
    name = f"W{g.bits}A{a['bits'] if a else 16}" + ("-static" if a and state[0].kind.static else "")
    text = (f"int{g.bits} weights " + ("per output channel" if g.group_size == -1 else f"in groups of {g.group_size}")
            + (", symmetric" if g.symmetric else ", asymmetric") + (f", {state[0].describe()} activations" if a else
                                                                   ", 16-bit activations"))
    return {"name": name, "weights": w, "activations": a, "description": text}


def export_quantized(model: nn.Module, tokenizer, path: str | Path, plan=None, overwrite: bool = False,
                     format: str = "gptq", max_shard_size: int = MAX_SHARD_BYTES) -> Path:
    """Atomic export of a quantized model to `path` (refused if it exists and is not empty, unless overwrite)."""
    target = check_output_path(path, overwrite, protect=model_folders(model))
    check_quantized(model, plan, format)  # refusals (format limits) before any folder is made
    with OutputDir(target, overwrite) as out:
        save_quantized(model, tokenizer, out.tmp, plan, format, max_shard_size)
    return out.final
