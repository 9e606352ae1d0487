"""Load a quantized checkpoint into a float model whose projections hold the dequantized weights
(and, for symmetric grids, carry them): GPTQ v1 (ours, or any symmetric one, e.g. GPTQModel's) and
compressed-tensors int/pack-quantized (ours, or llm-compressor's), whose activation scheme comes
back as our A8 quantizer.

Why not `from_pretrained`: transformers runs GPTQ checkpoints through GPTQModel's kernels, which
on CPU compute in float16/bfloat16 and load every other tensor in that dtype too. Our fake
quantization is float32; to reproduce a reported perplexity exactly the integers and scales are
unpacked here (the tests check the result against GPTQModel's own dequantization).
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..arch import adapter_for
from ..errors import SmoothQuantError
from ..quantize.fake import attach_act_quant_, weight_view
from ..quantize.grid import GRID_ATTR, QuantGrid, natural_g_idx
from ..quantize.rtn import ActQuant

log = logging.getLogger(__name__)


def _qc(config) -> dict:
    qc = getattr(config, "quantization_config", None)
    return {} if qc is None else qc if isinstance(qc, dict) else qc.to_dict()


def quantized_format(config) -> str | None:
    """'gptq' | 'compressed-tensors' for checkpoints unpacked here; None for float checkpoints and
    other quantizations (transformers loads those itself)."""
    method = _qc(config).get("quant_method")
    return method if method in ("gptq", "compressed-tensors") else None


def gptq_settings(config) -> tuple[int, int, bool] | None:
    """(bits, group_size, sym) when config describes a GPTQ checkpoint (unpacked here); None for any
    other checkpoint (float, or another quantization transformers loads itself)."""
    qc = _qc(config)
    if qc.get("quant_method") != "gptq":
        return None
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    if fmt != "gptq" or qc.get("bits") not in (2, 4, 8) or not qc.get("sym", True):
        raise SmoothQuantError(f"GPTQ checkpoint with format {fmt}, bits {qc.get('bits')}, sym {qc.get('sym')}: only "
                               "symmetric v1 (format gptq) with 2, 4 or 8 bits is unpacked here; load it with "
                               "transformers directly.")
    return int(qc["bits"]), int(qc["group_size"]), True


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            tensors.update({k: st.get_tensor(k) for k in st.keys()})
    if not tensors:
        raise SmoothQuantError(f"{folder} has no .safetensors weights.")
    return tensors


@torch.no_grad()
def load_gptq_projections_(model: nn.Module, tensors: dict[str, torch.Tensor], bits: int, group_size: int,
                           sym: bool, source: str = "checkpoint") -> None:
    """Every projection of `model` from its GPTQ tensors (popped from `tensors`): dequantized
    float weights, float16-exact biases, and the grid."""
    from ..export.gptq_format import from_gptq_tensors

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


CT_KEYS = ("weight", "weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "input_scale",
           "input_zero_point")


def ct_scheme(qc: dict, source: str):
    """(scheme, compressor) of a single-scheme int/pack-quantized compressed-tensors config."""
    from ..export.compressed_format import _library

    BaseCompressor, _, _, QuantizationScheme = _library()
    groups, fmt = qc.get("config_groups") or {}, qc.get("format")
    if len(groups) != 1 or fmt not in ("int-quantized", "pack-quantized", "naive-quantized"):
        raise SmoothQuantError(f"{source}: compressed-tensors format {fmt} with {len(groups)} config groups; only one "
                               "int/pack-quantized scheme is unpacked here. Load it with transformers directly.")
    return QuantizationScheme.model_validate(next(iter(groups.values()))), BaseCompressor.load_from_registry(fmt)


@torch.no_grad()
def load_compressed_projections_(model: nn.Module, tensors: dict[str, torch.Tensor], qc: dict,
                                 source: str = "checkpoint") -> None:
    """Every projection from its compressed-tensors tensors (popped), decompressed by the library."""
    scheme, compressor = ct_scheme(qc, source)
    w_args = scheme.weights
    for name, m in adapter_for(model).named_projections(model):
        parts = {k: tensors.pop(f"{name}.{k}") for k in CT_KEYS if f"{name}.{k}" in tensors}
        if "weight_scale" not in parts:
            raise SmoothQuantError(f"{source}: projection {name} has no weight_scale; not a compressed-tensors "
                                   "checkpoint of this model.")
        weight_view(m).copy_(compressor.decompress(parts, scheme)["weight"].to(m.weight.dtype))
        if w_args.symmetric:  # the grid, so a reloaded model can be exported again
            scale = parts["weight_scale"].float().reshape(weight_view(m).shape[0], -1)
            g = -1 if w_args.group_size is None else int(w_args.group_size)
            setattr(m, GRID_ATTR, QuantGrid(w_args.num_bits, g, True, scale, torch.full_like(
                scale, 2 ** (w_args.num_bits - 1)), natural_g_idx(weight_view(m).shape[1], g)))


@torch.no_grad()
def load_quantized_model(folder: Path, config, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tensors = read_safetensors(folder)
    if quantized_format(config) == "gptq":
        load_gptq_projections_(model, tensors, *gptq_settings(config), str(folder))
    else:
        load_compressed_projections_(model, tensors, _qc(config), str(folder))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    projections = {n for n, _ in adapter_for(model).named_projections(model)}
    missing = [k for k in missing if k.rpartition(".")[0] not in projections and k != "lm_head.weight"]
    if missing or unexpected:
        raise SmoothQuantError(f"{folder}: weights do not match the config (missing {missing[:3]}, unexpected "
                               f"{unexpected[:3]}).")
    model.tie_weights()
    return model.to(dtype)


def ct_act_quant(model: nn.Module, folder: Path, qc: dict) -> tuple[ActQuant, dict | None] | None:
    """A compressed-tensors scheme's input activations as our quantizer: ranges from input_scale
    (and input_zero_point) when static; the inverse of compressed_format.input_tensors."""
    args = ct_scheme(qc, str(folder))[0].input_activations
    if args is None:
        return None
    token = str(getattr(args.strategy, "value", args.strategy)) == "token"
    q = ActQuant(args.num_bits, "per_token" if token else "per_tensor", args.symmetric)
    if token or args.dynamic:
        return q, None
    found: dict[str, torch.Tensor] = {}  # every shard's input_scale / input_zero_point, nothing else
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            found.update({k: st.get_tensor(k).float().reshape(()) for k in st.keys()
                          if k.endswith((".input_scale", ".input_zero_point"))})
    ranges = {}
    for n, _ in adapter_for(model).named_projections(model):
        if f"{n}.input_scale" not in found:
            raise SmoothQuantError(f"{folder}: static activation scheme but {n} has no input_scale.")
        scale = found[f"{n}.input_scale"]
        if args.symmetric:
            hi = scale * (2 ** (args.num_bits - 1) - 1)
            ranges[n] = (-hi, hi)
        else:
            lo = -(found.get(f"{n}.input_zero_point", torch.tensor(0.0)) + 2 ** (args.num_bits - 1)) * scale
            ranges[n] = (lo, lo + scale * (2**args.num_bits - 1))
    return q, ranges


def reattach_act_quant_(model: nn.Module, folder: Path, config=None) -> dict:
    """A8 schemes: the exported activation quantizer (with its static ranges) back on the projections:
    from our activation_quant.json (exact), else from a compressed-tensors config."""
    from ..export.quantized import ACT_FILE

    path = folder / ACT_FILE
    if path.is_file():
        d = json.loads(path.read_text(encoding="utf-8"))
        q = ActQuant(d["bits"], d["granularity"], d["symmetric"])
        ranges = None if d["ranges"] is None else {k: (torch.tensor(lo), torch.tensor(hi))
                                                   for k, (lo, hi) in d["ranges"].items()}
    elif config is not None and quantized_format(config) == "compressed-tensors" and \
            (found := ct_act_quant(model, folder, _qc(config))) is not None:
        (q, ranges), path = found, folder / "config.json"
    else:
        return {}
    attach_act_quant_(model, q, ranges=ranges, progress=False)
    log.info("re-attached A%d %s activation quantization from %s", q.bits, q.granularity, path)
    return {"activation_quant": str(path)}
