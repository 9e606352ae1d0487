"""The integer form of a quantized weight: what a GPTQ-format checkpoint stores.

    W[o, c] = scale[o, g_idx[c]] * (codes[o, c] - zero[o, g_idx[c]]),   codes in [0, 2^bits - 1]

Every projection quantized by `quantize_` (GPTQ or RTN) carries its `QuantGrid` as the module
attribute `quant_grid`. `snap_` rounds the scales to float16, as GPTQ checkpoints store them, and
rewrites the weight on that grid, so the model we evaluate is exactly the one we export.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

GRID_ATTR = "quant_grid"
_FP16_TINY = 2.0**-24  # the smallest float16 (subnormal): a scale never rounds to 0


def weight_view(module: nn.Module) -> torch.Tensor:
    """[out, in] view of a Linear or a Conv1D (GPT-2 stores [in, out])."""
    w = module.weight
    return w if isinstance(module, nn.Linear) else w.t()


@dataclass
class QuantGrid:
    bits: int
    group_size: int  # -1: one group per row
    symmetric: bool
    scale: torch.Tensor  # [out, G] float32
    zero: torch.Tensor  # [out, G] float32 holding integers
    g_idx: torch.Tensor  # [in] int32: the group of each input column

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def cpu(self) -> QuantGrid:
        """This grid with its tensors on the CPU (checkpoints are packed there)."""
        return QuantGrid(self.bits, self.group_size, self.symmetric, self.scale.cpu(), self.zero.cpu(), self.g_idx.cpu())

    def _expand(self) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.g_idx.long().to(self.scale.device)
        return self.scale[:, i], self.zero[:, i]  # [out, in] each

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """w: [out, in] on this grid -> integer codes [out, in] (int32)."""
        s, z = self._expand()
        return torch.clamp(torch.round(w.float() / s) + z, 0, self.maxq).to(torch.int32)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        s, z = self._expand()
        return s * (codes.float() - z)

    @property
    def act_order(self) -> bool:
        """True when groups do not follow the column order (GPTQ's desc_act)."""
        return bool((self.g_idx[1:] < self.g_idx[:-1]).any())


def natural_g_idx(in_features: int, group_size: int) -> torch.Tensor:
    g = in_features if group_size == -1 else group_size
    return (torch.arange(in_features) // g).to(torch.int32)  # on CPU: the index of a checkpoint's g_idx


def g_idx_from_order(perm: torch.Tensor | None, in_features: int, group_size: int) -> torch.Tensor:
    """Groups are formed in quantization order: column perm[p] belongs to group p // g."""
    natural = natural_g_idx(in_features, group_size)
    if perm is None:
        return natural
    g_idx = torch.empty_like(natural)
    g_idx[perm.cpu()] = natural
    return g_idx


def rtn_grid(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> QuantGrid:
    """The grid `fake_quant_weight` rounds to (same ranges, same clamp): w [out, in]."""
    out_f, in_f = w.shape
    g_idx = natural_g_idx(in_f, group_size)
    n = int(g_idx[-1]) + 1
    index = g_idx.long().to(w.device).expand(out_f, -1)
    lo = torch.full((out_f, n), float("inf"), device=w.device).scatter_reduce(1, index, w.float(), "amin")
    hi = torch.full((out_f, n), float("-inf"), device=w.device).scatter_reduce(1, index, w.float(), "amax")
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if symmetric:  # signed levels -2^(b-1) .. 2^(b-1)-1 = unsigned codes with zero 2^(b-1)
        scale = torch.maximum(lo.abs(), hi).clamp(min=1e-8) / (2 ** (bits - 1) - 1)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        scale = (hi - lo).clamp(min=1e-8) / (2**bits - 1)
        zero = torch.round(-lo / scale)
    return QuantGrid(bits, group_size, symmetric, scale, zero, g_idx)


@torch.no_grad()
def snap_(module: nn.Module, weight: torch.Tensor, grid: QuantGrid) -> None:
    """Store `grid` on `module` with float16 scales and rewrite `weight` ([out, in] view of the
    module's weight, already on the float32 grid) on it. A code never moves: the relative change
    of a scale is <= 2^-11, far below half a step for codes |q - zero| <= 2^(bits-1)."""
    codes = grid.codes(weight)
    grid.scale = grid.scale.clamp(min=_FP16_TINY).half().float()
    weight.copy_(grid.dequantize(codes).to(weight.dtype))
    if getattr(module, "bias", None) is not None:  # GPTQ checkpoints store biases in float16 too
        module.bias.copy_(module.bias.half().to(module.bias.dtype))
    setattr(module, GRID_ATTR, grid)


def grid_of(module: nn.Module) -> QuantGrid | None:
    return getattr(module, GRID_ATTR, None)
