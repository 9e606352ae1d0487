"""Detectors: pure functions over probe statistics and weights."""
from .channels import ChannelRule, channel_outliers, gamma_outliers, outlier_mask
from .massive import (MassiveActivation, MassiveRule, cancellations, find_massive, massive_families,
                      summarize_massive)
from .otc import outlier_triggering_channels

__all__ = ["ChannelRule", "channel_outliers", "gamma_outliers", "outlier_mask", "MassiveActivation",
           "MassiveRule", "cancellations", "find_massive", "massive_families", "summarize_massive",
           "outlier_triggering_channels"]
