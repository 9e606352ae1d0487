"""The weight edits of the smoothing stage, as short functions on one decoder layer.

Exact (function-preserving) migrations, with s: [C] > 0 a per-channel scale:

    norm -> projections   out = u · γ (+ β)  feeds  W: [out, C]
                          γ' = γ / s, β' = β / s, W' = W · diag(s)      => W' out' = W out
                          (Gemma's RMSNorm computes u · (1 + γ): the effective factor is divided)
    y6 -> down            y6 = act(gate(y2)) · up(y2)  feeds  W_down: [H, I]
                          W_up' = diag(1/s) W_up, W_down' = W_down · diag(s)  => same y7

Lossy edits of the paper (§4.2-4.4, Table 3, Table 6): set γ outlier entries to the γ mean or
zero; set a weight row (an output channel, e.g. an OTC of W_q) to the mean of its entries.
"""
from __future__ import annotations

import torch
from torch import nn

from ..arch import ArchAdapter, NormSite, Proj

EPS = 1e-5


def site_of(adapter: ArchAdapter, name: str) -> NormSite:
    """attn | mlp -> the norm site (the norm and the projections reading it)."""
    return {"attn": adapter.attn_norm, "mlp": adapter.mlp_norm}[name]


def smoothquant_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s_c = max|X_c|^α / max|W_:,c|^(1-α): [C] -> [C] (float32, > 0)."""
    a = act_absmax.float().clamp(min=EPS)
    w = weight_absmax.float().clamp(min=EPS)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=EPS)


def column_absmax(weights: list[torch.Tensor]) -> torch.Tensor:
    """max |W[:, c]| over every matrix reading the same input: [out_i, C] each -> [C]."""
    return torch.stack([w.detach().float().abs().amax(0) for w in weights]).amax(0)


def norm_readers(layer: nn.Module, adapter: ArchAdapter, site: NormSite) -> list[torch.Tensor]:
    return [adapter.weight(layer, p) for p in site.reads]


@torch.no_grad()
def migrate_norm_(layer: nn.Module, adapter: ArchAdapter, site: NormSite, s: torch.Tensor) -> None:
    """γ /= s (and β /= s), every projection reading the norm's output: W[:, c] *= s_c."""
    norm = layer.get_submodule(site.norm)
    s = s.to(norm.weight.device, torch.float32)
    effective = site.gamma_offset + norm.weight.float()  # [C]
    norm.weight.copy_((effective / s - site.gamma_offset).to(norm.weight.dtype))
    if getattr(norm, "bias", None) is not None:
        norm.bias.copy_((norm.bias.float() / s).to(norm.bias.dtype))
    for w in norm_readers(layer, adapter, site):  # [out, C] views
        w.copy_((w.float() * s[None, :]).to(w.dtype))


@torch.no_grad()
def migrate_down_(layer: nn.Module, adapter: ArchAdapter, s: torch.Tensor) -> None:
    """y6 /= s exactly: row c of W_up (and its bias) / s_c, column c of W_down * s_c."""
    if adapter.mlp_linear_in is None:
        raise ValueError(f"{adapter.family} has no projection linear in y6 ({adapter.massive_point} = act(fc)); "
                         f"an exact migration there does not exist")
    up = adapter.weight(layer, adapter.mlp_linear_in)  # [I, H]
    s = s.to(up.device, torch.float32)
    up.copy_((up.float() / s[:, None]).to(up.dtype))
    b = adapter.bias(layer, adapter.mlp_linear_in)
    if b is not None:
        b.copy_((b.float() / s).to(b.dtype))
    down = adapter.weight(layer, adapter.mlp_out)  # [H, I]
    down.copy_((down.float() * s[None, :]).to(down.dtype))


@torch.no_grad()
def flatten_gamma_(layer: nn.Module, site: NormSite, channels: list[int], replace_with: str) -> None:
    """Set the effective rescaling factor of `channels` to the mean over all channels, or zero."""
    norm = layer.get_submodule(site.norm)
    effective = site.gamma_offset + norm.weight.float()
    value = float(effective.mean()) if replace_with == "mean" else 0.0
    idx = torch.tensor(channels, dtype=torch.long, device=norm.weight.device)
    norm.weight[idx] = torch.tensor(value - site.gamma_offset, dtype=norm.weight.dtype)


@torch.no_grad()
def flatten_rows_(layer: nn.Module, adapter: ArchAdapter, proj: Proj, rows: list[int]) -> None:
    """Set each listed row (output channel) of W to the mean of its own entries (paper Table 3)."""
    w = adapter.weight(layer, proj)  # [out, in]
    idx = torch.tensor(rows, dtype=torch.long, device=w.device)
    w[idx] = w[idx].float().mean(1, keepdim=True).expand(-1, w.shape[1]).to(w.dtype)

