"""Exact, function-preserving migrations (weight-folded): the toolkit's better way.

    norm -> q/k/v, gate/up   (x2 / y2)  "smoothquant": every channel by max|X|^α / max|W|^(1-α);
                                       "gamma": the exact form of the paper's γ flattening, only the
                                       detected γ-outlier channels, s_c = γ_c / mean(γ)
    y6 -> down               W_up rows / s, W_down columns × s: the exact counterpart of §3.3

α is searched per site (search.py) unless fixed. The scales are measured on the model as the lossy
interventions planned before this one leave it (PlanContext.temporarily).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from ... import dist
from ...arch import ArchAdapter, adapter_for, resident, walk
from ...detect import Analysis
from ...probe import hooks_at_points
from ...progress import bar
from ...schema import Config
from ..plan import Alpha, Layer, PlanItem, Positive, Site, params_of
from ..registry import Intervention, register_intervention
from ..search import ALPHA_GRID, SearchTarget, choose_alpha, fixed_alpha
from ..transforms import migrate_down_, migrate_norm_, norm_readers, site_of


class MigrateConfig(Config):
    norm: Literal["smoothquant", "gamma", "none"] = "smoothquant"  # x2 / y2 (see the module docstring)
    down: bool = True  # y6: W_up rows / W_down columns
    alpha: Literal["search"] | Annotated[float, Field(ge=0, le=1)] = "search"
    grid: tuple[Annotated[float, Field(ge=0, le=1)], ...] = ALPHA_GRID  # the α values the search scores
    target: SearchTarget = SearchTarget()
    search_samples: int = Field(4, ge=1, le=10_000, description="windows scored per site and α")  # calibration windows scored per site


@dataclass
class MigrateNorm(PlanItem):
    """Exact: γ / s and the reading projections' input columns × s (SmoothQuant at x2 / y2)."""
    kind: ClassVar[str] = "migrate_norm"
    exact: ClassVar[bool] = True
    foldable: ClassVar[bool] = True
    layer: Layer
    site: Site
    alpha: Alpha
    scales: list[Positive]
    reason: str = ""

    def apply_(self, layer, adapter) -> None:
        migrate_norm_(layer, adapter, site_of(adapter, self.site), torch.tensor(self.scales))

    def touched(self, adapter, layer):
        site = site_of(adapter, self.site)
        return params_of(layer, site.norm) + [t for p in site.reads for t in params_of(layer, p.module)]


@dataclass
class MigrateDown(PlanItem):
    """Exact: y6 / s through W_up's rows, W_down's columns × s (the exact counterpart of §3.3)."""
    kind: ClassVar[str] = "migrate_down"
    exact: ClassVar[bool] = True
    foldable: ClassVar[bool] = True
    layer: Layer
    alpha: Alpha
    scales: list[Positive]
    reason: str = ""

    def apply_(self, layer, adapter) -> None:
        migrate_down_(layer, adapter, torch.tensor(self.scales))

    def touched(self, adapter, layer):
        return params_of(layer, adapter.mlp_linear_in.module) + params_of(layer, adapter.mlp_out.module)


@torch.inference_mode()
def collect_absmax(model: nn.Module, adapter: ArchAdapter, ids: torch.Tensor, points: set[str], batch_size: int
                   ) -> dict[tuple[int, str], torch.Tensor]:
    """Per-channel max |a| at `points` of every layer over the windows ids: [N, T]."""
    amax: dict[tuple[int, str], torch.Tensor] = {}

    def record(li, point, t):
        if point in points:
            m = t.detach().abs().reshape(-1, t.shape[-1]).amax(0).float().cpu()
            amax[(li, point)] = torch.maximum(amax[(li, point)], m) if (li, point) in amax else m

    with hooks_at_points(model, adapter, record):
        walk(model, ids, batch_size, desc="smooth: activation ranges")
    keys = sorted(amax)  # under torchrun: the max over every rank's windows (exact), one collective
    if not keys:
        return amax
    merged = dist.amax(torch.cat([amax[k] for k in keys])).split([amax[k].numel() for k in keys])
    return dict(zip(keys, merged))


@torch.inference_mode()
def gamma_migrations(model: nn.Module, analysis: Analysis) -> list[MigrateNorm]:
    """Exact γ flattening: s_c = γ_c / mean(γ) on the γ-outlier channels, 1 elsewhere."""
    adapter = adapter_for(model)
    out = []
    for site, name in ((adapter.attn_norm, "attn"), (adapter.mlp_norm, "mlp")):
        for li, g in sorted(analysis.gamma_outliers.get(site.output_point, {}).items()):
            with resident(model, li) as layer:
                gamma = adapter.gamma(layer, site)  # [C] effective factor
            s = torch.ones_like(gamma)
            s[g["channels"]] = gamma[g["channels"]] / gamma.mean()
            out.append(MigrateNorm(li, name, 1.0, [float(v) for v in s],
                                   reason=f"exact flattening of γ outliers {g['channels']} at {site.output_point} "
                                          f"(γ {g['gamma']} -> mean {g['gamma_mean']}; the columns of W absorb it)"))
    return out


def migrations(model: nn.Module, ids: torch.Tensor, cfg: MigrateConfig, skip_down: set[int],
               amax: dict[tuple[int, str], torch.Tensor]) -> tuple[list, list[str]]:
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    sites = {}  # point -> (site name, NormSite | None)
    if cfg.norm == "smoothquant":
        sites[adapter.attn_norm.output_point] = ("attn", adapter.attn_norm)
        sites[adapter.mlp_norm.output_point] = ("mlp", adapter.mlp_norm)
    notes = []
    if cfg.down and adapter.mlp_linear_in is None:
        notes.append(f"no exact y6 migration for {adapter.family}: its MLP is act(fc) (not linear in a weight row)")
    elif cfg.down:
        sites[adapter.massive_point] = ("down", None)
    found: dict[tuple[int, str], object] = {}
    searching = cfg.alpha == "search"
    progress = bar(total=len(layers) * len(sites), desc="smooth: α search" if searching else "smooth: scales",
                   unit="site")

    def decide(li, point, t):
        if point not in sites or (li, point) in found:
            return
        name, site = sites[point]
        progress.update(1)
        if name == "down" and li in skip_down:
            found[(li, point)] = None
            return
        layer = layers[li]
        weights = norm_readers(layer, adapter, site) if site else [adapter.weight(layer, adapter.mlp_out)]
        x = t.detach().reshape(-1, t.shape[-1]).float()
        act = amax[(li, point)].to(x.device)  # statistics live on the CPU; the layer may not
        if not searching:
            alpha, s, errors = cfg.alpha, fixed_alpha(weights, act, cfg.alpha), None
        else:
            alpha, s, errors = choose_alpha(x, weights, act, cfg.target, cfg.grid)
        if s is None:
            found[(li, point)] = None
            return
        why = f"max|{point}| {float(amax[(li, point)].max()):.4g}; "
        why += f"α={alpha} fixed" if errors is None else \
            f"α={alpha} searched: rel. error {errors[alpha]:.3g} vs {errors['none']:.3g} unmigrated"
        scales = [float(v) for v in s]
        found[(li, point)] = MigrateDown(li, alpha, scales, why) if name == "down" else \
            MigrateNorm(li, name, alpha, scales, why)

    with hooks_at_points(model, adapter, decide):  # each site scored while its layer is resident
        # one batch, run whole on every rank (shard=False): every rank takes the same decisions without communication
        walk(model, ids[: cfg.search_samples], cfg.search_samples, desc="smooth: α search", show=False, shard=False)
    progress.close()
    out = [found[k] for k in sorted(found, key=lambda k: (k[0], list(sites).index(k[1]))) if found[k] is not None]
    return out, notes


def _plan(ctx, cfg: MigrateConfig) -> None:
    """γ migrations, then the searched ones, each measured on the model as the plan so far leaves it."""
    model, adapter, plan = ctx.model, adapter_for(ctx.model), ctx.plan
    if cfg.norm == "gamma":
        with ctx.temporarily():
            plan.interventions += gamma_migrations(model, ctx.analysis)
    if not (cfg.norm == "smoothquant" or cfg.down):
        return
    skip_down = {i.layer for i in plan.interventions if i.kind == "remove_massive"}
    if skip_down and cfg.down:
        plan.notes.append(f"no y6 migration at layers {sorted(skip_down)}: their TMAs are removed at run time")
    points = {adapter.attn_norm.output_point, adapter.mlp_norm.output_point, adapter.massive_point}
    with ctx.temporarily():
        if plan.interventions:
            amax = collect_absmax(model, adapter, ctx.ids, points, ctx.batch_size)
        else:  # the analysis saw this very model
            r = ctx.analysis.result
            amax = {(li, p): r.at(li, p).absmax for li in range(r.num_layers) for p in points}
        items, notes = migrations(model, ctx.ids, cfg, skip_down, amax)
    plan.interventions += items
    plan.notes += notes


def _describe(cfg: MigrateConfig) -> list[str]:
    out = []
    if cfg.norm != "none":
        out.append(f"migrate at the norms ({cfg.norm}, alpha {cfg.alpha}, exact)")
    if cfg.down:
        out.append(f"migrate at y6 (alpha {cfg.alpha}, exact)")
    return out


MIGRATE = register_intervention(Intervention(
    name="migrate", config=MigrateConfig, items=(MigrateNorm, MigrateDown), plan=_plan, describe=_describe,
    order=50, active=lambda cfg: cfg.norm != "none" or cfg.down))
