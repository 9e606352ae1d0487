"""Choosing the migration strength α per site on calibration data.

For one site (a norm and the projections reading it, or y6 and W_down) with calibration
activations X: [N, C], weights W_i: [O_i, C] and s(α) = smoothquant_scales(max|X|, max|W|, α),
the error of the quantized product after migration is

    err(α) = Σ_i ‖ Q_a(X / s) · Q_w(W_i · s)ᵀ − X · W_iᵀ ‖² / ‖ X · W_iᵀ ‖²

with Q_w, Q_a the RTN round trips of the quantization target (default W4 g64, A8 per-tensor
static, the hardest common case). The grid holds α = 0, 0.1, ..., 1 and "no migration"; the
smallest error wins, so a site where migration does not help is left alone. Scaling a row of
W_up by 1/s scales its RTN error by exactly 1/s (its groups run along the row), so the y6 site
only has to score W_down.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..quantize import ActQuant, GroupSize, WeightQuant, fake_quant_act, fake_quant_weight
from ..schema import Config
from .transforms import column_absmax, smoothquant_scales

ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))


class SearchTarget(Config):
    """The quantization the α search scores migrations against (default: W4 g64 + A8 static, the hard case)."""
    weight_bits: int = Field(4, ge=2, le=8)
    group_size: GroupSize = 64
    act_bits: int = Field(8, ge=2, le=16)
    act_granularity: Literal["per_token", "per_tensor"] = "per_tensor"

    @property
    def weight(self) -> WeightQuant:
        return WeightQuant(self.weight_bits, self.group_size)

    @property
    def act(self) -> ActQuant:
        return ActQuant(self.act_bits, self.act_granularity)


def _weight_quant(w: torch.Tensor, q: WeightQuant) -> torch.Tensor:
    g = q.group_size
    if g != -1 and w.shape[1] % g:  # the search only ranks α; an uneven width is scored per channel
        q = WeightQuant(q.bits, -1, q.symmetric)
    return fake_quant_weight(w, q)


def migration_error(x: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor | None,
                    target: SearchTarget) -> float:
    """x: [N, C], weights: [O_i, C], s: [C] or None (no migration) -> relative output error."""
    x = x.float()
    xs = x if s is None else x / s
    xq = fake_quant_act(xs, target.act)
    err = 0.0
    for w in weights:
        w = w.detach().float()
        ref = x @ w.T  # [N, O]
        ws = w if s is None else w * s[None, :]
        out = xq @ _weight_quant(ws, target.weight).T
        err += float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp(min=1e-12))
    return err


def choose_alpha(x: torch.Tensor, weights: list[torch.Tensor], act_absmax: torch.Tensor,
                 target: SearchTarget, grid: tuple[float, ...] = ALPHA_GRID
                 ) -> tuple[float | None, torch.Tensor | None, dict]:
    """-> (best α or None for no migration, its scales [C] or None, {α: error})."""
    errors: dict = {"none": migration_error(x, weights, None, target)}
    w_absmax = column_absmax(weights)
    scales = {}
    for a in grid:
        scales[a] = smoothquant_scales(act_absmax, w_absmax, a)
        errors[a] = migration_error(x, weights, scales[a], target)
    best = min(errors, key=errors.get)
    if best == "none":
        return None, None, errors
    return best, scales[best], errors


def fixed_alpha(weights: list[torch.Tensor], act_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    return smoothquant_scales(act_absmax, column_absmax(weights), alpha)
