"""Detectors: pure functions over probe statistics and weights, and `analyze` (probe + every detector)."""
from .attention import SinkRule, attention_outliers
from .analysis import Analysis, AnalysisConfig, analyze, analyze_checkpoint, detect_outliers
from .channels import ChannelRule, channel_outliers, gamma_outliers, outlier_mask
from .massive import (MassiveActivation, MassiveRule, cancellations, find_massive, massive_families,
                      summarize_massive)
from .otc import outlier_triggering_channels

__all__ = ["Analysis", "AnalysisConfig", "ChannelRule", "SinkRule", "attention_outliers", "MassiveActivation", "MassiveRule", "analyze", "analyze_checkpoint", "cancellations",
           "channel_outliers", "detect_outliers", "find_massive", "gamma_outliers", "massive_families",
           "outlier_mask", "outlier_triggering_channels", "summarize_massive"]
