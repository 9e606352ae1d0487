"""The one verb of the smoothing stage: apply a SmoothingPlan to a model, in place.

    smooth_(model, plan)

Weight-foldable interventions edit the weights; runtime ones (MassiveRemoval) are attached as
hooks next to any already on the model. Interventions run in plan order.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..arch import ArchAdapter, NormSite, adapter_for
from ..errors import SmoothQuantError
from .plan import SmoothingPlan
from .runtime import attach_runtime_, detach_runtime_, runtime_ops
from .transforms import flatten_gamma_, flatten_rows_, migrate_down_, migrate_norm_

log = logging.getLogger(__name__)


def site_of(adapter: ArchAdapter, name: str) -> NormSite:
    return {"attn": adapter.attn_norm, "mlp": adapter.mlp_norm}[name]


def _flatten_gamma(layer, adapter, i):
    flatten_gamma_(layer, site_of(adapter, i.site), i.channels, i.replace_with)


def _flatten_rows(layer, adapter, i):
    flatten_rows_(layer, adapter, adapter.projections()[i.point], i.rows)


def _migrate_norm(layer, adapter, i):
    migrate_norm_(layer, adapter, site_of(adapter, i.site), torch.tensor(i.scales))


def _migrate_down(layer, adapter, i):
    migrate_down_(layer, adapter, torch.tensor(i.scales))


def _repair(_layer, _adapter, _i):
    raise SmoothQuantError("this plan contains a LoRA repair, which is training and cannot be replayed from the plan; "
                           "load the exported checkpoint (its weights hold the merged repair) or drop the entry.")


WEIGHT_EDITS = {"flatten_gamma": _flatten_gamma, "flatten_rows": _flatten_rows, "migrate_norm": _migrate_norm,
                "migrate_down": _migrate_down, "repair": _repair}


def check_plan(model: nn.Module, plan: SmoothingPlan) -> ArchAdapter:
    adapter = adapter_for(model)
    if plan.model_type not in adapter.model_types:
        raise SmoothQuantError(f"the smoothing plan was made for model_type '{plan.model_type}', "
                               f"not this {model.config.model_type} model.")
    n = len(adapter.decoder_layers(model))
    bad = [i for i in plan.interventions if getattr(i, "layer", 0) >= n]
    if bad:
        raise SmoothQuantError(f"the smoothing plan names layer {bad[0].layer}, but the model has {n} layers.")
    return adapter


def smooth_(model: nn.Module, plan: SmoothingPlan) -> nn.Module:
    """Apply `plan` to `model` in place (weights edited, runtime hooks attached); returns model."""
    adapter = check_plan(model, plan)
    layers = adapter.decoder_layers(model)
    for i in plan.interventions:
        if i.foldable:
            WEIGHT_EDITS[i.kind](layers[getattr(i, "layer", 0)], adapter, i)
    new = plan.runtime()
    if new:
        attach_runtime_(model, runtime_ops(model) + new)
    log.info("smoothing applied: %s", ", ".join(f"{r['count']} {r['kind']}" for r in plan.summary()) or "nothing")
    return model


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy with the runtime interventions attached to the copy too."""
    ops = detach_runtime_(model)
    try:
        twin = copy.deepcopy(model)
    finally:
        attach_runtime_(model, ops)
    attach_runtime_(twin, ops)
    return twin
