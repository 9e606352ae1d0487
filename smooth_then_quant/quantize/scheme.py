"""A quantization scheme (weights x activations) and the stage verb that applies it.

    report = quantize_(model, Scheme("W4A8", GPTQConfig(4, 128), ActQuant(8, "per_tensor")), calibration_ids)

Weights: GPTQ (`GPTQConfig`, built-in solver; see gptq.py) or round-to-nearest (`WeightQuant`).
Activations: None (A16) or an `ActQuant` fake-quantizer at every projection input, calibrated
after the weights are quantized, so GPTQ W4 + A8 combine. Everything stays float in memory
(fake quantization); the perplexity is that of the integer model up to float rounding.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import SerializeAsAny, field_validator
from torch import nn

from ..arch import is_streamed
from ..errors import SmoothQuantError
from ..schema import Config
from .fake import attach_act_quant_, linear_modules, rtn_weights_, weight_view
from .gptq import GPTQConfig, gptq_
from .gptqmodel import gptqmodel_
from .rtn import ActQuant, WeightQuant, uneven_groups


# ---- weight methods: a registry, so a new one is one registration ----------------------------------
@dataclass(frozen=True)
class WeightMethod:
    name: str  # weights.method
    config: type[Config]  # its schema (a Config with `method`, `bits`, `group_size`, `symmetric`, `describe()`)
    # (model, config, calibration ids [N, T], batch_size, backend, tokenizer) -> report; quantizes in place
    quantize: Callable[..., dict]


WEIGHT_METHODS: dict[str, WeightMethod] = {}
GPTQ_BACKENDS = ("builtin", "gptqmodel")  # builtin: faster on CPU, same PPL (bench/); gptqmodel: GPTQModel


def register_weight_method(m: WeightMethod) -> WeightMethod:
    WEIGHT_METHODS[m.name] = m
    return m


def _gptq(model, cfg: GPTQConfig, ids, batch_size: int, backend: str, tokenizer) -> dict:
    if backend == "gptqmodel":
        if is_streamed(model):
            raise SmoothQuantError("the gptqmodel backend quantizes a whole model from disk: load it whole "
                                   "(load_model(..., stream=False)), or use the builtin backend, which streams")
        if tokenizer is None:
            raise SmoothQuantError("the gptqmodel backend writes the model to disk for GPTQModel: pass the tokenizer")
        return gptqmodel_(model, tokenizer, ids, cfg, batch_size=batch_size)
    if backend != "builtin":
        raise SmoothQuantError(f"GPTQ backend must be one of {', '.join(GPTQ_BACKENDS)} (got {backend!r}).")
    rep = gptq_(model, ids, cfg, batch_size=batch_size)
    rep.pop("modules")
    return rep


def _rtn(model, cfg: WeightQuant, ids, batch_size: int, backend: str, tokenizer) -> dict:
    rtn_weights_(model, cfg)
    return {}


register_weight_method(WeightMethod("gptq", GPTQConfig, _gptq))
register_weight_method(WeightMethod("rtn", WeightQuant, _rtn))


class Scheme(Config):
    """A column of the table: weights (a registered method) x activations (None: A16)."""
    name: str = ""  # in a recipe: the key under quantization.schemes
    weights: SerializeAsAny[Config] = GPTQConfig()
    activations: ActQuant | None = None

    @field_validator("weights", mode="before")
    @classmethod
    def _method(cls, v):
        if isinstance(v, dict):
            method = v.get("method", "gptq")
            if method not in WEIGHT_METHODS:
                raise ValueError(f"unknown weights.method {method!r}; use one of {', '.join(WEIGHT_METHODS)}")
            return WEIGHT_METHODS[method].config.model_validate(v)
        if not any(isinstance(v, m.config) for m in WEIGHT_METHODS.values()):
            raise ValueError(f"weights must be one of {', '.join(m.config.__name__ for m in WEIGHT_METHODS.values())}")
        return v

    @property
    def method(self) -> str:
        return self.weights.method

    @classmethod
    def child_type(cls, key: str, value=None):
        if key == "weights":  # the keys of the method the user chose
            method = value.get("method", "gptq") if isinstance(value, dict) else "gptq"
            return WEIGHT_METHODS[method].config if method in WEIGHT_METHODS else None
        return super().child_type(key, value)

    def describe(self) -> str:
        return f"{self.weights.describe()}, {'A16' if self.activations is None else self.activations.describe()}"

    def to_dict(self) -> dict:
        return {"name": self.name, "method": self.method,
                "weights": self.weights.model_dump(exclude={"method", "block_size"}),
                "activations": None if self.activations is None else self.activations.model_dump(),
                "description": self.describe()}


def preset_schemes(group_size: int = 128, gptq: GPTQConfig = GPTQConfig()) -> tuple[Scheme, ...]:
    """The table's columns: W4A16 GPTQ, W8A8 (GPTQ int8 per-channel + int8 per-token dynamic, the
    SmoothQuant / llm-compressor W8A8), W4A8 (GPTQ int4 + int8 per-tensor static, the hard case)."""
    w4 = gptq.replace(bits=4, group_size=group_size)
    return (Scheme("W4A16", w4),
            Scheme("W8A8", gptq.replace(bits=8, group_size=-1), ActQuant(8, "per_token")),
            Scheme("W4A8", w4, ActQuant(8, "per_tensor")))


def weight_key(scheme: Scheme) -> tuple:
    """Schemes with equal keys quantize the weights identically (the quantized weights are reused)."""
    return (scheme.method, *sorted(scheme.weights.model_dump().items()))


@torch.no_grad()
def quantize_weights_(model: nn.Module, weights: Config, ids: torch.Tensor, tokenizer=None, *, batch_size: int = 1,
                      backend: str = "builtin") -> dict:
    t0 = time.perf_counter()
    uneven = {n: uneven_groups(weight_view(m).shape[1], weights.group_size) for n, m in linear_modules(model)}
    rep = WEIGHT_METHODS[weights.method].quantize(model, weights, ids, batch_size, backend, tokenizer)
    rep["seconds"] = round(time.perf_counter() - t0, 1)
    short = sorted({v for v in uneven.values() if v})
    if short:
        rep["uneven_groups"] = (f"{sum(1 for v in uneven.values() if v)} of {len(uneven)} projections have a last "
                                f"group of {'/'.join(map(str, short))} columns (group_size {weights.group_size} does not "
                                "divide their width); GPTQ-format kernels that need even groups will refuse them.")
    return rep


def quantize_(model: nn.Module, scheme: Scheme, ids: torch.Tensor, *, weights_done: bool = False,
              tokenizer=None, progress: bool = True, batch_size: int = 1, backend: str = "builtin") -> dict:
    """Apply `scheme` in place: weights (unless `weights_done`, i.e. already quantized with the same
    weight config), then activation quantizers calibrated on `ids` [N, T]. Returns a report.
    `batch_size`: calibration windows per GPTQ layer forward (1: least memory, and fastest on CPU here);
    `backend`: builtin | gptqmodel (which needs the `tokenizer`: it loads the model from disk)."""
    rep = {"scheme": scheme.to_dict()}
    if not weights_done:
        rep["weights"] = quantize_weights_(model, scheme.weights, ids, tokenizer, batch_size=batch_size,
                                           backend=backend)
    if scheme.activations is not None:
        attach_act_quant_(model, scheme.activations, ids, progress=progress)
    return rep
