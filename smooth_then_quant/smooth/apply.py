"""The one verb of the smoothing stage: apply a SmoothingPlan to a model, in place.

    smooth_(model, plan)

Weight-foldable items edit the weights (each item's apply_; on a streamed model each is replayed whenever its
layer is read); runtime ones are attached as hooks next to any already on the model (arch.runtime). Items run
in plan order.
"""
from __future__ import annotations

import copy
import logging

from torch import nn

from ..arch import ArchAdapter, adapter_for, attach_runtime_, detach_runtime_, runtime_ops, source_of
from ..errors import SmoothQuantError
from .plan import SmoothingPlan

log = logging.getLogger(__name__)


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
    src = source_of(model)
    for i in plan.interventions:
        if not i.foldable:
            continue
        li = getattr(i, "layer", 0)
        if src is None:
            i.apply_(layers[li], adapter)
        else:  # a streamed state: replayed whenever the layer is read
            src.add_edit(li, repr(i), lambda layer, i=i: i.apply_(layer, adapter))
    new = plan.runtime()
    if new:
        attach_runtime_(model, runtime_ops(model) + new)
    log.info("smoothing applied: %s", ", ".join(f"{r['count']} {r['kind']}" for r in plan.summary()) or "nothing")
    return model


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy with the runtime interventions attached to the copy too (a streamed model's copy is its
    skeleton and its list of edits: the checkpoint is shared)."""
    ops = detach_runtime_(model)
    try:
        twin = copy.deepcopy(model)
    finally:
        attach_runtime_(model, ops)
    attach_runtime_(twin, ops)
    return twin
