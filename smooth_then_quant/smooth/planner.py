"""From analysis statistics to a SmoothingPlan.

    plan = plan_smoothing(model, analysis, SmoothingConfig(), calibration_ids)

Every active intervention (SmoothingConfig.active(), in registry order) adds its items to the plan.
Lossy edits come straight from the detectors (TMAs, γ outliers, OTCs). The exact migrations need
activations of the model *as it will be* after those edits, so they measure inside
`ctx.temporarily()`, which applies the plan so far and then restores every touched tensor and hook:
planning leaves the model unchanged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import adapter_for, attach_runtime_, runtime_ops, source_of
from ..arch.sequential import SOURCE_ATTR
from ..detect import Analysis
from .apply import smooth_
from .plan import SmoothingPlan
from .registry import SmoothingConfig


@dataclass
class PlanContext:
    """What a planner sees: the model (restored after planning), its analysis, the calibration
    windows [N, T], the batch size of calibration passes, and the plan so far."""
    model: nn.Module
    analysis: Analysis
    ids: torch.Tensor
    batch_size: int
    plan: SmoothingPlan

    def temporarily(self) -> _Temporarily:
        return _Temporarily(self.model, self.plan)


def plan_smoothing(model: nn.Module, analysis: Analysis, config: SmoothingConfig, input_ids: torch.Tensor,
                   batch_size: int = 4) -> SmoothingPlan:
    """Compute the plan; the model is returned to its state on entry."""
    ctx = PlanContext(model, analysis, input_ids, batch_size, SmoothingPlan(model.config.model_type))
    for iv in config.active():
        if iv.plan is not None:
            iv.plan(ctx, config.section(iv.name))
    return ctx.plan


class _Temporarily:
    """Apply a plan's interventions, then put every touched tensor and hook back."""

    def __init__(self, model: nn.Module, plan: SmoothingPlan):
        self.model, self.plan = model, plan

    def __enter__(self):
        adapter = adapter_for(self.model)
        layers = adapter.decoder_layers(self.model)
        self.saved, self.source = {}, source_of(self.model)
        if self.source is not None:  # a streamed model: its edits are a list, restored by keeping a copy
            setattr(self.model, SOURCE_ATTR, copy.deepcopy(self.source))
        else:
            for i in self.plan.interventions:
                if i.foldable:
                    for t in i.touched(adapter, layers[i.layer]):
                        self.saved.setdefault(id(t), (t, t.detach().clone()))
        self.ops = runtime_ops(self.model)
        smooth_(self.model, self.plan)
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for t, saved in self.saved.values():
                t.copy_(saved)
        if self.source is not None:
            setattr(self.model, SOURCE_ATTR, self.source)
        attach_runtime_(self.model, self.ops)
        return False
