"""Detectors: pure functions over probe statistics and weights, and `analyze` (probe + every detector)."""
from .analysis import Analysis, AnalysisConfig, analyze, detect_outliers
from .channels import ChannelRule, channel_outliers, gamma_outliers, outlier_mask
from .massive import (MassiveActivation, MassiveRule, cancellations, find_massive, massive_families,
                      summarize_massive)
from .otc import outlier_triggering_channels
from .streamed import analyze_checkpoint

__all__ = ["Analysis", "AnalysisConfig", "ChannelRule", "MassiveActivation", "MassiveRule", "analyze", "analyze_checkpoint", "cancellations",
           "channel_outliers", "detect_outliers", "find_massive", "gamma_outliers", "massive_families",
           "outlier_mask", "outlier_triggering_channels", "summarize_massive"]
