"""Walking a model's decoder layers one at a time (GPTQ's layer-sequential calibration, the streamed analysis).

    hidden, extra = layer_inputs(model, layers, [{"input_ids": ids[:4]}, {"input_ids": ids[4:]}])
    for li, layer in enumerate(layers):
        for i, (args, kw) in enumerate(extra[li]):
            hidden[i] = layer_output(layer(hidden[i], *args, **kw))
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def layer_inputs(model: nn.Module, layers: nn.ModuleList, batches: Iterable[dict]
                 ) -> tuple[list[torch.Tensor], list[list[tuple[tuple, dict]]]]:
    """The hidden states entering layer 0 (one per batch) and every layer's other arguments (position
    embeddings, masks; per layer, since e.g. Gemma3 mixes sliding and global layers), from one pass of
    model.base_model per batch (its keyword arguments) in which every decoder layer is a pass-through."""
    hidden, extra = [], [[] for _ in layers]
    handles = []
    for li, layer in enumerate(layers):
        def pre(_m, args, kwargs, li=li):
            kw = dict(kwargs)
            h = args[0] if args else kw.pop("hidden_states")
            if li == 0:
                hidden.append(h.detach().clone())
            extra[li].append((args[1:], kw))
        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        layer.forward = lambda *args, **kwargs: args[0] if args else kwargs["hidden_states"]
    try:
        for kw in batches:
            model.base_model(**kw, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        for layer in layers:
            del layer.forward  # back to the class's forward
    return hidden, extra


def model_device(model: nn.Module) -> torch.device:
    """Where the model computes (its first parameter's device): every tensor fed to it goes there."""
    return next(model.parameters()).device


def layer_output(o) -> torch.Tensor:
    return o[0] if isinstance(o, tuple) else o
