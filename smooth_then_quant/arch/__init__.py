"""Architecture adapters: `adapter_for(model_or_config)` finds the family's data."""
from __future__ import annotations

from ..errors import SmoothQuantError
from .adapter import RESIDUAL_POINTS, ArchAdapter, NormSite, Proj, Tap, take_part
from .families import ADAPTERS, GEMMA3_TEXT, GPT2, LLAMA, QWEN2

_BY_TYPE = {t: a for a in ADAPTERS for t in a.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def adapter_for(model_or_config) -> ArchAdapter:
    """The adapter of a model (or its config); a clear error for anything unsupported."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        raise SmoothQuantError(
            f"unsupported architecture: model_type '{model_type}'. Supported model_types: "
            f"{', '.join(supported_model_types())}. Support for a new family is one adapter in "
            f"smooth_then_quant/arch/families.py naming where x1..x9 / y1..y7 live."
        ) from None


__all__ = ["ArchAdapter", "NormSite", "Proj", "Tap", "take_part", "adapter_for", "supported_model_types",
           "RESIDUAL_POINTS", "LLAMA", "QWEN2", "GPT2", "GEMMA3_TEXT"]
