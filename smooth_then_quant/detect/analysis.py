"""Analyze: probe a model on calibration windows and run every detector.

    analysis = analyze(model, input_ids, AnalysisConfig())
    analysis.to_dict()   # what report.json holds under massive_activations, channel_outliers, ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from ..arch import adapter_for, resident
from ..load.stream import streamed_model
from ..probe import MassiveRule, ProbeConfig, ProbeResult, probe_model
from ..schema import Config
from .attention import SinkRule, attention_outliers
from .channels import ChannelRule, channel_outliers, gamma_outliers
from ..extras import available
from .massive import MassiveActivation, cancellations, find_massive, massive_families, summarize_massive
from .otc import outlier_triggering_channels
from .weights import WeightRule, layer_weight_profile


class AnalysisConfig(Config):
    """`analysis:` — the paper's rules, how many top values to keep, and whether to draw plots."""
    massive: MassiveRule = MassiveRule()
    channel: ChannelRule = ChannelRule()
    top_k: int = Field(10, ge=3, le=10_000, description="values kept per point and window")
    attention: bool = True  # x6/x7: tap the attention kernel (scores, sink mass, entropy per head)
    sink: SinkRule = SinkRule()
    weights: WeightRule = WeightRule()
    plots: bool | None = None  # None: when matplotlib (the [plots] extra) is installed; true: required

    @property
    def draws(self) -> bool:
        return self.plots if self.plots is not None else available("matplotlib")


@dataclass
class Analysis:
    result: ProbeResult
    config: AnalysisConfig
    massive: list[MassiveActivation]
    channel_outliers: dict[str, dict[int, list[int]]]  # point -> layer -> channels
    gamma_outliers: dict[str, dict[int, dict]]  # norm output point -> layer -> {channels, gamma, ...}
    otc: dict[str, dict[int, list[int]]]  # x3/x4/x5 -> layer -> rows
    attention: dict = field(default_factory=dict)  # attention_outliers(): per layer, sink heads, families
    weights: dict[str, dict[int, dict]] = field(default_factory=dict)  # projection's output point -> layer -> entry

    def top_abs(self, point: str, k: int = 3) -> list[list[float]]:
        """Per layer, the k largest |a| at a point (the paper's Figures 4/5 use x1)."""
        return [[abs(v) for v, *_ in self.result.at(li, point).top[:k]] for li in range(self.result.num_layers)]

    def cancellations(self) -> list[dict]:
        """TMAs that late layers write against the FMA the residual stream carries (paper §3)."""
        a = self.result.adapter
        return cancellations(self.massive, a.mlp_norm.input_point, a.mlp_out_point)

    def massive_counts(self) -> dict[str, list[int]]:
        """Per point, per layer: how many massive-activation elements (over all samples)."""
        r = self.result
        counts = {p: [0] * r.num_layers for p in r.adapter.point_names}
        for m in self.massive:
            counts[m.point][m.layer] += 1
        return counts

    def outlier_counts(self) -> dict[str, list[int]]:
        return {p: [len(self.channel_outliers[p].get(li, [])) for li in range(self.result.num_layers)]
                for p in self.channel_outliers}

    def to_dict(self) -> dict:
        r = self.result
        return {
            "architecture": r.adapter.family,
            "num_layers": r.num_layers,
            "points": list(r.adapter.point_names),
            "rules": {"massive": self.config.massive.model_dump(), "channel": self.config.channel.model_dump(),
                      "weights": self.config.weights.model_dump(),
                      **({"sink": self.config.sink.model_dump()} if self.attention else {})},
            "massive_activations": summarize_massive(self.massive),
            "massive_families": massive_families(self.massive),
            "cancellations": self.cancellations(),
            "massive_counts": self.massive_counts(),
            "channel_outliers": {p: {str(li): ch for li, ch in by_layer.items()}
                                 for p, by_layer in self.channel_outliers.items()},
            "channel_outlier_counts": self.outlier_counts(),
            "gamma_outliers": {p: {str(li): g for li, g in by_layer.items()} for p, by_layer in self.gamma_outliers.items()},
            "otc": {p: {str(li): rows for li, rows in by_layer.items()} for p, by_layer in self.otc.items()},
            "weight_outliers": {p: {str(li): e for li, e in by_layer.items()} for p, by_layer in self.weights.items()},
            "top_abs": {p: self.top_abs(p) for p in r.adapter.point_names},
            "median_abs": {p: [r.at(li, p).median_abs for li in range(r.num_layers)] for p in r.adapter.point_names},
            "massive_overflow": sum(s.massive_overflow for s in r.stats.values()),
            **({"attention": self.attention} if self.attention else {}),
        }


def layer_weight_outliers(li: int, layer: nn.Module, result: ProbeResult, rule: ChannelRule,
                          weights: WeightRule = WeightRule()) -> tuple[dict[str, dict], dict[str, list[int]], dict]:
    """The detectors that read a layer's weights, for decoder layer `li` (resident now): its γ outliers
    ({norm output point: entry}), OTC rows ({x3/x4/x5: rows}) and weight outliers ({projection point: entry})."""
    adapter = result.adapter
    gammas = {}
    for site in adapter.norm_sites():
        g = adapter.gamma(layer, site)
        found = gamma_outliers(result.at(li, site.output_point), g, adapter.beta(layer, site), rule)
        if found:
            gammas[site.output_point] = {"norm": site.norm, "channels": found,
                                         "gamma": [round(float(g[c]), 5) for c in found],
                                         "gamma_mean": round(float(g.mean()), 5)}
    src = adapter.attn_norm.output_point
    otc = {}
    for p, proj in adapter.qkv.items():
        rows = outlier_triggering_channels(result.at(li, src), result.at(li, p), adapter.weight(layer, proj),
                                           adapter.bias(layer, proj), rule)
        if rows:
            otc[p] = rows
    return gammas, otc, layer_weight_profile(adapter, layer, weights)


def assemble(result: ProbeResult, config: AnalysisConfig, per_layer: list[tuple[dict, dict]]) -> Analysis:
    """Every detector's findings, from the probe statistics and each layer's weight detections."""
    adapter = result.adapter
    cos = {p: {} for p in adapter.point_names}
    for li, p in result.points():
        found = channel_outliers(result.at(li, p), config.channel)
        if found:
            cos[p][li] = found
    gammas = {site.output_point: {li: g[site.output_point] for li, (g, *_) in enumerate(per_layer)
                                  if site.output_point in g} for site in adapter.norm_sites()}
    otc = {p: {li: o[p] for li, (_, o, _) in enumerate(per_layer) if p in o} for p in adapter.qkv}
    weights = {p: {li: w[p] for li, (*_, w) in enumerate(per_layer)} for p in per_layer[0][2]} if per_layer else {}
    massive = find_massive(result, config.massive)
    return Analysis(result, config, massive, cos, gammas, otc, attention_outliers(result, massive, config.sink),
                    weights)


def detect_outliers(result: ProbeResult, model: nn.Module, config: AnalysisConfig = AnalysisConfig()) -> Analysis:
    """Run every detector over finished probe statistics (no forward pass; a streamed model's layers are read)."""
    per_layer = []
    for li in range(result.num_layers):
        with resident(model, li) as layer:
            per_layer.append(layer_weight_outliers(li, layer, result, config.channel, config.weights))
    return assemble(result, config, per_layer)


def analyze(model: nn.Module, input_ids: torch.Tensor, config: AnalysisConfig = AnalysisConfig(), batch_size: int = 4
            ) -> Analysis:
    """Probe `model` on input_ids: [samples, seq_len] and detect MAs, channel outliers, γ outliers, OTCs. The
    weight-based detectors run on each layer while the probe has it resident (a streamed model reads it once)."""
    adapter_for(model)  # fail before the pass on an unsupported architecture
    probe = ProbeConfig(batch_size=batch_size, top_k=config.top_k, massive=config.massive, attention=config.attention,
                        sink_floor=config.sink.share)
    per_layer = []
    result = probe_model(model, input_ids, probe, after_layer=lambda li, layer, partial: per_layer.append(
        layer_weight_outliers(li, layer, partial, config.channel, config.weights)))
    return assemble(result, config, per_layer)


def analyze_checkpoint(folder: str | Path, input_ids: torch.Tensor, config: AnalysisConfig = AnalysisConfig(),
                       batch_size: int = 4, dtype: torch.dtype = torch.float32, device: str = "cpu",
                       hf_config=None) -> Analysis:
    """`analyze` on the checkpoint in `folder` without loading it: one decoder layer resident at a time."""
    return analyze(streamed_model(folder, dtype, device, hf_config), input_ids, config, batch_size)
