"""What an architecture adapter is: data naming where the paper's points live.

Figure 2 of the paper names the activations of one decoder layer:

    attention block   x1 (block input, residual stream) -> norm -> x2 -> W_q, W_k, W_v -> x3, x4, x5
                      -> x6 = q·kᵀ (scores), x7 = softmax (probabilities): inside the attention kernel
                         (probe/attention.py taps them at transformers' attention interface, not by a module hook)
                      -> x8 (input of W_o) -> x9 (output of W_o) -> + residual
    gated MLP         y1 (block input) -> norm -> y2 -> W_gate -> y3, W_up -> y4, act(y3) -> y5
                      -> y6 = y5 * y4 (input of W_down) -> y7 (output of W_down) -> + residual
    plain MLP (GPT-2) y1 -> norm -> y2 -> W_fc -> y3 -> act -> y4 (input of W_proj) -> y5 -> + residual

Every other point is a module's input or output (a `Tap`), so one forward hook reads it.
Everything that differs between families is in the `ArchAdapter` values of
`families.py`; code elsewhere never looks at module names or classes.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Block = Literal["attention", "mlp"]

# Dataflow inside one layer: point -> the points it is computed from.
# ("prev", p) means point p of the previous layer; used to tell where a massive
# activation is *created* (no parent has it) and where it is only carried.
ATTENTION_FLOW: dict[str, tuple[str, ...]] = {
    "x1": ("prev:y1", "prev:mlp_out"),  # residual stream = previous y1 + previous MLP output
    "x2": ("x1",),
    "x3": ("x2",),
    "x4": ("x2",),
    "x5": ("x2",),
    "x8": ("x3", "x4", "x5"),
    "x9": ("x8",),
}
GATED_MLP_FLOW: dict[str, tuple[str, ...]] = {
    "y1": ("x1", "x9"),  # residual stream = x1 + attention output
    "y2": ("y1",),
    "y3": ("y2",),
    "y4": ("y2",),
    "y5": ("y3",),
    "y6": ("y5", "y4"),
    "y7": ("y6",),
}
PLAIN_MLP_FLOW: dict[str, tuple[str, ...]] = {
    "y1": ("x1", "x9"),
    "y2": ("y1",),
    "y3": ("y2",),
    "y4": ("y3",),
    "y5": ("y4",),
}
RESIDUAL_POINTS = ("x1", "y1")


@dataclass(frozen=True)
class Tap:
    """One activation point: the input or output of a module inside a decoder layer.

    `part=(i, n)` keeps the i-th of n equal slices of the last dimension
    (GPT-2's fused c_attn output holds q, k and v side by side).
    """

    module: str
    side: Literal["input", "output"]
    part: tuple[int, int] | None = None


@dataclass(frozen=True)
class Proj:
    """A linear projection inside a decoder layer, seen as W: [out, in].

    `transposed` marks GPT-2's Conv1D, whose weight is stored [in, out];
    `part=(i, n)` keeps the i-th of n equal blocks of output channels (fused c_attn).
    """

    module: str
    part: tuple[int, int] | None = None
    transposed: bool = False


@dataclass(frozen=True)
class NormSite:
    """A normalization whose output is read by projections: the γ -> W pair smoothing needs.

    The norm computes  out = standardize(in) * (gamma_offset + γ) (+ β),
    so `gamma_offset` is 1.0 for Gemma's x·(1+γ) RMSNorm and 0.0 elsewhere.
    """

    norm: str
    input_point: str
    output_point: str
    reads: tuple[Proj, ...]
    gamma_offset: float = 0.0


@dataclass(frozen=True)
class ArchAdapter:
    """Where the paper's points, norms and projections live in one model family."""

    family: str
    model_types: tuple[str, ...]
    layers: str  # path of the ModuleList of decoder layers, from model.base_model
    points: Mapping[str, Tap]
    attn_norm: NormSite
    mlp_norm: NormSite
    qkv: Mapping[str, Proj]  # output point (x3/x4/x5) -> projection computing it
    mlp_in: tuple[Proj, ...]  # projections reading y2 (gate, up) or (fc,)
    mlp_out: Proj  # the down projection (reads the massive-activation point)
    massive_point: str  # input of the down projection: y6 (gated) or y4 (plain)
    mlp_out_point: str  # output of the down projection: y7 or y5
    # The MLP input projection whose output row c multiplies y6 channel c linearly
    # (up_proj: y6 = act(gate)·up). None for a plain MLP, where y4 = act(fc) is not linear in
    # W_fc, so no exact y6 migration exists (GPT-2).
    mlp_linear_in: Proj | None = None
    post_norms: tuple[str, ...] = ()  # norms applied to a branch output before the residual add
    final_norm: str = "norm"  # the norm after the last decoder layer, from model.base_model
    notes: str = ""
    flow: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    # ---- derived views -------------------------------------------------------------
    @property
    def point_names(self) -> tuple[str, ...]:
        """Mapped points in dataflow order."""
        return tuple(p for p in self.flow if p in self.points)

    @property
    def attention(self) -> str:
        """Path of the attention module inside a layer (x6 and x7 are computed in it): W_o's parent."""
        return self.points["x9"].module.rpartition(".")[0]

    def block_of(self, point: str) -> Block:
        return "attention" if point.startswith("x") else "mlp"

    def parents(self, point: str) -> tuple[tuple[int, str], ...]:
        """(layer offset, point) pairs that `point` is computed from."""
        out = []
        for p in self.flow[point]:
            if p.startswith("prev:"):
                name = p.split(":", 1)[1]
                out.append((-1, self.mlp_out_point if name == "mlp_out" else name))
            else:
                out.append((0, p))
        return tuple(out)

    def norm_sites(self) -> tuple[NormSite, ...]:
        return (self.attn_norm, self.mlp_norm)

    @property
    def linear_inputs(self) -> tuple[str, ...]:
        """The points that are inputs of projections: what activation quantization sees."""
        return (self.attn_norm.output_point, "x8", self.mlp_norm.output_point, self.massive_point)

    def projections(self) -> dict[str, Proj]:
        """Output point -> the projection computing it (x3..x5, y3/y4 or y3, and the down projection)."""
        out = dict(self.qkv)
        for proj in (*self.mlp_in, self.mlp_out):
            for point, tap in self.points.items():
                if (tap.module, tap.side, tap.part) == (proj.module, "output", proj.part):
                    out[point] = proj
        return out

    def modules(self, role: str) -> tuple[str, ...]:
        """Module paths inside a layer for a role: qkv | o | mlp_in | mlp_out (for PEFT targets)."""
        projs = {"qkv": tuple(self.qkv.values()), "mlp_in": self.mlp_in, "mlp_out": (self.mlp_out,)}
        if role == "o":
            return (self.points["x9"].module,)
        if role not in projs:
            raise ValueError(f"unknown role '{role}'; use qkv, o, mlp_in or mlp_out")
        return tuple(dict.fromkeys(p.module for p in projs[role]))

    # ---- module access -------------------------------------------------------------
    def named_projections(self, model: nn.Module, roles=("qkv", "o", "mlp_in", "mlp_out"),
                          layers: list[int] | None = None) -> list[tuple[str, nn.Module]]:
        """(qualified name, module) of the projections with these roles, in the given layers
        (None: all), each module once (GPT-2's fused c_attn serves q, k and v)."""
        names = {id(m): n for n, m in model.named_modules()}
        blocks = self.decoder_layers(model)
        out = {}
        for li in range(len(blocks)) if layers is None else layers:
            for role in roles:
                for path in self.modules(role):
                    m = blocks[li].get_submodule(path)
                    out[names[id(m)]] = m
        return list(out.items())

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.get_submodule(self.layers)

    def weight(self, layer: nn.Module, proj: Proj) -> torch.Tensor:
        """W as [out, in] (a view; no copy)."""
        w = layer.get_submodule(proj.module).weight
        w = w.t() if proj.transposed else w
        return _part(w, proj.part, dim=0)

    def bias(self, layer: nn.Module, proj: Proj) -> torch.Tensor | None:
        b = layer.get_submodule(proj.module).bias
        return None if b is None else _part(b, proj.part, dim=0)

    def gamma(self, layer: nn.Module, site: NormSite) -> torch.Tensor:
        """The effective per-channel rescaling factor (gamma_offset + γ): [C]."""
        return site.gamma_offset + layer.get_submodule(site.norm).weight.detach().float()

    def beta(self, layer: nn.Module, site: NormSite) -> torch.Tensor | None:
        b = getattr(layer.get_submodule(site.norm), "bias", None)
        return None if b is None else b.detach().float()


def _part(t: torch.Tensor, part: tuple[int, int] | None, dim: int) -> torch.Tensor:
    if part is None:
        return t
    i, n = part
    size = t.shape[dim] // n
    return t.narrow(dim, i * size, size)


def take_part(t: torch.Tensor, part: tuple[int, int] | None) -> torch.Tensor:
    """Slice the last dimension of an activation as a Tap's `part` says."""
    return _part(t, part, dim=-1)
