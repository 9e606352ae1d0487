"""From analysis statistics to a SmoothingPlan.

    plan = plan_smoothing(model, analysis, SmoothingConfig(), calibration_ids)

Lossy edits come straight from the detectors (TMAs, γ outliers, OTCs). The exact migrations
need activations of the model *as it will be* after those edits, so the planner applies the
lossy part temporarily, measures per-channel max|X| and searches α per site, then restores
the model: planning leaves the model unchanged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..analyze import Analysis
from ..arch import ArchAdapter, adapter_for
from ..probe.probe import hooks_at_points
from .apply import site_of, smooth_
from .plan import FlattenGamma, FlattenRows, MigrateDown, MigrateNorm, RemoveMassive, SmoothingPlan
from .runtime import attach_runtime_, runtime_ops
from .search import ALPHA_GRID, SearchTarget, choose_alpha, fixed_alpha
from .transforms import norm_readers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoveMassiveConfig:
    enabled: bool = False
    replace_with: str = "mean"  # mean | zero
    at: str = "massive_point"  # massive_point (y6; y4 for GPT-2) | mlp_out_point (y7: the paper's contrast)
    channels: str = "detected"  # detected: the channels seen in calibration | all
    layers: tuple[int, ...] | None = None  # None: every layer with a TMA there


@dataclass(frozen=True)
class FlattenGammaConfig:
    enabled: bool = False
    replace_with: str = "mean"  # mean | zero


@dataclass(frozen=True)
class FlattenOTCConfig:
    enabled: bool = False


@dataclass(frozen=True)
class MigrateConfig:
    # x2 / y2 (γ and the projections reading the norm): "smoothquant" scales every channel by
    # max|X|^α / max|W|^(1-α); "gamma" is the exact form of the paper's γ flattening: only the
    # detected γ-outlier channels, s_c = γ_c / mean(γ), so x2/y2 lose exactly their γ-made outliers;
    # "none" leaves the norms alone.
    norm: str = "smoothquant"
    down: bool = True  # y6: W_up rows and W_down columns
    alpha: float | None = None  # None: search per site
    grid: tuple[float, ...] = ALPHA_GRID
    target: SearchTarget = field(default_factory=SearchTarget)
    search_samples: int = 4  # calibration windows scored per site


@dataclass(frozen=True)
class SmoothingConfig:
    remove_massive: RemoveMassiveConfig = field(default_factory=RemoveMassiveConfig)
    flatten_gamma: FlattenGammaConfig = field(default_factory=FlattenGammaConfig)
    flatten_otc: FlattenOTCConfig = field(default_factory=FlattenOTCConfig)
    migrate: MigrateConfig = field(default_factory=MigrateConfig)
    batch_size: int = 4
    progress: bool = True


# ---- lossy edits from the detectors -------------------------------------------------------
def massive_removals(analysis: Analysis, cfg: RemoveMassiveConfig) -> tuple[list[RemoveMassive], list[str]]:
    adapter = analysis.result.adapter
    point = getattr(adapter, cfg.at)
    rule = analysis.config.massive
    by_layer: dict[int, set[int]] = {}
    for a in analysis.massive:
        if a.point == point and a.kind == "TMA":
            by_layer.setdefault(a.layer, set()).add(a.channel)
    notes = []
    chosen = set(by_layer) if cfg.layers is None else set(cfg.layers) & set(by_layer)
    if cfg.layers is not None:  # a cancelling TMA left alone would write an uncancelled MA into the stream
        cancel = analysis.cancellations()
        for c in cancel:
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


# ---- exact migrations, measured on the edited model ---------------------------------------
@torch.inference_mode()
def collect_absmax(model: nn.Module, adapter: ArchAdapter, ids: torch.Tensor, points: set[str], batch_size: int,
                   progress: bool) -> dict[tuple[int, str], torch.Tensor]:
    """Per-channel max |a| at `points` of every layer over the windows ids: [N, T]."""
    amax: dict[tuple[int, str], torch.Tensor] = {}

    def record(li, point, t):
        if point in points:
            m = t.detach().abs().reshape(-1, t.shape[-1]).amax(0).float().cpu()
            amax[(li, point)] = torch.maximum(amax[(li, point)], m) if (li, point) in amax else m

    with hooks_at_points(model, adapter, record):
        for s in tqdm(range(0, ids.shape[0], batch_size), desc="smooth: activation ranges", unit="batch",
                      disable=not progress):
            model.base_model(input_ids=ids[s: s + batch_size], use_cache=False)
    return amax


@torch.inference_mode()
def gamma_migrations(model: nn.Module, analysis: Analysis) -> list[MigrateNorm]:
    """Exact γ flattening: s_c = γ_c / mean(γ) on the γ-outlier channels, 1 elsewhere."""
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    out = []
    for site, name in ((adapter.attn_norm, "attn"), (adapter.mlp_norm, "mlp")):
        for li, g in sorted(analysis.gamma_outliers.get(site.output_point, {}).items()):
            gamma = adapter.gamma(layers[li], site)  # [C] effective factor
            s = torch.ones_like(gamma)
            s[g["channels"]] = gamma[g["channels"]] / gamma.mean()
            out.append(MigrateNorm(li, name, 1.0, [float(v) for v in s],
                                   reason=f"exact flattening of γ outliers {g['channels']} at {site.output_point} "
                                          f"(γ {g['gamma']} -> mean {g['gamma_mean']}; the columns of W absorb it)"))
    return out


def migrations(model: nn.Module, ids: torch.Tensor, cfg: MigrateConfig, skip_down: set[int],
               amax: dict[tuple[int, str], torch.Tensor], progress: bool = True) -> tuple[list, list[str]]:
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
    bar = tqdm(total=len(layers) * len(sites), desc="smooth: α search" if cfg.alpha is None else "smooth: scales",
               unit="site", disable=not progress)

    def decide(li, point, t):
        if point not in sites or (li, point) in found:
            return
        name, site = sites[point]
        bar.update(1)
        if name == "down" and li in skip_down:
            found[(li, point)] = None
            return
        layer = layers[li]
        weights = norm_readers(layer, adapter, site) if site else [adapter.weight(layer, adapter.mlp_out)]
        x = t.detach().reshape(-1, t.shape[-1]).float()
        if cfg.alpha is not None:
            alpha, s, errors = cfg.alpha, fixed_alpha(weights, amax[(li, point)], cfg.alpha), None
        else:
            alpha, s, errors = choose_alpha(x, weights, amax[(li, point)], cfg.target, cfg.grid)
        if s is None:
            found[(li, point)] = None
            return
        why = f"max|{point}| {float(amax[(li, point)].max()):.4g}; "
        why += f"α={alpha} fixed" if errors is None else \
            f"α={alpha} searched: rel. error {errors[alpha]:.3g} vs {errors['none']:.3g} unmigrated"
        scales = [float(v) for v in s]
        found[(li, point)] = MigrateDown(li, alpha, scales, why) if name == "down" else \
            MigrateNorm(li, name, alpha, scales, why)

    with hooks_at_points(model, adapter, decide):
        model.base_model(input_ids=ids[: cfg.search_samples], use_cache=False)
    bar.close()
    out = [found[k] for k in sorted(found, key=lambda k: (k[0], list(sites).index(k[1]))) if found[k] is not None]
    return out, notes


def plan_smoothing(model: nn.Module, analysis: Analysis, config: SmoothingConfig, input_ids: torch.Tensor
                   ) -> SmoothingPlan:
    """Compute the plan; the model is returned to its state on entry."""
    adapter = adapter_for(model)
    plan = SmoothingPlan(model.config.model_type)
    if config.remove_massive.enabled:
        items, notes = massive_removals(analysis, config.remove_massive)
        plan.interventions += items
        plan.notes += notes
    if config.flatten_gamma.enabled:
        plan.interventions += gamma_flattenings(analysis, config.flatten_gamma)
    if config.flatten_otc.enabled:
        plan.interventions += otc_flattenings(analysis)
    mc = config.migrate
    if mc.norm not in ("smoothquant", "gamma", "none"):
        raise ValueError(f"migrate.norm must be smoothquant, gamma or none (got {mc.norm!r})")
    if mc.norm == "gamma":
        with _temporarily(model, plan):
            plan.interventions += gamma_migrations(model, analysis)
    if not (mc.norm == "smoothquant" or mc.down):
        return plan
    skip_down = {i.layer for i in plan.interventions if isinstance(i, RemoveMassive)}
    if skip_down and mc.down:
        plan.notes.append(f"no y6 migration at layers {sorted(skip_down)}: their TMAs are removed at run time")
    points = {adapter.attn_norm.output_point, adapter.mlp_norm.output_point, adapter.massive_point}
    with _temporarily(model, plan):
        if plan.interventions:
            amax = collect_absmax(model, adapter, input_ids, points, config.batch_size, config.progress)
        else:  # the analysis saw this very model
            amax = {(li, p): analysis.result.at(li, p).absmax for li in range(analysis.result.num_layers)
                    for p in points}
        items, notes = migrations(model, input_ids, mc, skip_down, amax, config.progress)
    plan.interventions += items
    plan.notes += notes
    return plan


def touched(adapter: ArchAdapter, layer: nn.Module, i) -> list[torch.Tensor]:
    """The parameters a weight-folded intervention edits."""
    def params(path):
        m = layer.get_submodule(path)
        return [t for t in (m.weight, getattr(m, "bias", None)) if t is not None]
    if isinstance(i, (FlattenGamma, MigrateNorm)):
        site = site_of(adapter, i.site)
        return params(site.norm) + ([] if isinstance(i, FlattenGamma) else
                                    [t for p in site.reads for t in params(p.module)])
    if isinstance(i, FlattenRows):
        return params(adapter.projections()[i.point].module)
    if isinstance(i, MigrateDown):
        return params(adapter.mlp_linear_in.module) + params(adapter.mlp_out.module)
    raise ValueError(f"cannot plan on top of a {i.kind} intervention")


class _temporarily:
    """Apply a plan's (lossy) interventions, then put every touched tensor and hook back."""

    def __init__(self, model: nn.Module, plan: SmoothingPlan):
        self.model, self.plan = model, plan

    def __enter__(self):
        adapter = adapter_for(self.model)
        layers = adapter.decoder_layers(self.model)
        self.saved = {}
        for i in self.plan.interventions:
            if i.foldable:
                for t in touched(adapter, layers[i.layer], i):
                    self.saved.setdefault(id(t), (t, t.detach().clone()))
        self.ops = runtime_ops(self.model)
        smooth_(self.model, self.plan)
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for t, copy in self.saved.values():
                t.copy_(copy)
        attach_runtime_(self.model, self.ops)
        return False
