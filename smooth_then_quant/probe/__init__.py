"""Probe: streaming statistics at every sublayer point in one calibration pass."""
from .probe import ProbeConfig, ProbeResult, hooks_at_points, probe
from .stats import MassiveRecord, PointAccumulator, PointStats, median_abs, tensor_moments, topk_abs

__all__ = ["ProbeConfig", "ProbeResult", "probe", "hooks_at_points", "PointStats", "PointAccumulator",
           "MassiveRecord", "median_abs", "topk_abs", "tensor_moments"]
