"""The paper's ablations on any supported model (the scripts in eval/ are thin wrappers).

Table 2  TMAs replaced by the tensor mean / zero at y6 (down-projection input) vs at y7 (its
         output), at run time, plus this toolkit's exact y6 migration for contrast.
Table 3  OTC rows of W_q / W_k / W_v set to their mean vs the same number of random rows of the
         same matrices.
Table 6  channels beyond {6, 4, 2} SD set to the mean, vs as many random channels: rows of the
         q/k/v weights and of the MLP weights (a row = an output channel; its statistic is the row
         mean, the paper's channel criterion), and entries of the norms' rescaling factor γ.
Every state is a copy of the model; the original is never modified.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from ..detect import Analysis
from ..arch import adapter_for
from ..smooth import (FlattenGamma, FlattenRows, MigrateConfig, RemoveMassiveConfig, SmoothingConfig,
                      SmoothingPlan, clone_model, plan_smoothing, smooth_)
from .nll import EvalConfig, PerplexityCache


@dataclass
class Row:
    name: str
    ppl: dict[str, float]
    detail: str = ""


def evaluate_plan(model: nn.Module, tok, plan: SmoothingPlan, datasets: list[str], ecfg: EvalConfig,
                  cache: PerplexityCache, name: str) -> dict[str, float]:
    twin = smooth_(clone_model(model), plan)
    try:
        return {d: cache.perplexity(twin, tok, d, ecfg, desc=f"{name} [{d}]") for d in datasets}
    finally:
        del twin


def table2_tma(model, tok, analysis: Analysis, cal_ids: torch.Tensor, datasets: list[str], ecfg: EvalConfig
               ) -> list[Row]:
    cache = PerplexityCache()
    a = adapter_for(model)
    mt = model.config.model_type
    rows = [Row("base model", evaluate_plan(model, tok, SmoothingPlan(mt), datasets, ecfg, cache, "base"))]
    off = MigrateConfig(norm="none", down=False)
    for at, point in (("down_input", a.massive_point), ("down_output", a.mlp_out_point)):
        for how in ("mean", "zero"):
            cfg = SmoothingConfig(remove_massive=RemoveMassiveConfig(True, how, at), migrate=off)
            plan = plan_smoothing(model, analysis, cfg, cal_ids)
            layers = sorted({i.layer for i in plan.interventions})
            rows.append(Row(f"TMAs → {how} at {point}", evaluate_plan(model, tok, plan, datasets, ecfg, cache, point),
                            f"layers {layers}" if layers else "no TMA found there"))
    if a.mlp_linear_in is not None:
        cfg = SmoothingConfig(migrate=MigrateConfig(norm="none", down=True))
        plan = plan_smoothing(model, analysis, cfg, cal_ids)
        rows.append(Row(f"exact migration at {a.massive_point} (this toolkit, α searched)",
                        evaluate_plan(model, tok, plan, datasets, ecfg, cache, "exact"), f"{len(plan.interventions)} layers"))
    return rows


def _random_rows(n: int, k: int, exclude: set[int], rng: random.Random) -> list[int]:
    pool = [i for i in range(n) if i not in exclude]
    return sorted(rng.sample(pool, min(k, len(pool))))


def table3_otc(model, tok, analysis: Analysis, datasets: list[str], ecfg: EvalConfig, seed: int = 0) -> list[Row]:
    cache = PerplexityCache()
    a = adapter_for(model)
    layers = a.decoder_layers(model)
    mt = model.config.model_type
    rows = [Row("base model", evaluate_plan(model, tok, SmoothingPlan(mt), datasets, ecfg, cache, "base"))]
    groups = [(p, (p,)) for p in a.qkv] + [("x3+x4+x5", tuple(a.qkv))]
    for label, points in groups:
        otc = [FlattenRows(li, p, r) for p in points for li, r in sorted(analysis.otc.get(p, {}).items())]
        count = sum(len(i.rows) for i in otc)
        total = sum(a.weight(layers[li], a.qkv[p]).shape[0] for p in points for li in range(len(layers)))
        detail = f"{count} of {total} rows ({100 * count / total:.2f} %)"
        if not count:
            rows.append(Row(f"remove OTCs ({label})", {d: float("nan") for d in datasets}, "no OTC found"))
            continue
        rng = random.Random(seed)
        rand = [FlattenRows(i.layer, i.point, _random_rows(a.weight(layers[i.layer], a.qkv[i.point]).shape[0],
                                                           len(i.rows), set(i.rows), rng)) for i in otc]
        rows.append(Row(f"remove OTCs ({label})", evaluate_plan(model, tok, SmoothingPlan(mt, otc), datasets, ecfg,
                                                                 cache, f"OTC {label}"), detail))
        rows.append(Row(f"remove random rows ({label})", evaluate_plan(model, tok, SmoothingPlan(mt, rand), datasets,
                                                                        ecfg, cache, f"random {label}"), detail))
    return rows


def beyond_sd(values: torch.Tensor, k: float) -> list[int]:
    """Indices whose value lies more than k standard deviations from the mean: [n] -> list."""
    v = values.double()
    return ((v - v.mean()).abs() > k * v.std()).nonzero().flatten().tolist()


def sd_plans(model, k: float, group: str, rng: random.Random) -> tuple[list, list, int, int]:
    """(outlier edits, random edits, channels hit, channels in the group) for one group at k SD."""
    a = adapter_for(model)
    layers = a.decoder_layers(model)
    projections = a.projections()
    points = list(a.qkv) if group == "qkv" else [p for p in projections if p not in a.qkv]
    out, rand, hit, total = [], [], 0, 0
    for li, layer in enumerate(layers):
        if group == "norm":
            for name, site in (("attn", a.attn_norm), ("mlp", a.mlp_norm)):
                g = a.gamma(layer, site)
                ch = beyond_sd(g, k)
                hit, total = hit + len(ch), total + g.numel()
                if ch:
                    out.append(FlattenGamma(li, name, ch, "mean"))
                    rand.append(FlattenGamma(li, name, _random_rows(g.numel(), len(ch), set(ch), rng), "mean"))
            continue
        for p in points:
            w = a.weight(layer, projections[p]).detach()
            ch = beyond_sd(w.float().mean(1), k)  # row means: [out]
            hit, total = hit + len(ch), total + w.shape[0]
            if ch:
                out.append(FlattenRows(li, p, ch))
                rand.append(FlattenRows(li, p, _random_rows(w.shape[0], len(ch), set(ch), rng)))
    return out, rand, hit, total


def table6_sd(model, tok, datasets: list[str], ecfg: EvalConfig, ks=(6.0, 4.0, 2.0), seed: int = 0
              ) -> tuple[dict[str, float], list[tuple[str, list[dict[str, float]], list[str]]]]:
    """-> (base PPL, [(row name, PPL per k, detail per k)])."""
    cache = PerplexityCache()
    mt = model.config.model_type
    base = evaluate_plan(model, tok, SmoothingPlan(mt), datasets, ecfg, cache, "base")
    labels = {"qkv": "QKV", "norm": "norm γ", "mlp": "MLP"}
    table = []
    for group in ("qkv", "norm", "mlp"):
        res_o, res_r, details = [], [], []
        for k in ks:
            out, rand, hit, total = sd_plans(model, k, group, random.Random(seed))
            details.append(f"{hit}/{total}")
            res_o.append(evaluate_plan(model, tok, SmoothingPlan(mt, out), datasets, ecfg, cache, f"{group} {k}SD")
                         if out else dict(base))
            res_r.append(evaluate_plan(model, tok, SmoothingPlan(mt, rand), datasets, ecfg, cache,
                                       f"{group} random {k}SD") if rand else dict(base))
        table.append((f"{labels[group]} outliers", res_o, details))
        table.append((f"{labels[group]} random", res_r, details))
    return base, table
