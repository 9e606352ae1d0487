"""`format: gptq`: GPTQ v1 (`quant_method: gptq`), what transformers (through GPTQModel), GPTQModel
itself and vLLM load. The tensor layout is quantize/packing.py; this module is the checkpoint around it.

Written by hand rather than through GPTQModel's `pack`: that needs its kernel classes built per
module, refuses 2-core machines without an environment variable, and we already hold the integer
codes. The tests load our files with transformers/GPTQModel and compare.
"""
from __future__ import annotations

import json
import logging

import torch
from torch import nn

from ...arch import adapter_for
from ...quantize.fake import weight_view
from ...quantize.grid import grid_of
from ...quantize.packing import PACKABLE_BITS, check_packable, gptq_settings, load_gptq_projections_, to_gptq_tensors
from ...version import __version__
from . import ExportFormat, register_format
from .common import uniform_grids

log = logging.getLogger(__name__)
KERNEL_GROUP_SIZES = (-1, 16, 32, 64, 128, 256, 512, 1024)  # GPTQModel 7.7 TorchLinear's list


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


@torch.no_grad()
def projection_tensors(model: nn.Module, name: str, m: nn.Module, qc: dict) -> dict[str, torch.Tensor]:
    """qweight / qzeros / scales / g_idx (and bias) of one projection."""
    grid, w = grid_of(m).cpu(), weight_view(m).detach().cpu()
    check_packable(name, grid, w.shape[0])
    bias = getattr(m, "bias", None)
    return to_gptq_tensors(w, grid, None if bias is None else bias.detach().cpu())


def load_projections(model: nn.Module, tensors: dict[str, torch.Tensor], qc: dict, source: str) -> None:
    load_gptq_projections_(model, tensors, *gptq_settings(qc, source), source)


def refuses(scheme: dict) -> str | None:
    w = scheme["weights"]
    if w["bits"] not in PACKABLE_BITS:
        return (f"with {w['bits']}-bit weights: GPTQ format is written here for bits {PACKABLE_BITS}; quantize "
                "with bits 4 or 8 to export")
    if not w.get("symmetric", True):
        return ("with an asymmetric grid: GPTQ v1 stores zero - 1, so a zero point of 0 does not survive, and vLLM "
                "reads v1 only; set symmetric: true, or use format compressed-tensors")
    return None


def how_to_load(w: dict, a8: bool) -> list[str]:
    return ["Weights are in GPTQ format (v1, `quant_method: gptq`): transformers (with `gptqmodel` and "
            "`optimum` installed) and vLLM load them. Their kernels compute in their own precision (often "
            "float16/bfloat16), and some (vLLM's, GPTQModel's AVX512) need group_size to divide every input "
            "width." + (" Activations: this scheme quantizes them as well (`activation_quant.json`); only "
                        "smooth_then_quant's loader re-attaches that (export with format compressed-tensors for "
                        "vLLM's int8 activations)." if a8 else ""), "",
            "```python", "from smooth_then_quant import load_model  # exact float reproduction of the table",
            "loaded = load_model(\"path/to/this/folder\")", "",
            "from transformers import AutoModelForCausalLM, GPTQConfig  # GPTQModel kernels",
            "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")",
            f"# on CPU: ..., quantization_config=GPTQConfig(bits={w['bits']}, backend=\"torch\")", "",
            "from vllm import LLM  # its GPTQ kernels (checked on vLLM's CPU build)",
            "llm = LLM(\"path/to/this/folder\")", "```", ""]


GPTQ = register_format(ExportFormat(
    name="gptq", quant_method="gptq", quantization_config=quantization_config, projection_tensors=projection_tensors,
    load_projections=load_projections, refuses=refuses, how_to_load=how_to_load, replaces=("weight", "bias"),
    extra_files=lambda qc: {"quantize_config.json": json.dumps(qc, indent=1)}))  # GPTQModel and vLLM read it
