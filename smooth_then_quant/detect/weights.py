"""Weight outliers ("Systematic Outliers in Large Language Models": the weight kind), per projection of a layer.

For W: [out, in] (one projection, named by the point it computes: x3/x4/x5 = W_q/W_k/W_v, x9 = W_o, y3/y4 =
W_gate/W_up (GPT-2: y3 = W_fc), y7 = W_down (GPT-2: y5)):
- row outliers: output rows whose max |w| stands beyond the median + k·σ of the rows' max |w| (σ from the median
  absolute deviation, so a few outliers do not hide each other; a per-output-channel scale pays for them);
- column outliers: input columns the same way (a group of a group-wise W4 scale spans columns: one large column
  widens every group it crosses). A migration s divides activation channels and multiplies these columns, so this
  is where the exact migrations move range into the weights;
- the largest |w| over the median |w| of the matrix.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..arch import ArchAdapter, Proj
from ..probe import median_abs
from ..schema import Config


class WeightRule(Config):
    """A row (column) of W is an outlier when its max |w| exceeds the rows' (columns') median max |w| by k·σ (robust σ)."""
    k: float = Field(8.0, gt=0)


def _beyond(x: torch.Tensor, k: float) -> list[int]:
    """Indices of x [n] above median + k·σ, σ estimated robustly (1.4826 × the median absolute deviation): a few
    large entries would inflate a plain std and hide each other."""
    if x.numel() < 3:
        return []
    med = x.median()
    sigma = 1.4826 * (x - med).abs().median()
    return ((x - med) > k * sigma).nonzero().squeeze(1).tolist()


def matrix_outliers(w: torch.Tensor, rule: WeightRule) -> dict:
    """w: [out, in] -> {rows, cols, max, ratio}: outlier rows and columns, max |w| and max |w| / median |w|."""
    a = w.detach().float().abs()  # [out, in]
    top, med = float(a.max()), median_abs(a)
    return {"rows": _beyond(a.amax(1), rule.k), "cols": _beyond(a.amax(0), rule.k), "max": round(top, 6),
            "ratio": round(top / med, 3) if med > 0 else None}


def projections(adapter: ArchAdapter) -> dict[str, Proj]:
    """Output point -> projection, W_o included (x9)."""
    out = dict(adapter.projections())
    out["x9"] = Proj(adapter.points["x9"].module, transposed=adapter.mlp_out.transposed)
    order = {p: i for i, p in enumerate(adapter.point_names)}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def layer_weight_profile(adapter: ArchAdapter, layer: nn.Module, rule: WeightRule) -> dict[str, dict]:
    """{point: matrix_outliers} for every projection of a (resident) decoder layer."""
    return {p: matrix_outliers(adapter.weight(layer, proj), rule) for p, proj in projections(adapter).items()}
