"""The smoothed float checkpoint: safetensors weights, config, tokenizer and smoothing_plan.json.

Weight-foldable interventions are in the weights, so any transformers loader reproduces them.
Runtime ones (TMA removal) are listed in the plan; `smooth_then_quant.load_model(folder)`
re-attaches them. Writes go to a temporary folder renamed when complete.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

from torch import nn

from ..io import weights_digest
from ..output import OutputDir, check_output_path, model_folders
from ..smooth.plan import SmoothingPlan
from .card import api_card
from .formats.common import write_weights, model_tensors

log = logging.getLogger(__name__)
PLAN_FILE = "smoothing_plan.json"
MAX_SHARD_BYTES = 5 * 10**9  # transformers' save_pretrained default (5GB); export.max_shard_size


def save_config(model: nn.Module, folder: Path, **changes) -> None:
    """config.json (as save_pretrained writes it: the class in `architectures`) and generation_config.json."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    for k, v in changes.items():
        setattr(config, k, v)
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(folder)


def save_smoothed(model: nn.Module, tokenizer, plan: SmoothingPlan, folder: Path,
                  max_shard_size: int = MAX_SHARD_BYTES) -> Path:
    """Write into an existing (temporary) folder, layer by layer (a streamed model is never whole)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(model_tensors(model), folder, max_shard_size)
    save_config(model, folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    plan.save(folder / PLAN_FILE, weights=weights_digest(folder))  # bound to the weights just written
    runtime = plan.runtime()
    if runtime:
        log.info("%d runtime interventions are in %s; load the folder with smooth_then_quant.load_model to "
                 "re-attach them (a plain from_pretrained would not)", len(runtime), PLAN_FILE)
    api_card(folder, model, kind="smoothed", plan=plan)  # a recipe run replaces it with the report's card
    return folder


def export_smoothed(model: nn.Module, tokenizer, plan: SmoothingPlan, path: str | Path,
                    overwrite: bool = False, max_shard_size: int = MAX_SHARD_BYTES) -> Path:
    """Atomic export to `path` (refused if it exists and is not empty, unless overwrite)."""
    target = check_output_path(path, overwrite, protect=model_folders(model))
    with OutputDir(target, overwrite) as out:
        save_smoothed(model, tokenizer, plan, out.tmp, max_shard_size)
    return out.final
