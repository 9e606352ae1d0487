"""The paper's lossy weight edits (§4.2-4.4, Table 3): γ outlier entries set to the γ mean (or zero),
and OTC rows of W_q/W_k/W_v set to their mean (pair it with the repair)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ...detect import Analysis
from ...schema import Config
from ..plan import Channel, Fill, Layer, PlanItem, Point, Site, params_of
from ..registry import Intervention, register_intervention
from ..transforms import flatten_gamma_, flatten_rows_, site_of


class FlattenGammaConfig(Config):
    enabled: bool = False
    replace_with: Literal["mean", "zero"] = "mean"


class FlattenOTCConfig(Config):
    enabled: bool = False


@dataclass
class FlattenGamma(PlanItem):
    """Paper §4.2/4.4: set the γ entries that make channel outliers to the γ mean (or zero)."""
    kind: ClassVar[str] = "flatten_gamma"
    exact: ClassVar[bool] = False
    foldable: ClassVar[bool] = True
    layer: Layer
    site: Site
    channels: list[Channel]
    replace_with: Fill
    reason: str = ""

    def apply_(self, layer, adapter) -> None:
        flatten_gamma_(layer, site_of(adapter, self.site), self.channels, self.replace_with)

    def touched(self, adapter, layer):
        return params_of(layer, site_of(adapter, self.site).norm)


@dataclass
class FlattenRows(PlanItem):
    """Paper §4.3 / Table 3: set rows (output channels) of a projection, e.g. OTCs, to their mean."""
    kind: ClassVar[str] = "flatten_rows"
    exact: ClassVar[bool] = False
    foldable: ClassVar[bool] = True
    layer: Layer
    point: Point  # the point the projection computes: x3/x4/x5, y3/y4, y7
    rows: list[Channel]
    reason: str = ""

    def apply_(self, layer, adapter) -> None:
        flatten_rows_(layer, adapter, adapter.projections()[self.point], self.rows)

    def touched(self, adapter, layer):
        return params_of(layer, adapter.projections()[self.point].module)


def gamma_flattenings(analysis: Analysis, cfg: FlattenGammaConfig) -> list[FlattenGamma]:
    adapter = analysis.result.adapter
    names = {adapter.attn_norm.output_point: "attn", adapter.mlp_norm.output_point: "mlp"}
    out = []
    for point, by_layer in analysis.gamma_outliers.items():
        for layer, g in sorted(by_layer.items()):
            out.append(FlattenGamma(layer, names[point], g["channels"], cfg.replace_with,
                                    reason=f"γ makes channel outliers {g['channels']} at {point} (γ = {g['gamma']}, "
                                           f"mean {g['gamma_mean']})"))
    return out


def otc_flattenings(analysis: Analysis) -> list[FlattenRows]:
    return [FlattenRows(layer, point, rows, reason=f"OTC rows of the projection computing {point}")
            for point, by_layer in analysis.otc.items() for layer, rows in sorted(by_layer.items())]


FLATTEN_GAMMA = register_intervention(Intervention(
    name="flatten_gamma", config=FlattenGammaConfig, items=(FlattenGamma,), order=20,
    plan=lambda ctx, cfg: ctx.plan.interventions.extend(gamma_flattenings(ctx.analysis, cfg)),
    describe=lambda cfg: [f"flatten gamma outliers -> {cfg.replace_with} (lossy)"]))

FLATTEN_OTC = register_intervention(Intervention(
    name="flatten_otc", config=FlattenOTCConfig, items=(FlattenRows,), order=30,
    plan=lambda ctx, cfg: ctx.plan.interventions.extend(otc_flattenings(ctx.analysis)),
    describe=lambda cfg: ["flatten OTC rows (lossy)"]))
