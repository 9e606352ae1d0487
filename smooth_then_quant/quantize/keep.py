"""How a streamed model keeps a layer GPTQ or RTN quantized: as a GPTQ checkpoint holds it, the integer codes
of each weight on its grid (two 4-bit codes a byte) beside the layer's other parameters, instead of float32
weights (8x less scratch disk than float32 at 4 bits). The grid itself (scales, zeros, g_idx) stays on the
module (`quant_grid`), as it does in a resident model.

    resident(model, li, keep=GRID_CODES)   # arch.sequential: stored on offload, rebuilt on onload

A weight is rebuilt as `snap_` wrote it, `grid.dequantize(codes)` in float32 then the weight's dtype, so the
later walks, the evaluation and the exports see the same bits; a weight that is not exactly on its grid
(something changed it after rounding) is kept as it is.
"""
from __future__ import annotations

import torch
from torch import nn

from ..arch import adapter_for
from ..arch.sequential import Parameters
from .grid import grid_of, weight_view

_CODES = "::codes"  # "<module>.weight::codes": a gridded weight's codes, uint8 (packed in pairs when bits <= 4)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [out, in] in [0, 2^bits) -> uint8 [out, in] (bits > 4) or [out, ceil(in / 2)] (low nibble first)."""
    c = codes.to(torch.uint8)
    if bits > 4:
        return c
    if c.shape[1] % 2:
        c = torch.nn.functional.pad(c, (0, 1))
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_codes(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """pack_codes' inverse -> int32 [out, in_features]."""
    if bits > 4:
        return packed.to(torch.int32)
    pairs = torch.stack([packed & 0xF, packed >> 4], dim=-1)  # [out, in / 2, 2]
    return pairs.reshape(packed.shape[0], -1)[:, :in_features].to(torch.int32)


def _rebuilt(module: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """The module's weight from its codes, in its stored orientation and dtype (Conv1D stores [in, out])."""
    w = grid_of(module).dequantize(codes).to(module.weight.dtype)  # [out, in]
    return w if isinstance(module, nn.Linear) else w.t().contiguous()


class GridCodes:
    """arch.sequential.Keep for a quantized layer (see the module docstring)."""

    def pack(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        out, coded = {}, set()
        for path, module in layer.named_modules():
            grid = grid_of(module)
            if grid is None or getattr(module, "weight", None) is None:
                continue
            codes = grid.codes(weight_view(module))  # [out, in] int32
            if not torch.equal(_rebuilt(module, codes), module.weight):
                continue  # not exactly on its grid: kept as it is below
            out[f"{path}.weight{_CODES}"] = pack_codes(codes, grid.bits).cpu().contiguous()
            coded.add(f"{path}.weight")
        for name, p in layer.named_parameters():
            if name not in coded:
                out[name] = p.detach().cpu().contiguous()
        return out

    def unpack_(self, layer: nn.Module, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        rebuilt = {}
        for name, t in tensors.items():
            if name.endswith(_CODES):
                name = name.removesuffix(_CODES)
                module = layer.get_submodule(name.rpartition(".")[0])
                grid = grid_of(module)
                t = _rebuilt(module, unpack_codes(t.to(grid.scale.device), grid.bits, grid.g_idx.numel()))
            rebuilt[name] = t
        Parameters().unpack_(layer, rebuilt, device)


GRID_CODES = GridCodes()


def kept_bytes(model: nn.Module, bits: int) -> int:
    """About the scratch bytes of one quantized state of a streamed `model` (its parameters may be on meta):
    every projection as codes, every other decoder-layer parameter as it is, plus safetensors headers."""
    adapter = adapter_for(model)
    projections = {id(m.weight) for _, m in adapter.named_projections(model)}
    total = 0
    for layer in adapter.decoder_layers(model):
        for p in layer.parameters():
            total += (p.numel() * (1 if bits > 4 else 0.5)) if id(p) in projections else p.numel() * p.element_size()
            total += 200  # its entry in the file's header
    return int(total)
