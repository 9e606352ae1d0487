"""Round-to-nearest fake quantization: the quantize -> dequantize round trip in float.

Weights are quantized along the input dimension (per output row, optionally in groups of
`group_size` input channels); activations per token (dynamic) or per tensor (a static scale
fixed on calibration data). Pure functions; the model-level fake-quantizer builds on them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field, field_validator

from ..schema import Config


def _group_size(v: int) -> int:
    if v == 0 or v < -1:
        raise ValueError("group_size must be -1 (per channel) or a positive group width such as 64 or 128")
    if v > 1 << 20:
        raise ValueError("group_size is wider than any projection (2^20 inputs); use -1 for one group per row")
    return v


GroupSize = Annotated[int, AfterValidator(_group_size)]  # -1: one scale per output row; uneven last groups handled


class WeightQuant(Config):
    """`weights: {method: rtn}`: round-to-nearest weights."""
    bits: int = Field(4, ge=2, le=8)
    group_size: GroupSize = 128
    symmetric: bool = True
    method: Literal["rtn"] = "rtn"

    def describe(self) -> str:
        return (f"RTN int{self.bits} " + ("per-channel" if self.group_size == -1 else f"g{self.group_size}")
                + (" sym" if self.symmetric else " asym"))


# ---- activation granularities: a registry, so a new one is one registration ------------------------
@dataclass(frozen=True)
class Granularity:
    name: str  # activations.granularity
    static: bool  # True: ranges calibrated once on calibration windows; False: computed per call
    label: str  # for descriptions: "per-token dynamic"
    # (x float [..., C], calibrated (lo, hi) or None) -> (lo, hi) broadcastable to x
    ranges: Callable[[torch.Tensor, tuple | None], tuple[torch.Tensor, torch.Tensor]]


GRANULARITIES: dict[str, Granularity] = {}


def register_granularity(g: Granularity) -> Granularity:
    GRANULARITIES[g.name] = g
    return g


register_granularity(Granularity("per_token", False, "per-token dynamic",
                                 lambda x, _static: (x.amin(-1, keepdim=True), x.amax(-1, keepdim=True))))
register_granularity(Granularity("per_tensor", True, "per-tensor static",
                                 lambda x, static: static if static is not None else (x.amin(), x.amax())))


class ActQuant(Config):
    """`activations:`: int fake quantization of every projection input."""
    bits: int = Field(8, ge=2, le=16)
    granularity: str = "per_tensor"  # a registered Granularity: per_token (dynamic) | per_tensor (static)
    symmetric: bool = True

    @field_validator("granularity")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in GRANULARITIES:
            raise ValueError(f"activation granularity must be one of {', '.join(GRANULARITIES)}")
        return v

    @property
    def kind(self) -> Granularity:
        return GRANULARITIES[self.granularity]

    def describe(self) -> str:
        return f"A{self.bits} {self.kind.label}"


def scale_zero(bits: int, symmetric: bool, amin: torch.Tensor, amax: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ranges [amin, amax] (widened to hold 0) -> the grid's scale and unsigned zero point
    (None for a symmetric grid). The export writes the same numbers (export/formats/compressed_tensors.py)."""
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
    lo, hi = q.kind.ranges(xf, static_range)
    return _round_trip(xf, q.bits, q.symmetric, lo, hi).to(x.dtype)
