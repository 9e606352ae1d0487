"""Model-level fake quantization (W4A8 and friends) on the decoder layers' projections.

    rtn_weights_(model, WeightQuant(4, 64))                 # weights: RTN round trip in place
    attach_act_quant_(model, ActQuant(8, "per_tensor"), calibration_ids)   # A8 at every linear input

Activation quantizers are forward pre-hooks on each projection, registered after any smoothing
runtime hook, so they see the smoothed input. Static per-tensor ranges are the min/max of each
projection's input over the calibration windows. lm_head and embeddings stay in float (the usual
convention of W4A8 / W8A8 reports).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import dist
from ..arch import adapter_for, resident, walk
from .grid import rtn_grid, snap_, weight_view
from .keep import GRID_CODES
from .rtn import ActQuant, WeightQuant, fake_quant_act, fake_quant_weight

_ATTR = "_smooth_then_quant_act_quant"
_STATE = "_smooth_then_quant_act_state"  # (ActQuant, static ranges or None): exported with the checkpoint


def linear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every projection in the decoder layers (fused c_attn once)."""
    return adapter_for(model).named_projections(model)


@torch.no_grad()
def rtn_weights_(model: nn.Module, q: WeightQuant) -> None:
    adapter = adapter_for(model)
    for li in range(len(adapter.decoder_layers(model))):
        with resident(model, li, keep=GRID_CODES):  # a streamed model keeps the rounded layer for its later walks
            for _, m in adapter.named_projections(model, layers=[li]):
                w = weight_view(m)
                grid = rtn_grid(w, q.bits, q.group_size, q.symmetric)
                w.copy_(fake_quant_weight(w, q))
                snap_(m, w, grid)  # float16 scales, as the exported checkpoint stores them


@torch.inference_mode()
def calibrate_ranges(model: nn.Module, ids: torch.Tensor, batch_size: int = 4, progress: bool = True
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per projection: (min, max) of its input over the windows ids: [N, T]."""
    ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name, m in linear_modules(model):
        def pre(_m, args, name=name):
            x = args[0].detach()
            lo, hi = x.amin().float(), x.amax().float()
            if name in ranges:
                lo, hi = torch.minimum(lo, ranges[name][0]), torch.maximum(hi, ranges[name][1])
            ranges[name] = (lo, hi)
        handles.append(m.register_forward_pre_hook(pre))
    try:
        walk(model, ids, batch_size, desc="A-quant: calibrating ranges", show=progress)
    finally:
        for h in handles:
            h.remove()
    names = sorted(ranges)  # under torchrun: min and max over every rank's windows (exact)
    lo = dist.amin(torch.stack([ranges[n][0] for n in names]))
    hi = dist.amax(torch.stack([ranges[n][1] for n in names]))
    return {n: (lo[i], hi[i]) for i, n in enumerate(names)}


def attach_act_quant_(model: nn.Module, q: ActQuant, ids: torch.Tensor | None = None, batch_size: int = 4,
                      progress: bool = True, ranges: dict | None = None) -> None:
    """Fake-quantize the input of every projection. A static granularity (per_tensor) needs
    calibration windows `ids` (or the `ranges` a checkpoint recorded)."""
    detach_act_quant_(model)
    if not q.kind.static:
        ranges = None
    elif ranges is None:
        if ids is None:
            raise ValueError("static per-tensor activation scales need calibration windows")
        ranges = calibrate_ranges(model, ids, batch_size, progress)
    handles = []
    for name, m in linear_modules(model):
        rng = None if ranges is None else ranges[name]

        def pre(_m, args, rng=rng):
            return (fake_quant_act(args[0], q, rng), *args[1:])
        handles.append(m.register_forward_pre_hook(pre))
    setattr(model, _ATTR, handles)
    setattr(model, _STATE, (q, ranges))


def act_quant_state(model: nn.Module) -> tuple[ActQuant, dict | None] | None:
    """The attached activation quantizer and its static ranges (None when A16)."""
    return getattr(model, _STATE, None)


def detach_act_quant_(model: nn.Module) -> None:
    for h in getattr(model, _ATTR, []):
        h.remove()
    for attr in (_ATTR, _STATE):
        if hasattr(model, attr):
            delattr(model, attr)
