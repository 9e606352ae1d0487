"""The GPTQ v1 tensor layout (`quant_method: gptq`): what transformers (through GPTQModel),
GPTQModel itself and vLLM load. The codec lives with quantization because the GPTQModel backend
reads its own checkpoints back; the export format (export/formats/gptq.py) writes through it.

Per quantized projection, with per = 32 // bits codes in one int32 word:
    qweight [in / per, out]   int32  codes, input rows i*per .. i*per+per-1 packed low bits first
    qzeros  [G, out / per]    int32  zero points minus 1 (the v1 convention), packed along out
    scales  [G, out]          float16
    g_idx   [in]              int32  the group of each input column
    bias    [out]             float16 (when the projection has one)

Written by hand (40 lines) rather than through GPTQModel's `pack`: that needs its kernel classes
built per module, refuses 2-core machines without an environment variable, and we already hold
the integer codes. The tests load our files with transformers/GPTQModel and compare.
"""
from __future__ import annotations

import torch
from torch import nn

from ..arch import adapter_for
from ..errors import SmoothQuantError
from .fake import weight_view
from .grid import GRID_ATTR, QuantGrid, natural_g_idx

PACKABLE_BITS = (2, 4, 8)  # 3-bit codes straddle int32 words (a different layout); not written here


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes: [n, m] integers in [0, 2^bits) -> int32 [n * bits / 32, m], row r*per + j at bits*j."""
    per = 32 // bits
    n, m = codes.shape
    if n % per:
        raise SmoothQuantError(f"cannot pack {n} rows of {bits}-bit codes into int32 words ({per} per word)")
    c = codes.to(torch.int64).reshape(n // per, per, m)
    shifts = (torch.arange(per, dtype=torch.int64) * bits)[None, :, None]
    words = (c << shifts).sum(1)  # < 2^32: the fields do not overlap
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of pack_rows: int32 [n / per, m] -> int32 codes [n, m]."""
    per = 32 // bits
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = (torch.arange(per, dtype=torch.int64) * bits)[None, :, None]
    codes = (w[:, None, :] >> shifts) & (2**bits - 1)
    return codes.reshape(-1, words.shape[1]).to(torch.int32)


def check_packable(name: str, grid: QuantGrid, out_features: int) -> None:
    per = 32 // grid.bits if grid.bits in PACKABLE_BITS else 0
    if not per:
        raise SmoothQuantError(f"{name}: {grid.bits}-bit weights cannot be written in GPTQ format here "
                               f"(bits {PACKABLE_BITS} can); quantize with bits 4 or 8 to export.")
    if not grid.symmetric:
        raise SmoothQuantError(f"{name}: asymmetric grids are not exported (GPTQ v1 stores zero - 1, so a zero point "
                               "of 0 does not survive, and vLLM reads v1 only); set symmetric: true to export.")
    if out_features % per or grid.g_idx.numel() % per:
        raise SmoothQuantError(f"{name}: {grid.g_idx.numel()} x {out_features} does not pack into {per} codes "
                               "per int32 word.")


def to_gptq_tensors(weight: torch.Tensor, grid: QuantGrid, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """weight: [out, in] on `grid` -> the checkpoint tensors of one projection."""
    codes = grid.codes(weight)  # [out, in]
    zeros = (grid.zero.to(torch.int64) - 1).t()  # [G, out], v1: zero - 1
    t = {"qweight": pack_rows(codes.t(), grid.bits),
         "qzeros": pack_rows((zeros & (2**grid.bits - 1)).t(), grid.bits).t().contiguous(),
         "scales": grid.scale.t().contiguous().half(),
         "g_idx": grid.g_idx.to(torch.int32).clone()}  # its own storage (stacked solves share one)
    if bias is not None:
        t["bias"] = bias.detach().half()
    return t


def from_gptq_tensors(t: dict[str, torch.Tensor], bits: int, group_size: int, symmetric: bool
                      ) -> tuple[torch.Tensor, QuantGrid]:
    """The checkpoint tensors of one projection -> (weight [out, in] float32, its grid)."""
    codes = unpack_rows(t["qweight"], bits).t()  # [out, in]
    zero = (unpack_rows(t["qzeros"].t().contiguous(), bits).t() + 1).float().t()  # [out, G]
    grid = QuantGrid(bits, group_size, symmetric, t["scales"].float().t().contiguous(), zero.contiguous(),
                     t["g_idx"].to(torch.int32))
    return grid.dequantize(codes), grid


def gptq_settings(qc: dict, source: str) -> tuple[int, int, bool]:
    """(bits, group_size, sym) of a GPTQ `quantization_config` that is unpacked here."""
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    if fmt != "gptq" or qc.get("bits") not in PACKABLE_BITS or not qc.get("sym", True):
        raise SmoothQuantError(f"{source}: GPTQ checkpoint with format {fmt}, bits {qc.get('bits')}, sym "
                               f"{qc.get('sym')}: only symmetric v1 (format gptq) with 2, 4 or 8 bits is unpacked "
                               "here; load it with transformers directly.")
    return int(qc["bits"]), int(qc["group_size"]), True


@torch.no_grad()
def load_gptq_projections_(model: nn.Module, tensors: dict[str, torch.Tensor], bits: int, group_size: int,
                           sym: bool, source: str = "checkpoint") -> None:
    """Every projection of `model` from its GPTQ tensors (popped from `tensors`): dequantized
    float weights, float16-exact biases, and the grid."""
    for name, m in adapter_for(model).named_projections(model):
        parts = {k: tensors.pop(f"{name}.{k}") for k in ("qweight", "qzeros", "scales", "g_idx", "bias")
                 if f"{name}.{k}" in tensors}
        if "qweight" not in parts:
            raise SmoothQuantError(f"{source}: projection {name} has no qweight; not a GPTQ checkpoint of this model.")
        if "g_idx" not in parts:  # older checkpoints without act order omit it
            parts["g_idx"] = natural_g_idx(weight_view(m).shape[1], group_size)
        w, grid = from_gptq_tensors(parts, bits, group_size, sym)
        weight_view(m).copy_(w.to(m.weight.dtype))
        if "bias" in parts:
            m.bias.copy_(parts["bias"].to(m.bias.dtype))
        setattr(m, GRID_ATTR, grid)
