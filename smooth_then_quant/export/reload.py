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
import math
from pathlib import Path

import torch
from torch import nn

from pydantic import ValidationError

from ..arch import attach_runtime_
from ..errors import SmoothQuantError
from ..io import check_bound
from ..load import quantization_config, register_folder_hook
from ..quantize.fake import attach_act_quant_
from ..quantize.rtn import GRANULARITIES, ActQuant
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
    raw = _read_json(path)
    check_bound(path, raw.get("weights_sha256") if isinstance(raw, dict) else None, folder)
    plan = SmoothingPlan.from_dict(raw, getattr(config or model.config, "num_hidden_layers", None),
                                   getattr(config or model.config, "model_type", None), source=str(path))
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
        q, ranges = read_act_quant(path, model, folder)
    elif fmt is not None and fmt.act_quant is not None and (found := fmt.act_quant(model, folder, qc)) is not None:
        (q, ranges), path = found, folder / "config.json"
    else:
        return {}
    attach_act_quant_(model, q, ranges=ranges, progress=False)
    log.info("re-attached A%d %s activation quantization from %s", q.bits, q.granularity, path)
    return {"activation_quant": str(path)}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise SmoothQuantError(f"{path} is not valid JSON ({' '.join(str(e).split())[:120]}).") from None


def read_act_quant(path: Path, model: nn.Module, folder: Path) -> tuple[ActQuant, dict | None]:
    """activation_quant.json, checked: bound to the folder's weights, a valid ActQuant, and for a static
    granularity one finite (lo <= hi) range per projection of the model, no other."""
    d = _read_json(path)
    if not isinstance(d, dict) or set(d) - {"bits", "granularity", "symmetric", "ranges", "weights_sha256"}:
        raise SmoothQuantError(f"{path}: expected the keys bits, granularity, symmetric, ranges, weights_sha256.")
    check_bound(path, d.get("weights_sha256"), folder)
    try:
        q = ActQuant.model_validate({k: d.get(k) for k in ("bits", "granularity", "symmetric")}, strict=True)
    except ValidationError as e:
        raise SmoothQuantError(f"{path}: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}"
                                                        for x in e.errors()[:3]) + ".") from None
    ranges = d.get("ranges")
    static = GRANULARITIES[q.granularity].static
    if ranges is None:
        if static:
            raise SmoothQuantError(f"{path}: granularity {q.granularity} is static and needs its calibrated ranges.")
        return q, None
    names = dict(model.named_modules())
    ok = isinstance(ranges, dict) and all(
        k in names and isinstance(v, list) and len(v) == 2 and all(type(x) in (int, float) and math.isfinite(x) for x in v)
        and v[0] <= v[1] for k, v in ranges.items())
    if not ok:
        raise SmoothQuantError(f"{path}: ranges must map this model's projections to finite [lo, hi] with lo <= hi.")
    return q, {k: (torch.tensor(float(lo)), torch.tensor(float(hi))) for k, (lo, hi) in ranges.items()}


register_folder_hook(reattach_runtime_, order=10, applies=lambda folder: (folder / PLAN_FILE).is_file())
register_folder_hook(reattach_act_quant_, order=20, applies=lambda folder: (folder / ACT_FILE).is_file())  # after the smoothing hooks: A8 sees the smoothed input
