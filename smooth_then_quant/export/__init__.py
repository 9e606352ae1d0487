"""Export: the smoothed float checkpoint, quantized checkpoints in registered formats, Hub upload,
and the readers load_model uses on them."""
from .formats import ExportFormat, format_names, get_format, register_format, unregister_format
from .formats import compressed_tensors as _compressed_tensors  # noqa: F401  (registers itself)
from .formats import gptq as _gptq  # noqa: F401  (registers itself)
from .checkpoint import MAX_SHARD_BYTES, PLAN_FILE, export_smoothed, save_smoothed
from .quantized import ACT_FILE, check_quantized, export_quantized, save_quantized
from . import reload as _reload  # noqa: F401  (registers the folder readers with load_model)

__all__ = ["ACT_FILE", "MAX_SHARD_BYTES", "PLAN_FILE", "ExportFormat", "check_quantized", "export_quantized", "export_smoothed", "format_names",
           "get_format", "register_format", "save_quantized", "save_smoothed", "unregister_format"]
