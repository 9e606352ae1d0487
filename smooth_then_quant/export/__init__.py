from .checkpoint import PLAN_FILE, export_smoothed, save_smoothed
from .quantized import ACT_FILE, export_quantized, save_quantized

__all__ = ["ACT_FILE", "PLAN_FILE", "export_quantized", "export_smoothed", "save_quantized", "save_smoothed"]
