from .checkpoint import PLAN_FILE, export_smoothed, save_smoothed

__all__ = ["PLAN_FILE", "export_smoothed", "save_smoothed"]
