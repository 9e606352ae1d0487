"""Paper §3.3: replace the TMAs at y6 (or y7, the paper's contrast) by the tensor mean or zero, at run time.

A massive activation depends on the input, so it cannot be folded into the weights: at every
forward pass a hook (arch.runtime) finds the elements of the tapped tensor that pass the MA rule
(|a| > abs_threshold and > ratio x median |a| of that sample's tensor) on the planned channels and
replaces them. A checkpoint cannot carry it: `smoothing_plan.json` lists it and `load_model`
re-attaches it. Lossy on some models (the report shows by how much).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field

from ...detect import Analysis, MassiveRule
from ...schema import Config
from ..plan import Channel, Fill, Layer, PlanItem, Point, Positive
from ..registry import Intervention, register_intervention

POINTS = {"down_input": "massive_point", "down_output": "mlp_out_point"}  # y6 (y4 for GPT-2) | y7 (y5)


class RemoveMassiveConfig(Config):
    enabled: bool = False
    replace_with: Literal["mean", "zero"] = "mean"
    at: Literal["down_input", "down_output"] = "down_input"  # y6 (paper) | y7 (the paper's contrast)
    channels: Literal["detected", "all"] = "detected"  # detected: the channels seen in calibration
    layers: tuple[Annotated[int, Field(ge=0)], ...] | None = None  # None: every layer with TMAs there


@dataclass(frozen=True)
class MassiveRemoval:
    """The runtime op: y -> y with the massive elements of `channels` replaced, per sample."""
    layer: int
    point: str  # y6 (paper) or y7 (the Table 2 contrast)
    channels: tuple[int, ...] | None  # None: any channel
    replace_with: str  # mean | zero
    abs_threshold: float = MassiveRule.model_fields["abs_threshold"].default  # the paper's rule, defined once
    ratio: float = MassiveRule.model_fields["ratio"].default

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return remove_massive(y, self)


def remove_massive(y: torch.Tensor, op: MassiveRemoval) -> torch.Tensor:
    """y: [B, T, C] (or [T, C]) -> same with the massive elements replaced, per sample."""
    x = y if y.dim() == 3 else y.reshape(1, -1, y.shape[-1])
    flat = x.detach().abs().reshape(x.shape[0], -1).float()  # [B, T*C]
    median = flat.kthvalue((flat.shape[1] + 1) // 2, dim=1).values  # [B]
    mask = (x.abs() > op.abs_threshold) & (x.abs() > op.ratio * median.to(x.dtype)[:, None, None])
    if op.channels is not None:
        keep = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
        keep[list(op.channels)] = True
        mask &= keep
    if not mask.any():
        return y
    fill = x.mean(dim=(1, 2), keepdim=True) if op.replace_with == "mean" else torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(mask, fill.to(x.dtype), x).reshape(y.shape)


@dataclass
class RemoveMassive(PlanItem):
    """Paper §3.3: replace the TMAs at `point` (y6) by the tensor mean or zero, at run time."""
    kind: ClassVar[str] = "remove_massive"
    exact: ClassVar[bool] = False
    foldable: ClassVar[bool] = False
    layer: Layer
    point: Point
    channels: list[Channel] | None
    replace_with: Fill
    abs_threshold: Positive = MassiveRule.model_fields["abs_threshold"].default
    ratio: Positive = MassiveRule.model_fields["ratio"].default
    reason: str = ""

    def runtime_op(self) -> MassiveRemoval:
        return MassiveRemoval(self.layer, self.point, None if self.channels is None else tuple(self.channels),
                              self.replace_with, self.abs_threshold, self.ratio)


def massive_removals(analysis: Analysis, cfg: RemoveMassiveConfig) -> tuple[list[RemoveMassive], list[str]]:
    adapter = analysis.result.adapter
    point = getattr(adapter, POINTS[cfg.at])
    rule = analysis.config.massive
    by_layer: dict[int, set[int]] = {}
    for a in analysis.massive:
        if a.point == point and a.kind == "TMA":
            by_layer.setdefault(a.layer, set()).add(a.channel)
    notes = []
    chosen = set(by_layer) if cfg.layers is None else set(cfg.layers) & set(by_layer)
    if cfg.layers is not None:  # a cancelling TMA left alone would write an uncancelled MA into the stream
        for c in analysis.cancellations():
            if c["cancels"]["layer"] in chosen and c["layer"] in by_layer and c["layer"] not in chosen:
                chosen.add(c["layer"])
                notes.append(f"layer {c['layer']} added: its TMA cancels the family created at layer "
                             f"{c['cancels']['layer']} ({c['carried']} + {c['written']} in channel {c['channel']})")
    out = []
    for layer in sorted(chosen):
        channels = sorted(by_layer[layer]) if cfg.channels == "detected" else None
        out.append(RemoveMassive(layer, point, channels, cfg.replace_with, rule.abs_threshold, rule.ratio,
                                 reason=f"TMAs at {point} of layer {layer}, channels {sorted(by_layer[layer])}"))
    return out, notes


def _plan(ctx, cfg: RemoveMassiveConfig) -> None:
    items, notes = massive_removals(ctx.analysis, cfg)
    ctx.plan.interventions += items
    ctx.plan.notes += notes


def _describe(cfg: RemoveMassiveConfig) -> list[str]:
    return [f"remove TMAs at {cfg.at} -> {cfg.replace_with} (lossy)"]


REMOVE_MASSIVE = register_intervention(Intervention(
    name="remove_massive", config=RemoveMassiveConfig, items=(RemoveMassive,), plan=_plan, describe=_describe,
    order=10))
