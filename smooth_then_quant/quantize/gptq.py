"""GPTQ (Frantar et al., 2022), layer by layer on the model object the caller holds.

    report = gptq_(model, calibration_ids, GPTQWeights(bits=4, group_size=128))

Why a built-in beside GPTQModel (see bench/results/quantization.md for the evidence): GPTQModel
needs the model on disk, offloads finished layers to meta tensors (the model cannot run after
`quantize()` until it is saved and reloaded), and swaps every nn.Linear for its own modules. Here
the weights are quantized in place and dequantized to float (fake quantization): the smoothing
runtime hooks stay where they are and see the calibration data, A8 activation quantizers attach
afterwards (GPTQ W4 + A8), and the same config gives the same perplexity as GPTQModel
(within 2 %, measured) in less time and memory on CPU. The solver follows IST-DASLab's
`gptq.py` and GPTQModel's conventions (quantizer grid, damping 5 %, groups in quantization order,
a shorter last group when group_size does not divide the input width, "desc" and
"group_aware" activation orders) so checkpoints written by GPTQModel from the same config match.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from .. import dist
from ..arch import adapter_for, resident, trim_heap
from ..arch.sequential import input_kwargs, layer_inputs, layer_output, my_batches
from ..progress import bar
from ..schema import Config
from .fake import weight_view
from .grid import QuantGrid, g_idx_from_order, snap_
from .keep import GRID_CODES
from .rtn import GroupSize

ActOrder = Literal["off", "desc", "group_aware"]
ROLES_SEQUENTIAL = (("qkv",), ("o",), ("mlp_in",), ("mlp_out",))  # true-sequential subsets (GPTQModel's)
ROLES_TOGETHER = (("qkv", "o", "mlp_in", "mlp_out"),)


class GPTQWeights(Config):
    """`weights: {method: gptq}`: GPTQ weights (the built-in solver, or GPTQModel: quantization.gptq_backend)."""
    bits: Literal[2, 3, 4, 8] = 4
    group_size: GroupSize = 128  # -1: per output channel; a shorter last group if it does not divide the width
    symmetric: bool = True
    act_order: ActOrder = "off"  # off | desc (act-order / desc_act) | group_aware (GPTQModel's GAR)
    damp: float = Field(0.05, gt=0, lt=1)  # fraction of mean(diag H) added to the diagonal (GPTQModel's default)
    true_sequential: bool = True  # q/k/v -> o -> gate/up -> down, re-collecting inputs after each
    block_size: int = Field(128, ge=1, le=65536, description="columns per lazy update; wider than any projection past 65,536")  # columns per lazy batch update
    method: Literal["gptq"] = "gptq"

    @field_validator("act_order", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads an unquoted `off` as false

    @model_validator(mode="after")
    def _groups_for_gar(self):
        if self.act_order == "group_aware" and self.group_size == -1:
            raise ValueError("act_order group_aware needs groups; set group_size > 0 or act_order desc")
        return self

    def describe(self) -> str:
        return (f"GPTQ int{self.bits} " + ("per-channel" if self.group_size == -1 else f"g{self.group_size}")
                + (" sym" if self.symmetric else " asym")
                + (f" act-order {self.act_order}" if self.act_order != "off" else ""))


# ---- the solver: pure functions on one weight matrix ------------------------------------------
def grid_params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's min/max grid for rows of w: [out, g] -> scale, zero: [out, 1]. The range always
    holds 0; symmetric uses the mid-point zero (2^(b-1)) on the unsigned grid, as GPTQ formats do."""
    maxq = 2**bits - 1
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    if symmetric:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    empty = hi == lo
    lo, hi = torch.where(empty, lo - 1, lo), torch.where(empty, hi + 1, hi)
    scale = (hi - lo) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-lo / scale)
    return scale[:, None], zero[:, None]


def quant_dequant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)
    return scale * (q - zero)


def column_order(h_diag: torch.Tensor, group_size: int, act_order: ActOrder) -> torch.Tensor | None:
    """The order in which columns are quantized (None: natural). h_diag: [in]."""
    if act_order == "desc":
        return torch.argsort(h_diag, descending=True)
    if act_order == "group_aware":  # GAR: whole groups by their largest diag, columns inside by diag
        n_full = h_diag.numel() // group_size
        blocks = h_diag[: n_full * group_size].view(n_full, group_size)
        vals, local = torch.sort(blocks, dim=1, descending=True)
        groups = torch.argsort(vals[:, 0], descending=True, stable=True)
        perm = (local + torch.arange(n_full, device=h_diag.device)[:, None] * group_size)[groups].reshape(-1)
        return torch.cat([perm, torch.arange(n_full * group_size, h_diag.numel(), device=h_diag.device)])
    return None


def gptq_solve(w: torch.Tensor, h: torch.Tensor, cfg: GPTQWeights) -> tuple[torch.Tensor, torch.Tensor, QuantGrid]:
    """w: [out, in], h: [in, in] (2/N Σ xᵀx) -> (dequantized Q: [out, in], GPTQ's loss per row: [out],
    the grid Q lies on). Rows are independent given H, so projections sharing an input may be solved stacked."""
    return _gptq_solve_(w.float().clone(), h.clone(), cfg)


def _gptq_solve_(w: torch.Tensor, h: torch.Tensor, cfg: GPTQWeights) -> tuple[torch.Tensor, torch.Tensor, QuantGrid]:
    """gptq_solve on float32 w and h it may overwrite (no copies: the working memory is a few [in, in])."""
    out_f, in_f = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = column_order(torch.diag(h), cfg.group_size, cfg.act_order)
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    h.diagonal().add_(cfg.damp * torch.mean(torch.diag(h)))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # [in, in]
    del h
    q = torch.zeros_like(w)
    losses = torch.zeros(out_f, device=w.device)
    g = in_f if cfg.group_size == -1 else cfg.group_size
    scale = zero = None
    scales, zeros = [], []  # per group, in quantization order
    for i1 in range(0, in_f, cfg.block_size):
        i2 = min(i1 + cfg.block_size, in_f)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            c = i1 + i
            if c % g == 0:  # a new group: its grid from W as updated by the earlier blocks (as GPTQ does)
                scale, zero = grid_params(w[:, c: c + g], cfg.bits, cfg.symmetric)
                scales.append(scale)
                zeros.append(zero)
            col = w1[:, i]
            qc = quant_dequant(col[:, None], scale, zero, cfg.bits)[:, 0]
            q[:, c] = qc
            e = (col - qc) / hinv1[i, i]
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1)
            err1[:, i] = e
        losses += err1.pow(2).sum(1) / 2  # (w - q)² / d² / 2 per column, as GPTQ's Losses
        w[:, i2:].addmm_(err1, hinv[i1:i2, i2:], alpha=-1)
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    grid = QuantGrid(cfg.bits, cfg.group_size, cfg.symmetric, torch.cat(scales, 1), torch.cat(zeros, 1),
                     g_idx_from_order(perm, in_f, cfg.group_size))
    return q, losses, grid


class Hessian:
    """H = 2/N Σ x xᵀ over the N rows seen. Each batch's x xᵀ is computed in float32 (fast on every device; a batch
    is the same at any world size) and the sum accumulates in float64: the float32 H it gives does not depend on the
    order batches are added in, so torchrun's ranks, each summing its own batches, and one process summing them all
    get the same H (dist.py). Memory: the float64 sum and one float32 [in, in] product."""

    def __init__(self, width: int, device: torch.device | str = "cpu"):
        self.sum = torch.zeros(width, width, dtype=torch.float64, device=device)  # [in, in]
        self.n = 0

    def add(self, x: torch.Tensor) -> None:  # x: [..., in]
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.sum.add_(x.t() @ x)  # float32 product, float64 sum
        self.n += x.shape[0]

    @property
    def h(self) -> torch.Tensor:
        """[in, in] float32, as GPTQ solves with it."""
        return (self.sum * (2 / self.n)).float()

    def reduced_(self, owner: int) -> Hessian:
        """Under torchrun: every rank's sum and count, added on rank `owner` (the one that solves). -> self."""
        if dist.active():
            n = dist.sum64(torch.tensor([float(self.n)], device=self.sum.device))
            self.sum = dist.reduce_sum64(self.sum, owner)
            self.n = int(n.item())
        return self


# ---- the model-level verb ------------------------------------------------------------------------
class _Collected(Exception):
    """Raised once every input of a subset has been seen: the rest of the layer is not needed."""


def _advance_(layer: nn.Module, hidden: list[torch.Tensor], extra: list) -> None:
    """hidden[i] <- layer(hidden[i]), batch by batch (one batch of extra memory, not a second copy)."""
    for i, (args, kw) in enumerate(extra):
        hidden[i] = layer_output(layer(hidden[i], *args, **kw))


def _collect_hessians(layer: nn.Module, groups: list[list[str]], hidden: list[torch.Tensor], extra: list
                      ) -> list[Hessian]:
    """One H per group of module paths that read the same input (q/k/v; gate/up), from what the
    first module of the group receives (after any smoothing pre-hook, which runs first). Each
    batch stops as soon as every group has seen its input instead of running the whole layer."""
    hess = [None] * len(groups)
    seen: set[int] = set()

    def pre(gi: int, x: torch.Tensor):
        if hess[gi] is None:
            hess[gi] = Hessian(x.shape[-1], x.device)
        hess[gi].add(x)
        seen.add(gi)
        if len(seen) == len(groups):
            raise _Collected

    handles = [layer.get_submodule(paths[0]).register_forward_pre_hook(lambda _m, a, gi=gi: pre(gi, a[0]))
               for gi, paths in enumerate(groups)]
    try:
        for h, (args, kw) in zip(hidden, extra):
            seen.clear()
            try:
                layer(h, *args, **kw)
            except _Collected:
                pass
    finally:
        for h in handles:
            h.remove()
    return hess


class _Replay:
    """Once q/k/v/o are quantized the attention block's output no longer changes: record it on one
    pass, then serve it to the later passes (MLP subsets, the layer output) instead of recomputing."""

    def __init__(self, module: nn.Module):
        self.module, self.outputs, self.i = module, [], 0
        self.handle = module.register_forward_hook(lambda _m, _a, out: self.outputs.append(out))

    def __enter__(self):
        self.handle.remove()
        self.i = 0
        self.module.forward = self._serve
        return self

    def _serve(self, *args, **kwargs):
        self.i += 1
        return self.outputs[self.i - 1]

    def __exit__(self, *exc):
        del self.module.forward  # back to the class's forward


def _solve_group_(layer: nn.Module, paths: list[str], h: Hessian, cfg: GPTQWeights, li: int, owner: int = 0
                  ) -> list[dict]:
    """Projections reading the same input are solved stacked (rows are independent given H). Under torchrun rank
    `owner` holds the summed H and solves; the others receive its result (the same weights everywhere)."""
    ws = [weight_view(layer.get_submodule(p)) for p in paths]
    rows = [w.shape[0] for w in ws]
    solved = None
    if dist.rank() == owner:
        q, loss, grid = _gptq_solve_(torch.cat(ws).float(), h.h, cfg)  # a fresh stacked copy; H is not needed after
        solved = [q, loss, grid.scale, grid.zero, grid.g_idx]
    q, loss, scale, zero, g_idx = dist.broadcast_from(solved, owner)
    start = 0
    for p, w, qp in zip(paths, ws, q.split(rows)):
        w.copy_(qp.to(w.dtype))
        sl = slice(start, start + w.shape[0])
        snap_(layer.get_submodule(p), w, QuantGrid(cfg.bits, cfg.group_size, cfg.symmetric, scale[sl], zero[sl], g_idx))
        start += w.shape[0]
    return [{"layer": li, "module": p, "loss": float(lp.sum())} for p, lp in zip(paths, loss.split(rows))]


@torch.no_grad()
def gptq_(model: nn.Module, ids: torch.Tensor, cfg: GPTQWeights = GPTQWeights(), batch_size: int = 1) -> dict:
    """Quantize every decoder-layer projection of `model` with GPTQ, in place (weights become
    their dequantized values). ids: [N, T] calibration windows. Runtime smoothing hooks on the
    model are active while the Hessians are collected. Returns a per-module report."""
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    attention = adapter.modules("o")[0].rpartition(".")[0]  # the block that ends in W_o
    t0 = time.perf_counter()
    batches = my_batches(ids, batch_size)  # under torchrun this rank's share; the Hessians are summed over ranks
    hidden, extra = layer_inputs(model, layers, (input_kwargs(model, b) for _, b in batches))
    subsets = ROLES_SEQUENTIAL if cfg.true_sequential else ROLES_TOGETHER
    modules = []
    for li in bar(range(len(layers)), desc="GPTQ layers", unit="layer"):
        with resident(model, li, keep=GRID_CODES) as layer:  # a streamed model keeps the layer's codes
            modules += _quantize_layer_(layer, li, hidden, extra, cfg, subsets, attention, adapter,
                                        advance=li + 1 < len(layers))
        extra[li] = None  # free this layer's recorded arguments
        trim_heap()
    return {"config": cfg.model_dump(), "batch_size": batch_size, "seconds": round(time.perf_counter() - t0, 1),
            "calibration": list(ids.shape), "modules": modules}


def _quantize_layer_(layer: nn.Module, li: int, hidden: list[torch.Tensor], extra: list, cfg: GPTQWeights,
                     subsets, attention: str, adapter, advance: bool) -> list[dict]:
    """GPTQ on one resident decoder layer, subset by subset; then (advance) hidden <- the quantized layer's output."""
    modules, replay = [], None
    for roles in subsets:
        groups = [list(adapter.modules(r)) for r in roles]  # a role's modules share one input
        ctx = replay or nullcontext()
        if replay is None and cfg.true_sequential and "mlp_in" in roles:
            replay = _Replay(layer.get_submodule(attention))  # records during this pass, serves later ones
        with ctx:
            hess = _collect_hessians(layer, groups, hidden, extra[li])
        owners = dist.owners([h.sum.shape[0] ** 2 * len(paths) for paths, h in zip(groups, hess)])
        for paths, h, owner in zip(groups, hess, owners):
            modules += _solve_group_(layer, paths, h.reduced_(owner), cfg, li, owner)
        del hess
        trim_heap()
    if advance:  # the quantized layer's output feeds the next layer
        with replay or nullcontext():
            _advance_(layer, hidden, extra[li])
    if replay is not None:
        replay.handle.remove()
    return modules
