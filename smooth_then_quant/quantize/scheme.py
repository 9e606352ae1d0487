"""A quantization scheme (weights x activations) and the stage verb that applies it.

    report = quantize_(model, Scheme("W4A8", GPTQConfig(4, 128), ActQuant(8, "per_tensor")), calibration_ids)

Weights: GPTQ (`GPTQConfig`, built-in solver; see gptq.py) or round-to-nearest (`WeightQuant`).
Activations: None (A16) or an `ActQuant` fake-quantizer at every projection input, calibrated
after the weights are quantized, so GPTQ W4 + A8 combine. Everything stays float in memory
(fake quantization); the perplexity is that of the integer model up to float rounding.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from ..errors import SmoothQuantError
from .fake import attach_act_quant_, linear_modules, rtn_weights_, weight_view
from .gptq import GPTQConfig, gptq_
from .rtn import ActQuant, WeightQuant, uneven_groups


@dataclass(frozen=True)
class Scheme:
    name: str
    weights: GPTQConfig | WeightQuant
    activations: ActQuant | None = None

    @property
    def method(self) -> str:
        return "gptq" if isinstance(self.weights, GPTQConfig) else "rtn"

    def describe(self) -> str:
        w = self.weights
        wq = (f"{self.method.upper()} int{w.bits} " + ("per-channel" if w.group_size == -1 else f"g{w.group_size}")
              + (" sym" if w.symmetric else " asym"))
        if isinstance(w, GPTQConfig) and w.act_order != "off":
            wq += f" act-order {w.act_order}"
        if isinstance(w, GPTQConfig) and w.backend != "builtin":
            wq += f" ({w.backend})"
        a = self.activations
        aq = "A16" if a is None else (f"A{a.bits} " + ("per-token dynamic" if a.granularity == "per_token"
                                                       else "per-tensor static"))
        return f"{wq}, {aq}"

    def to_dict(self) -> dict:
        w = {k: v for k, v in asdict(self.weights).items() if k not in ("progress", "batch_size", "block_size")}
        return {"name": self.name, "method": self.method, "weights": w,
                "activations": None if self.activations is None else asdict(self.activations),
                "description": self.describe()}


def preset_schemes(group_size: int = 128, gptq: GPTQConfig = GPTQConfig()) -> tuple[Scheme, ...]:
    """The table's columns: W4A16 GPTQ, W8A8 (GPTQ int8 per-channel + int8 per-token dynamic, the
    SmoothQuant / llm-compressor W8A8), W4A8 (GPTQ int4 + int8 per-tensor static, the hard case)."""
    w4 = replace(gptq, bits=4, group_size=group_size)
    return (Scheme("W4A16", w4),
            Scheme("W8A8", replace(gptq, bits=8, group_size=-1), ActQuant(8, "per_token")),
            Scheme("W4A8", w4, ActQuant(8, "per_tensor")))


def weight_key(scheme: Scheme) -> tuple:
    """Schemes with equal keys quantize the weights identically (the quantized weights are reused)."""
    return (scheme.method, *(v for k, v in sorted(asdict(scheme.weights).items()) if k != "progress"))


@torch.no_grad()
def quantize_weights_(model: nn.Module, weights: GPTQConfig | WeightQuant, ids: torch.Tensor, tokenizer=None
                      ) -> dict:
    t0 = time.perf_counter()
    uneven = {n: uneven_groups(weight_view(m).shape[1], weights.group_size) for n, m in linear_modules(model)}
    if isinstance(weights, GPTQConfig) and weights.backend == "gptqmodel":
        from .gptqmodel import gptqmodel_

        if tokenizer is None:
            raise SmoothQuantError("the gptqmodel backend writes the model to disk for GPTQModel: pass the tokenizer")
        rep = gptqmodel_(model, tokenizer, ids, weights)
    elif isinstance(weights, GPTQConfig):
        rep = gptq_(model, ids, weights)
        rep.pop("modules")
    else:
        rtn_weights_(model, weights)
        rep = {}
    rep["seconds"] = round(time.perf_counter() - t0, 1)
    short = sorted({v for v in uneven.values() if v})
    if short:
        rep["uneven_groups"] = (f"{sum(1 for v in uneven.values() if v)} of {len(uneven)} projections have a last "
                                f"group of {'/'.join(map(str, short))} columns (group_size {weights.group_size} does not "
                                "divide their width); GPTQ-format kernels that need even groups will refuse them.")
    return rep


def quantize_(model: nn.Module, scheme: Scheme, ids: torch.Tensor, *, weights_done: bool = False,
              tokenizer=None, progress: bool = True) -> dict:
    """Apply `scheme` in place: weights (unless `weights_done`, i.e. already quantized with the same
    weight config), then activation quantizers calibrated on `ids` [N, T]. Returns a report.
    `tokenizer` is needed only by the gptqmodel backend (it loads the model from disk)."""
    rep = {"scheme": scheme.to_dict()}
    if not weights_done:
        rep["weights"] = quantize_weights_(model, scheme.weights, ids, tokenizer)
    if scheme.activations is not None:
        attach_act_quant_(model, scheme.activations, ids, progress=progress)
    return rep
