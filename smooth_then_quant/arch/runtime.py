"""Runtime interventions: hooks at a decoder layer's points that stay on the model.

An op is a frozen dataclass with `layer`, `point` and `__call__(tensor) -> tensor` (the smoothing
stage's MassiveRemoval is one). Its hook sits on the module of that point (forward pre-hook for an
input point such as y6, forward hook for an output point such as y7) and is prepended, so it runs
before any hook registered earlier or later: GPTQ calibration, activation fake-quant and
evaluation all see the intervened tensor.

The mechanism lives here, below every stage, because several stages carry these hooks without
knowing what they do: quantization keeps them across a model reload (the GPTQModel backend), the
evaluation cache fingerprints them, the export lists them and the loader re-attaches them.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Protocol

import torch
from torch import nn

from .registry import adapter_for

_ATTR = "_smooth_then_quant_runtime"


class RuntimeOp(Protocol):
    layer: int
    point: str

    def __call__(self, t: torch.Tensor) -> torch.Tensor: ...


class _Attachment:
    """One op's hook on its module, re-registered whenever the module at that path is replaced.

    Quantization libraries swap nn.Linear for their own modules (GPTQModel wraps every Linear
    during quantize()), which drops hooks registered on the old object. A pre-hook on the
    decoder layer, which they keep, checks the path before each layer forward and moves the
    hook to the new module.
    """

    def __init__(self, layer: nn.Module, path: str, side: str, op: RuntimeOp):
        self.layer, self.path, self.side, self.op = layer, path, side, op
        self.module, self.handle = None, None
        self.ensure()
        self.guard = layer.register_forward_pre_hook(lambda *_: self.ensure(), prepend=True)

    def ensure(self) -> None:
        module = self.layer.get_submodule(self.path)
        if module is self.module:
            return
        if self.handle is not None:
            self.handle.remove()
        op = self.op
        if self.side == "input":
            def pre(_m, args, kwargs):
                if args:
                    return (op(args[0]), *args[1:]), kwargs
                key = next(k for k, v in kwargs.items() if torch.is_tensor(v))
                return args, {**kwargs, key: op(kwargs[key])}
            self.handle = module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
        else:
            def post(_m, _args, out):
                if isinstance(out, tuple):
                    return (op(out[0]), *out[1:])
                return op(out)
            self.handle = module.register_forward_hook(post, prepend=True)
        self.module = module

    def remove(self) -> None:
        self.handle.remove()
        self.guard.remove()


def attach_runtime_(model: nn.Module, ops: list[RuntimeOp]) -> None:
    """Register the hooks of `ops` (replacing any attached before)."""
    detach_runtime_(model)
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    attached = []
    for op in ops:
        tap = adapter.points[op.point]
        attached.append(_Attachment(layers[op.layer], tap.module, tap.side, op))
    setattr(model, _ATTR, attached)


def detach_runtime_(model: nn.Module) -> list[RuntimeOp]:
    """Remove the hooks; returns the ops that were attached."""
    attached = getattr(model, _ATTR, [])
    for a in attached:
        a.remove()
    if hasattr(model, _ATTR):
        delattr(model, _ATTR)
    return [a.op for a in attached]


def runtime_ops(model: nn.Module) -> list[RuntimeOp]:
    return [a.op for a in getattr(model, _ATTR, [])]


def runtime_signature(model: nn.Module) -> str:
    """A stable text of the attached runtime interventions (part of a model state's identity)."""
    return json.dumps([{"op": type(op).__name__, **asdict(op)} for op in runtime_ops(model)], sort_keys=True)
