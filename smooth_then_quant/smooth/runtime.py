"""Runtime interventions: the paper's TMA removal (§3.3) as a hook that stays on the model.

A massive activation depends on the input, so it cannot be folded into the weights: at every
forward pass the hook finds the elements of the tapped tensor that pass the MA rule
(|a| > abs_threshold and > ratio x median |a| of that sample's tensor) on the planned channels
and replaces them with that tensor's mean or with zero.

The hooks live on the module (forward pre-hook for an input point such as y6, forward hook for
an output point such as y7), prepended so they run before any other hook whenever it was
registered, so they act in every later pass: GPTQ calibration, activation fake-quant, evaluation. A checkpoint cannot carry them: `smoothing_plan.json` lists them and
`smooth_then_quant.load_model` re-attaches them on reload.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..arch import adapter_for

_ATTR = "_smooth_then_quant_runtime"


@dataclass(frozen=True)
class MassiveRemoval:
    layer: int
    point: str  # y6 (paper) or y7 (the Table 2 contrast)
    channels: tuple[int, ...] | None  # None: any channel
    replace_with: str  # mean | zero
    abs_threshold: float = 100.0
    ratio: float = 1000.0


def remove_massive(y: torch.Tensor, op: MassiveRemoval) -> torch.Tensor:
    """y: [B, T, C] (or [T, C]) -> same with the massive elements replaced, per sample."""
    x = y if y.dim() == 3 else y.reshape(1, -1, y.shape[-1])
    flat = x.detach().abs().reshape(x.shape[0], -1).float()  # [B, T*C]
    median = flat.kthvalue((flat.shape[1] + 1) // 2, dim=1).values  # [B]
    mask = (x.abs() > op.abs_threshold) & (x.abs() > op.ratio * median.to(x.dtype)[:, None, None])
    if op.channels is not None:
        keep = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
        keep[list(op.channels)] = True
        mask &= keep
    if not mask.any():
        return y
    fill = x.mean(dim=(1, 2), keepdim=True) if op.replace_with == "mean" else torch.zeros((), dtype=x.dtype)
    return torch.where(mask, fill.to(x.dtype), x).reshape(y.shape)


class _Attachment:
    """One op's hook on its module, re-registered whenever the module at that path is replaced.

    Quantization libraries swap nn.Linear for their own modules (GPTQModel wraps every Linear
    during quantize()), which drops hooks registered on the old object. A pre-hook on the
    decoder layer, which they keep, checks the path before each layer forward and moves the
    hook to the new module.
    """

    def __init__(self, layer: nn.Module, path: str, side: str, op: MassiveRemoval):
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
                    return (remove_massive(args[0], op), *args[1:]), kwargs
                key = next(k for k, v in kwargs.items() if torch.is_tensor(v))
                return args, {**kwargs, key: remove_massive(kwargs[key], op)}
            self.handle = module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
        else:
            def post(_m, _args, out):
                if isinstance(out, tuple):
                    return (remove_massive(out[0], op), *out[1:])
                return remove_massive(out, op)
            self.handle = module.register_forward_hook(post, prepend=True)
        self.module = module

    def remove(self) -> None:
        self.handle.remove()
        self.guard.remove()


def attach_runtime_(model: nn.Module, ops: list[MassiveRemoval]) -> None:
    """Register the hooks of `ops` (replacing any attached before)."""
    detach_runtime_(model)
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    attached = []
    for op in ops:
        tap = adapter.points[op.point]
        attached.append(_Attachment(layers[op.layer], tap.module, tap.side, op))
    setattr(model, _ATTR, attached)


def detach_runtime_(model: nn.Module) -> list[MassiveRemoval]:
    """Remove the hooks; returns the ops that were attached."""
    attached = getattr(model, _ATTR, [])
    for a in attached:
        a.remove()
    if hasattr(model, _ATTR):
        delattr(model, _ATTR)
    return [a.op for a in attached]


def runtime_ops(model: nn.Module) -> list[MassiveRemoval]:
    return [a.op for a in getattr(model, _ATTR, [])]


def runtime_signature(model: nn.Module) -> str:
    """A stable text of the attached runtime interventions (part of a model state's identity)."""
    return json.dumps([asdict(op) for op in runtime_ops(model)], sort_keys=True)
