"""Channel-wise outliers (paper §4.1) and the γ entries that make them (§4.2).

A channel j of an activation A is an outlier when
    |mean(A_j) - mean(A)| > m · std(A)     and     std(A_j) < β          (m = 4, β = 1/3)
The statistics exclude the massive activations by default, as the paper does before
looking for channel outliers (Figure 8(b)); `exclude_massive=False` keeps them.
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..probe import PointStats, tensor_moments
from ..schema import Config


class ChannelRule(Config):
    """The paper's channel-outlier criterion (m, β; see the module docstring)."""
    m: float = Field(4.0, gt=0)
    beta: float = Field(1 / 3, gt=0)
    exclude_massive: bool = True  # channel statistics without the MA elements (so MAs do not make COs)


def channel_moments(stats: PointStats, rule: ChannelRule):
    """(mean[C], std[C], count[C], tensor mean, tensor std) under the rule's MA handling."""
    if rule.exclude_massive:
        return stats.mean_ex, stats.std_ex, stats.count_ex, stats.tensor_mean_ex, stats.tensor_std_ex
    n = torch.full_like(stats.mean, float(stats.count))
    return stats.mean, stats.std, n, stats.tensor_mean, stats.tensor_std


def outlier_mask(mean: torch.Tensor, std: torch.Tensor, tensor_mean: float, tensor_std: float,
                 rule: ChannelRule) -> torch.Tensor:
    """[C] bool: the paper's criterion on per-channel mean/std against the whole tensor."""
    return ((mean - tensor_mean).abs() > rule.m * tensor_std) & (std < rule.beta)


def channel_outliers(stats: PointStats, rule: ChannelRule = ChannelRule()) -> list[int]:
    mean, std, _, tm, ts = channel_moments(stats, rule)
    return outlier_mask(mean, std, tm, ts, rule).nonzero().flatten().tolist()


def gamma_outliers(out: PointStats, gamma: torch.Tensor, beta: torch.Tensor | None = None,
                   rule: ChannelRule = ChannelRule()) -> list[int]:
    """Channels that are outliers in the norm's output but not in its standardized input.

    The norm computes out = u · γ (+ β) with u the standardized input, so u's per-channel
    statistics follow exactly from out's: mean_u = (mean_out - β) / γ, std_u = std_out / |γ|.
    A channel that is an outlier after rescaling and not before is made by γ.
    gamma: [C] effective factor (Gemma: 1 + γ).
    """
    mean, std, n, tm, ts = channel_moments(out, rule)
    g = gamma.double()
    shift = torch.zeros_like(g) if beta is None else beta.double()
    live = g.abs() > 1e-12  # a zero γ erases the channel: it cannot make an outlier
    safe = torch.where(live, g, torch.ones_like(g))
    mean_u, std_u = (mean - shift) / safe, std / safe.abs()
    um, us = tensor_moments(mean_u[live], std_u[live], n[live])
    in_out = outlier_mask(mean, std, tm, ts, rule)
    in_u = outlier_mask(mean_u, std_u, um, us, rule)
    return (in_out & ~in_u & live).nonzero().flatten().tolist()
