"""The quantized-checkpoint format registry: `export.quantized.format` -> ExportFormat.

A format is one module that builds an ExportFormat and calls `register_format`: how it writes a
quantized model's tensors and config, how it reads them back, what it cannot hold (checked before
any work), and how its model card says to load it. The writer, the loader (`load_model` on an
exported folder), recipe validation and the model card all look the format up here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...errors import SmoothQuantError
from ...load import register_quantized_loader, unregister_quantized_loader
from .common import load_quantized_model


@dataclass(frozen=True)
class ExportFormat:
    name: str  # export.quantized.format
    quant_method: str  # config.json quantization_config.quant_method it writes (and is reloaded by)
    # (model whose projections carry grids) -> config.json's quantization_config (no weight is read)
    quantization_config: Callable[[nn.Module], dict]
    # (model, qualified name, projection module (resident), quantization_config) -> {leaf: tensor} written as
    # NAME.leaf in place of the projection's `replaces` leaves; called layer by layer (exports stream)
    projection_tensors: Callable[[nn.Module, str, nn.Module, dict], dict[str, torch.Tensor]]
    # (float model, tensors (the projections' entries are popped), quantization_config, source) -> None
    load_projections: Callable[[nn.Module, dict[str, torch.Tensor], dict, str], None]
    # (scheme as in report.json: weights, activations) -> why this format cannot hold it, or None
    refuses: Callable[[dict], str | None]
    # (weights dict, activations quantized?) -> the model card's "how to load" lines
    how_to_load: Callable[[dict, bool], list[str]]
    # (model, folder, quantization_config) -> (ActQuant, ranges) the files declare, for foreign checkpoints
    act_quant: Callable[[nn.Module, Path, dict], tuple | None] | None = None
    # files besides config.json other loaders of the format read: name -> (quantization_config) -> text
    extra_files: Callable[[dict], dict[str, str]] | None = None
    replaces: tuple[str, ...] = ("weight",)  # the float leaves of a projection its tensors stand for
    # (scheme, the model's config) -> why this format cannot hold the scheme for this model (checked before
    # any weight is read: --dry-run too), or None
    refuses_config: Callable[[dict, object], str | None] | None = None


_FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Make `fmt` writable (export.quantized.format) and readable (load_model on a folder whose
    config.json says its quant_method)."""
    _FORMATS[fmt.name] = fmt
    register_quantized_loader(fmt.quant_method, lambda folder, config, dtype: load_quantized_model(
        fmt, folder, config, dtype))
    return fmt


def unregister_format(name: str) -> None:
    fmt = _FORMATS.pop(name)
    unregister_quantized_loader(fmt.quant_method)


def format_names() -> list[str]:
    return list(_FORMATS)


def get_format(name: str) -> ExportFormat:
    if name not in _FORMATS:
        raise SmoothQuantError(f"unknown quantized export format '{name}'; use one of {', '.join(_FORMATS)}.")
    return _FORMATS[name]


def format_for_method(quant_method: str) -> ExportFormat | None:
    return next((f for f in _FORMATS.values() if f.quant_method == quant_method), None)


def formats() -> dict[str, ExportFormat]:
    return dict(_FORMATS)
