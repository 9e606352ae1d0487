"""The family registry: `config.model_type` -> ArchAdapter.

A new family is one ArchAdapter (data: where x1..x9 / y1..y7 live) and one `register_adapter`
call; arch/families.py holds the built-in ones.
"""
from __future__ import annotations

from ..errors import SmoothQuantError
from .adapter import ArchAdapter

_BY_TYPE: dict[str, ArchAdapter] = {}


def register_adapter(adapter: ArchAdapter) -> ArchAdapter:
    for t in adapter.model_types:
        if t in _BY_TYPE and _BY_TYPE[t] is not adapter:
            raise ValueError(f"model_type '{t}' is already served by the {_BY_TYPE[t].family} adapter")
        _BY_TYPE[t] = adapter
    return adapter


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def adapter_for(model_or_config) -> ArchAdapter:
    """The adapter of a model (or its config); a clear error for anything unsupported."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    try:
        return _BY_TYPE[model_type]
    except (KeyError, TypeError):
        raise SmoothQuantError(
            f"unsupported architecture: model_type '{model_type}'. Supported model_types: "
            f"{', '.join(supported_model_types())}. Support for a new family is one adapter registered with "
            f"smooth_then_quant.arch.register_adapter (see arch/families.py) naming where x1..x9 / y1..y7 live."
        ) from None


def input_widths(config) -> list[int]:
    """The input widths of the decoder's projections, from the config alone (hidden, attention output, MLP):
    what a weight group size must divide. GPT-2 names them n_embd / n_inner."""
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else None)
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or (
        4 * hidden if hidden and config.model_type == "gpt2" else None)
    return sorted({w for w in (hidden, heads * head_dim if heads and head_dim else None, inner) if w})
