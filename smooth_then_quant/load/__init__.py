"""Load: models (hub, folder, GGUF, the embedded default) and calibration/evaluation text."""
from .config import CalibrationConfig, LoadConfig, ResourcesConfig, check_device, data_source, size_bytes
from .data import OFFLINE, EvalFormat, Text, WindowFormat, calibration_windows, load_text, window_prefix
from .model import (DEFAULT_MODEL, DEFAULT_MODEL_ID, LoadedModel, default_model_path, drop_gguf_marker_, load_model,
                    quantization_config, read_safetensors, register_folder_hook, register_quantized_loader,
                    unregister_quantized_loader)
from .stream import streamed_model

__all__ = ["CalibrationConfig", "LoadConfig", "ResourcesConfig", "size_bytes", "check_device", "data_source", "DEFAULT_MODEL", "DEFAULT_MODEL_ID", "OFFLINE", "LoadedModel", "Text", "calibration_windows",
           "default_model_path", "drop_gguf_marker_", "load_model", "load_text", "quantization_config",
           "read_safetensors", "register_folder_hook", "register_quantized_loader",
           "streamed_model", "unregister_quantized_loader", "EvalFormat", "WindowFormat", "window_prefix"]
