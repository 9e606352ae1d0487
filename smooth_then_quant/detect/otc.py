"""Outlier-triggering channels (paper §4.3): rows of W_q / W_k / W_v that create channel
outliers in x3 / x4 / x5 which the input x2 does not explain.

x3_j = W_j · x2 + b_j, so mean(x3_j) = W_j · mean(x2) + b_j. Split the input channels into
x2's own outlier channels I and the rest. Row j is an OTC when x3_j is a channel outlier
and it stays one with I's contribution removed:
    | W_j[¬I] · mean(x2)[¬I] + b_j - mean(x3) | > m · std(x3)
i.e. the row itself (its weights on ordinary channels, or its bias) triggers the outlier.
"""
from __future__ import annotations

import torch

from ..probe import PointStats
from .channels import ChannelRule, channel_moments, outlier_mask


def outlier_triggering_channels(x_in: PointStats, x_out: PointStats, weight: torch.Tensor,
                                bias: torch.Tensor | None = None, rule: ChannelRule = ChannelRule()) -> list[int]:
    """weight: [out, in] (view of W), bias: [out] or None -> indices of OTC rows."""
    mean_in, std_in, _, tm_in, ts_in = channel_moments(x_in, rule)
    mean_out, std_out, _, tm_out, ts_out = channel_moments(x_out, rule)
    in_outliers = outlier_mask(mean_in, std_in, tm_in, ts_in, rule)  # [in]
    out_outliers = outlier_mask(mean_out, std_out, tm_out, ts_out, rule)  # [out]
    if not out_outliers.any():
        return []
    w = weight.detach().double()
    own = w[:, ~in_outliers] @ mean_in[~in_outliers]  # [out]
    if bias is not None:
        own = own + bias.detach().double()
    triggered = (own - tm_out).abs() > rule.m * ts_out
    return (out_outliers & triggered).nonzero().flatten().tolist()
