"""Reading exports back: `load_model(folder)` on what export/ wrote (or a foreign checkpoint of a
registered format). Registered with the load stage, which knows nothing of formats (each
format's weight reader is registered by register_format, export/formats/__init__.py):

    smoothing_plan.json its runtime interventions (TMA removal) re-attached
    activation_quant.json / the format's own activation scheme: the A8 quantizer re-attached, after
                        the smoothing hooks so it sees the smoothed input
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..arch import attach_runtime_
from ..load import quantization_config, register_folder_hook
from ..quantize.fake import attach_act_quant_
from ..quantize.rtn import ActQuant
from ..smooth import SmoothingPlan
from .checkpoint import PLAN_FILE
from .formats import format_for_method
from .quantized import ACT_FILE

log = logging.getLogger(__name__)


def reattach_runtime_(model: nn.Module, folder: Path, config=None) -> dict:
    """A smoothed export lists its runtime interventions in smoothing_plan.json: attach them."""
    path = folder / PLAN_FILE
    if not path.is_file():
        return {}
    plan = SmoothingPlan.load(path)
    ops = plan.runtime()
    if ops:
        attach_runtime_(model, ops)
        log.info("re-attached %d runtime interventions from %s", len(ops), path)
    return {"smoothing_plan": str(path), "runtime_interventions": len(ops)}


def reattach_act_quant_(model: nn.Module, folder: Path, config=None) -> dict:
    """A8 schemes: the exported activation quantizer (with its static ranges) back on the projections:
    from our activation_quant.json (exact), else from the format's own description."""
    path = folder / ACT_FILE
    qc = quantization_config(config) if config is not None else {}
    fmt = format_for_method(qc.get("quant_method", ""))
    if path.is_file():
        d = json.loads(path.read_text(encoding="utf-8"))
        q = ActQuant(d["bits"], d["granularity"], d["symmetric"])
        ranges = None if d["ranges"] is None else {k: (torch.tensor(lo), torch.tensor(hi))
                                                   for k, (lo, hi) in d["ranges"].items()}
    elif fmt is not None and fmt.act_quant is not None and (found := fmt.act_quant(model, folder, qc)) is not None:
        (q, ranges), path = found, folder / "config.json"
    else:
        return {}
    attach_act_quant_(model, q, ranges=ranges, progress=False)
    log.info("re-attached A%d %s activation quantization from %s", q.bits, q.granularity, path)
    return {"activation_quant": str(path)}


register_folder_hook(reattach_runtime_, order=10, applies=lambda folder: (folder / PLAN_FILE).is_file())
register_folder_hook(reattach_act_quant_, order=20, applies=lambda folder: (folder / ACT_FILE).is_file())  # after the smoothing hooks: A8 sees the smoothed input
