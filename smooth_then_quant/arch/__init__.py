"""Architecture adapters: `adapter_for(model_or_config)` finds the family's data."""
from .adapter import RESIDUAL_POINTS, ArchAdapter, NormSite, Proj, Tap, take_part
from .families import GEMMA3_TEXT, GPT2, LLAMA, QWEN2
from .registry import adapter_for, input_widths, register_adapter, supported_model_types
from .sequential import final_norm, is_streamed, model_device, resident, source_of, trim_heap, walk
from .runtime import attach_runtime_, detach_runtime_, runtime_ops, runtime_signature

__all__ = ["GEMMA3_TEXT", "GPT2", "LLAMA", "QWEN2", "RESIDUAL_POINTS", "ArchAdapter", "NormSite", "Proj", "Tap",
           "adapter_for", "attach_runtime_", "input_widths", "detach_runtime_", "final_norm", "is_streamed", "model_device",
           "resident", "source_of", "trim_heap", "walk", "register_adapter", "runtime_ops",
           "runtime_signature", "supported_model_types", "take_part"]
