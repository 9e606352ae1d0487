"""Probe: streaming statistics at every sublayer point in one calibration pass."""
from .collect import MassiveRule, ProbeConfig, ProbeResult, Recorder, hooks_at_points, probe_model
from .stats import MassiveRecord, PointAccumulator, PointStats, median_abs, tensor_moments, topk_abs

__all__ = ["MassiveRecord", "MassiveRule", "PointAccumulator", "PointStats", "ProbeConfig", "ProbeResult", "Recorder", "hooks_at_points",
           "median_abs", "probe_model", "tensor_moments", "topk_abs"]
