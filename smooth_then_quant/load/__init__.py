"""Load: models (hub, folder, GGUF, the embedded default) and calibration/evaluation text."""
from .data import OFFLINE, Text, calibration_windows, load_text
from .model import DEFAULT_MODEL, LoadedModel, default_model_path, drop_gguf_marker_, load_model

__all__ = ["OFFLINE", "Text", "calibration_windows", "load_text", "DEFAULT_MODEL", "LoadedModel",
           "default_model_path", "drop_gguf_marker_", "load_model"]
