"""Evidence for a smoothing: the same measurements on the model before and after.

For one model state: float perplexity on every evaluation dataset, and from a probe pass on
the same calibration windows, per layer: massive activations in the residual stream (x1, y1)
and at projection inputs (x2, x8, y2, y6: what activation quantization sees), the top-3 |x1|
(the paper's Figure 4 right), the largest |a| at projection inputs, channel-wise outliers, the attention
sink's share of the attention and the largest score (x7, x6), and the weights' largest |w| / median |w| and outlier
rows and columns (what an exact migration moves into the weights).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..detect import Analysis, AnalysisConfig, analyze
from ..arch import RESIDUAL_POINTS
from .nll import EvalConfig, PerplexityCache


def outlier_profile(analysis: Analysis) -> dict:
    r = analysis.result
    a = r.adapter
    n = r.num_layers
    counts = analysis.massive_counts()
    co = analysis.outlier_counts()
    lin = a.linear_inputs
    return {
        "massive_residual": [sum(counts[p][li] for p in RESIDUAL_POINTS) for li in range(n)],
        "massive_linear_inputs": [sum(counts[p][li] for p in lin) for li in range(n)],
        "massive_total": sum(sum(v) for v in counts.values()),
        "top3_abs_x1": analysis.top_abs("x1", 3),
        "max_abs_linear_inputs": [max(float(r.at(li, p).absmax.max()) for p in lin) for li in range(n)],
        "channel_outliers": [sum(co[p][li] for p in co) for li in range(n)],
        "channel_outliers_linear_inputs": [sum(co[p][li] for p in lin) for li in range(n)],
        "channel_outliers_total": sum(sum(v) for v in co.values()),
        **attention_profile(analysis.attention),
        **weight_profile(analysis.weights, n),
    }


def weight_profile(weights: dict, n: int) -> dict:
    """Per layer, over its projections: the largest max |w| / median |w|, and the outlier rows + columns."""
    if not weights:
        return {}
    return {"weight_ratio": [max(by[li]["ratio"] or 0 for by in weights.values()) for li in range(n)],
            "weight_outliers": [sum(len(by[li]["rows"]) + len(by[li]["cols"]) for by in weights.values())
                                for li in range(n)]}


def attention_profile(attention: dict) -> dict:
    """x6/x7 of a state, per layer: the attention share the sink takes (mean over heads of the largest mean key
    share) and the largest score; the number of sink heads. Empty when the attention was not tapped."""
    if not attention:
        return {}
    per = attention["per_layer"]
    return {"sink_mass": [x["sink_mass"] for x in per], "max_score": [x["max_score"] for x in per],
            "sink_heads": len(attention["sink_heads"])}


def state_evidence(name: str, model: nn.Module, tokenizer, evidence_ids: torch.Tensor, datasets: list[str],
                   eval_cfg: EvalConfig, cache: PerplexityCache, analysis_cfg: AnalysisConfig, batch_size: int = 4
                   ) -> dict:
    t0 = time.perf_counter()
    profile = outlier_profile(analyze(model, evidence_ids, analysis_cfg, batch_size))
    ppl = {d: cache.perplexity(model, tokenizer, d, eval_cfg, desc=f"perplexity [{name}] on {d}") for d in datasets}
    return {"name": name, "ppl": ppl, **profile, "seconds": round(time.perf_counter() - t0, 1)}


def removed_share(before: dict, after: dict) -> dict:
    """Share of outliers removed (negative: more than before) for each count."""
    def share(key):
        b, a = before[key], after[key]
        b, a = (sum(b), sum(a)) if isinstance(b, list) else (b, a)
        return None if b == 0 else round(1 - a / b, 4)
    keys = ("massive_total", "massive_residual", "massive_linear_inputs", "channel_outliers_total",
            "channel_outliers_linear_inputs", "weight_outliers")
    return {k: share(k) for k in keys if k in before and k in after}


def ppl_change(before: dict, after: dict) -> dict:
    return {d: round(after["ppl"][d] / before["ppl"][d] - 1, 6) for d in before["ppl"]}
