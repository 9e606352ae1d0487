"""The smoothed float checkpoint: safetensors weights, config, tokenizer and smoothing_plan.json.

Weight-foldable interventions are in the weights, so any transformers loader reproduces them.
Runtime ones (TMA removal) are listed in the plan; `smooth_then_quant.load_model(folder)`
re-attaches them. Writes go to a temporary folder renamed when complete.
"""
from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ..io import atomic_output_dir
from ..smooth.plan import SmoothingPlan

log = logging.getLogger(__name__)
PLAN_FILE = "smoothing_plan.json"


def save_smoothed(model: nn.Module, tokenizer, plan: SmoothingPlan, folder: Path) -> Path:
    """Write into an existing (temporary) folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    plan.save(folder / PLAN_FILE)
    runtime = plan.runtime()
    if runtime:
        log.info("%d runtime interventions are in %s; load the folder with smooth_then_quant.load_model to "
                 "re-attach them (a plain from_pretrained would not)", len(runtime), PLAN_FILE)
    return folder


def export_smoothed(model: nn.Module, tokenizer, plan: SmoothingPlan, path: str | Path,
                    overwrite: bool = False) -> Path:
    """Atomic export to `path` (refused if it exists and is not empty, unless overwrite)."""
    path = Path(path)
    with atomic_output_dir(path, overwrite) as tmp:
        save_smoothed(model, tokenizer, plan, tmp)
    return path
