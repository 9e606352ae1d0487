"""Round-to-nearest fake quantization: the quantize -> dequantize round trip in float.

Weights are quantized along the input dimension (per output row, optionally in groups of
`group_size` input channels); activations per token (dynamic) or per tensor (a static scale
fixed on calibration data). Pure functions; the model-level fake-quantizer builds on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import SmoothQuantError


@dataclass(frozen=True)
class WeightQuant:
    bits: int = 4
    group_size: int = 64  # -1: one scale per output row (per channel)
    symmetric: bool = True

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise SmoothQuantError(f"weight bits must be between 2 and 8 (got {self.bits}).")
        if self.group_size == 0 or self.group_size < -1:
            raise SmoothQuantError(f"group_size must be -1 (per channel) or positive (got {self.group_size}).")


@dataclass(frozen=True)
class ActQuant:
    bits: int = 8
    granularity: Literal["per_token", "per_tensor"] = "per_tensor"
    symmetric: bool = True

    def __post_init__(self):
        if not 2 <= self.bits <= 16:
            raise SmoothQuantError(f"activation bits must be between 2 and 16 (got {self.bits}).")
        if self.granularity not in ("per_token", "per_tensor"):
            raise SmoothQuantError(f"activation granularity must be per_token or per_tensor (got {self.granularity}).")


def scale_zero(bits: int, symmetric: bool, amin: torch.Tensor, amax: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ranges [amin, amax] (widened to hold 0) -> the grid's scale and unsigned zero point
    (None for a symmetric grid). The export writes the same numbers (export/compressed_format.py)."""
    amin, amax = amin.clamp(max=0), amax.clamp(min=0)
    if symmetric:
        return torch.maximum(amax.abs(), amin.abs()).clamp(min=1e-8) / (2 ** (bits - 1) - 1), None
    scale = (amax - amin).clamp(min=1e-8) / (2**bits - 1)
    return scale, (-amin / scale).round()


def _round_trip(x: torch.Tensor, bits: int, symmetric: bool, amin: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Quantize x with ranges [amin, amax] (broadcastable to x) and dequantize."""
    scale, zero = scale_zero(bits, symmetric, amin, amax)
    if zero is None:
        qmax = 2 ** (bits - 1) - 1
        return (x / scale).round().clamp(-qmax - 1, qmax) * scale
    return ((x / scale).round() + zero).clamp(0, 2**bits - 1).sub(zero) * scale


def uneven_groups(in_features: int, group_size: int) -> int:
    """Width of the shorter last group when group_size does not divide in_features (0: even).
    Such layers are quantized with ceil(in / g) groups, the last one shorter, as GPTQ and
    GPTQModel do (g_idx = column // g); some fused kernels refuse them (the report says so)."""
    return 0 if group_size == -1 or in_features < group_size else in_features % group_size


def fake_quant_weight(w: torch.Tensor, q: WeightQuant) -> torch.Tensor:
    """w: [out, in] -> RTN round trip, same shape and dtype."""
    out_f, in_f = w.shape
    g = in_f if q.group_size == -1 else q.group_size
    pad = -in_f % g  # zero columns never change a range that always holds 0
    x = torch.nn.functional.pad(w.float(), (0, pad)).reshape(out_f, -1, g)  # [out, groups, g]
    y = _round_trip(x, q.bits, q.symmetric, x.amin(-1, keepdim=True), x.amax(-1, keepdim=True))
    return y.reshape(out_f, in_f + pad)[:, :in_f].to(w.dtype)


def act_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor (min, max) of an activation, for a static scale."""
    return x.amin().float(), x.amax().float()


def fake_quant_act(x: torch.Tensor, q: ActQuant, static_range: tuple[torch.Tensor, torch.Tensor] | None = None
                   ) -> torch.Tensor:
    """x: [..., C]. per_token: a range per row; per_tensor: `static_range` (calibrated) or x's own."""
    xf = x.float()
    if q.granularity == "per_token":
        lo, hi = xf.amin(-1, keepdim=True), xf.amax(-1, keepdim=True)
    else:
        lo, hi = static_range if static_range is not None else act_range(xf)
    return _round_trip(xf, q.bits, q.symmetric, lo, hi).to(x.dtype)
