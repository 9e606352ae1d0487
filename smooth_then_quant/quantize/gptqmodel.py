"""GPTQ through GPTQModel (the reference backend; `quantization.gptq_backend: gptqmodel`).

    report = gptqmodel_(model, tokenizer, calibration_ids, GPTQWeights(4, 128), keep="out/gptq")

GPTQModel loads models from disk and cannot run a model right after `quantize()` (finished
layers are offloaded to meta tensors), so this wrapper: writes the (smoothed) float model to a
temporary folder, loads it with GPTQModel, re-attaches our runtime smoothing hooks (they follow
GPTQModel's module swaps, so they are active while it calibrates), quantizes, saves the GPTQ
checkpoint and reads its integers and scales back into `model` (dequantized float weights that
carry their grids, so `export_quantized` writes the same checkpoint). `keep` keeps GPTQModel's
own checkpoint folder as well.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..arch import attach_runtime_, runtime_ops
from ..extras import require
from ..load import read_safetensors
from .gptq import GPTQWeights
from .packing import load_gptq_projections_


def quantize_config(cfg: GPTQWeights):
    from gptqmodel import QuantizeConfig

    return QuantizeConfig(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.symmetric,
                          desc_act=cfg.act_order == "desc", act_group_aware=cfg.act_order == "group_aware",
                          damp_percent=cfg.damp, true_sequential=cfg.true_sequential)


def _import_gptqmodel():
    # GPTQModel stops with a ValueError on 2-core machines unless this is set (see README)
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(os.cpu_count() or 1, 2)))
    return require("gptqmodel", "gptq", "quantization.gptq_backend: gptqmodel (or set it to builtin)")


@torch.no_grad()
def gptqmodel_(model: nn.Module, tokenizer, ids: torch.Tensor, cfg: GPTQWeights, keep: str | Path | None = None,
               batch_size: int = 1) -> dict:
    """Quantize `model` in place (dequantized float weights) with GPTQModel. ids: [N, T]."""
    gm = _import_gptqmodel()
    ops = runtime_ops(model)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stq-gptqmodel-") as work:
        src, dst = Path(work) / "float", Path(work) / "gptq"
        model.save_pretrained(src, safe_serialization=True)  # hooks are not state: the float weights only
        tokenizer.save_pretrained(src)
        device = next(model.parameters()).device.type  # cpu here; cuda for GPU users
        qmodel = gm.GPTQModel.load(str(src), quantize_config(cfg), device=device)
        if ops:
            attach_runtime_(qmodel.model, ops)
        qmodel.quantize([{"input_ids": r[None], "attention_mask": torch.ones(1, r.numel(), dtype=torch.long)}
                         for r in ids], batch_size=batch_size)
        t_quant = time.perf_counter() - t0
        qmodel.save(str(dst))
        del qmodel
        load_gptq_projections_(model, read_safetensors(dst), cfg.bits, cfg.group_size, cfg.symmetric,
                               "GPTQModel's checkpoint")  # v1 on disk; the tests check it against its kernel
        if keep is not None:
            shutil.copytree(dst, keep, dirs_exist_ok=True)
    return {"backend": "gptqmodel", "quantize_seconds": round(t_quant, 1),
            "gptqmodel": gm.__version__ if hasattr(gm, "__version__") else "unknown",
            **({"checkpoint": str(keep)} if keep is not None else {})}
