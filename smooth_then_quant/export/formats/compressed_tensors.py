"""The compressed-tensors checkpoint format (`quant_method: compressed-tensors`): what llm-compressor
writes and vLLM serves with real int8 activations (W8A8 on its int8 GEMM kernels), and what
transformers loads with `compressed-tensors` installed.

Unlike GPTQ it can say how activations are quantized, so an A8 cell of the table is exported whole:

    weights       int-quantized (int8 tensor) when activations are quantized, pack-quantized (codes
                  in int32) for weight-only schemes, as the library itself chooses; one scale per
                  output channel (group_size -1) or per group; signed codes, a zero point only for
                  asymmetric grids
    activations   per_token -> strategy token, dynamic (vLLM computes the scale per row at run time)
                  per_tensor with calibrated ranges -> strategy tensor, static: `input_scale`
                  (and `input_zero_point` when asymmetric) per projection

The config and the packing come from the compressed-tensors library itself (QuantizationArgs,
QuantizationScheme, QuantizationConfig, and its registered compressors), so the files are the ones
llm-compressor would write for the same integers.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ...arch import adapter_for, input_widths
from ...errors import SmoothQuantError
from ...quantize.fake import act_quant_state, weight_view
from ...quantize.grid import GRID_ATTR, QuantGrid, grid_of, natural_g_idx
from ...quantize.rtn import ActQuant, scale_zero
from . import ExportFormat, register_format
from .common import uniform_grids

log = logging.getLogger(__name__)

SCHEME_NAME = "group_0"
STRATEGIES = {"per_token": "token", "per_tensor": "tensor"}  # our granularity -> its activation strategy


def _library():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError as e:
        raise SmoothQuantError("format compressed-tensors needs the compressed-tensors package: "
                               "pip install 'compressed-tensors>=0.17' (scripts/setup.sh installs it), "
                               "or export with format: gptq.") from e
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    return BaseCompressor, QuantizationArgs, QuantizationConfig, QuantizationScheme


def storage_format(scheme) -> str:
    """The library's own choice (compressed_tensors.compressors.format.infer_module_format, which
    transformers follows when it rebuilds the layout): int8 storage when activations are quantized,
    codes packed into int32 for weight-only schemes."""
    return "int-quantized" if scheme.input_activations is not None else "pack-quantized"


def check_grid(name: str, grid: QuantGrid, in_features: int) -> None:
    if grid.bits not in (2, 4, 8):
        raise SmoothQuantError(f"{name}: {grid.bits}-bit weights are not written in compressed-tensors here (2, 4 or "
                               "8 bits are); quantize with bits 4 or 8 to export.")
    if grid.act_order:
        raise SmoothQuantError(f"{name}: GPTQ act order (desc, group_aware) permutes the groups; compressed-tensors "
                               "would need its g_idx form, which is not written here. Use act_order: off, or "
                               "format: gptq.")
    if grid.group_size > 0 and in_features % grid.group_size:
        raise SmoothQuantError(f"{name}: group_size {grid.group_size} does not divide its {in_features} inputs; "
                               "compressed-tensors needs equal groups. Use a group_size that divides every width "
                               "(e.g. 64).")


def scheme_for(grid: QuantGrid, act: ActQuant | None, static: bool):
    """The QuantizationScheme of every projection: weights from the grid, inputs from the A8 quantizer."""
    _, QuantizationArgs, _, QuantizationScheme = _library()
    weights = QuantizationArgs(num_bits=grid.bits, type="int", symmetric=grid.symmetric, dynamic=False,
                               strategy="channel" if grid.group_size == -1 else "group",
                               group_size=None if grid.group_size == -1 else grid.group_size)
    inputs = None
    if act is not None:
        strategy = STRATEGIES[act.granularity]
        inputs = QuantizationArgs(num_bits=act.bits, type="int", symmetric=act.symmetric, strategy=strategy,
                                  dynamic=not act.kind.static or not static)
    return QuantizationScheme(targets=["Linear"], weights=weights, input_activations=inputs)


def quantization_config(scheme, ignore: list[str]) -> dict:
    """config.json `quantization_config`."""
    _, _, QuantizationConfig, _ = _library()
    fmt = storage_format(scheme)
    qc = QuantizationConfig(config_groups={SCHEME_NAME: scheme}, format=fmt, quantization_status="compressed",
                            ignore=ignore)
    return qc.model_dump(mode="json", exclude_none=False)


def weight_tensors(weight: torch.Tensor, grid: QuantGrid, scheme) -> dict[str, torch.Tensor]:
    """weight: [out, in] float on `grid` -> the compressed tensors of one projection (library packing).
    Signed codes: q = code - 2^(bits-1), zero point zero - 2^(bits-1) (0 for symmetric grids)."""
    BaseCompressor, *_ = _library()
    half = 2 ** (grid.bits - 1)
    state = {"weight": weight.detach().float(), "weight_scale": grid.scale.float().contiguous()}  # scale [out, G]
    if not grid.symmetric:
        state["weight_zero_point"] = (grid.zero - half).to(torch.int8)
    compressor = BaseCompressor.load_from_registry(storage_format(scheme))
    out = compressor.compress(state, scheme)
    back = compressor.decompress(out, scheme)["weight"]  # the library's own reading of what it wrote
    if not torch.equal(back.float(), state["weight"]):
        raise SmoothQuantError("compressed-tensors packing did not reproduce the quantized weight (max error "
                               f"{(back.float() - state['weight']).abs().max():.3g}); please report this.")
    return out


def input_tensors(act: ActQuant, lo: torch.Tensor, hi: torch.Tensor) -> dict[str, torch.Tensor]:
    """Static per-tensor activation range [lo, hi] -> input_scale (and input_zero_point): the scale
    and zero our fake quantizer uses, the zero made signed."""
    scale, zero = scale_zero(act.bits, act.symmetric, lo.float(), hi.float())
    if zero is None:
        return {"input_scale": scale.reshape(1)}
    return {"input_scale": scale.reshape(1), "input_zero_point": (zero - 2 ** (act.bits - 1)).to(torch.int8).reshape(1)}


def ignored_linears(model: nn.Module, projections: set[str]) -> list[str]:
    """Every nn.Linear the scheme's `Linear` target would catch that is not quantized (lm_head...)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in projections]


# ---- writing ---------------------------------------------------------------------------------
def _scheme(model: nn.Module):
    """(the compressed-tensors scheme of the model's grids and A8 state, ActQuant or None, static ranges or None)."""
    grids = uniform_grids(model)
    state = act_quant_state(model)
    act, ranges = state if state is not None else (None, None)
    return scheme_for(next(iter(grids.values())), act, ranges is not None), act, ranges


def model_quantization_config(model: nn.Module) -> dict:
    scheme, act, _ = _scheme(model)
    projections = dict(adapter_for(model).named_projections(model))
    for name, m in projections.items():
        if not isinstance(m, nn.Linear):  # the scheme targets nn.Linear (GPT-2's Conv1D is not one)
            raise SmoothQuantError(f"{name} is a {type(m).__name__}, not an nn.Linear: compressed-tensors targets "
                                   "Linear layers; export this model with format: gptq.")
        check_grid(name, grid_of(m), m.in_features)
    if act is not None and act.kind.static and scheme.weights.num_bits < 8:
        log.warning("W%dA%d with per-tensor activations: vLLM (0.32) has no kernel for it (its W4A8 needs per-token "
                    "dynamic activations); transformers and smooth_then_quant load it", scheme.weights.num_bits,
                    act.bits)
    return quantization_config(scheme, ignored_linears(model, set(projections)))


@torch.no_grad()
def projection_tensors(model: nn.Module, name: str, m: nn.Module, qc: dict) -> dict[str, torch.Tensor]:
    """The compressed weight of one projection, plus input_scale for static A8."""
    scheme, act, ranges = _scheme(model)
    out = weight_tensors(m.weight.detach().cpu(), grid_of(m).cpu(), scheme)
    if act is not None and ranges is not None and act.kind.static:
        out.update(input_tensors(act, *(r.cpu() for r in ranges[name])))
    return out


# ---- reading ---------------------------------------------------------------------------------
CT_KEYS = ("weight", "weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "input_scale",
           "input_zero_point")


def ct_scheme(qc: dict, source: str):
    """(scheme, compressor) of a single-scheme int/pack-quantized compressed-tensors config."""
    BaseCompressor, _, _, QuantizationScheme = _library()
    groups, fmt = qc.get("config_groups") or {}, qc.get("format")
    if len(groups) != 1 or fmt not in ("int-quantized", "pack-quantized", "naive-quantized"):
        raise SmoothQuantError(f"{source}: compressed-tensors format {fmt} with {len(groups)} config groups; only one "
                               "int/pack-quantized scheme is unpacked here. Load it with transformers directly.")
    return QuantizationScheme.model_validate(next(iter(groups.values()))), BaseCompressor.load_from_registry(fmt)


@torch.no_grad()
def load_projections(model: nn.Module, tensors: dict[str, torch.Tensor], qc: dict, source: str = "checkpoint") -> None:
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


def act_quant(model: nn.Module, folder: Path, qc: dict) -> tuple[ActQuant, dict | None] | None:
    """The scheme's input activations as our quantizer: ranges from input_scale (and
    input_zero_point) when static; the inverse of input_tensors."""
    args = ct_scheme(qc, str(folder))[0].input_activations
    if args is None:
        return None
    strategy = str(getattr(args.strategy, "value", args.strategy))
    ours = {v: k for k, v in STRATEGIES.items()}
    if strategy not in ours:
        raise SmoothQuantError(f"{folder}: activation strategy {strategy} is not one this loader maps "
                               f"({', '.join(ours)}); load it with transformers directly.")
    q = ActQuant(args.num_bits, ours[strategy], args.symmetric)
    token = not q.kind.static
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


# ---- the registry entry ----------------------------------------------------------------------
def refuses(scheme: dict) -> str | None:
    w = scheme["weights"]
    if w["bits"] not in (2, 4, 8):
        return f"with {w['bits']}-bit weights: compressed-tensors is written here for 2, 4 or 8 bits"
    a = scheme.get("activations")
    if a is not None and a["granularity"] not in STRATEGIES:
        return (f"with activation granularity {a['granularity']}: it has no compressed-tensors strategy here "
                f"({', '.join(STRATEGIES)} have)")
    if w.get("act_order", "off") != "off":
        return (f"with act_order {w['act_order']} (permuted groups): compressed-tensors would need its g_idx form, "
                "which is not written here. Use act_order off, or format gptq")
    return None


def refuses_config(scheme: dict, config) -> str | None:
    """What check_grid and the Conv1D check would refuse at export, from the config alone."""
    if config.model_type == "gpt2":
        return "for a gpt2 model: its projections are Conv1D, and compressed-tensors schemes target nn.Linear"
    g = scheme["weights"].get("group_size", -1)
    widths = input_widths(config)
    bad = [w for w in widths if g and g > 0 and w % g]
    if bad:
        return (f"with group_size {g}: it does not divide this model's input width {bad[0]}; use a group size that "
                f"divides {', '.join(map(str, sorted(set(widths))))}")
    return None


def how_to_load(w: dict, a8: bool) -> list[str]:
    return ["Weights and activation quantization are in compressed-tensors format (`quant_method: "
            "compressed-tensors`, the format llm-compressor writes): vLLM runs it" + (
                " with int8 activations" if a8 else "") + ", and transformers loads it with the "
            "`compressed-tensors` package installed. Their kernels compute in their own precision.", "",
            "```python", "from smooth_then_quant import load_model  # exact float reproduction of the table",
            "loaded = load_model(\"path/to/this/folder\")", "",
            "from transformers import AutoModelForCausalLM  # needs compressed-tensors",
            "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")", "",
            "from vllm import LLM", "llm = LLM(\"path/to/this/folder\")", "```", ""]


COMPRESSED_TENSORS = register_format(ExportFormat(
    name="compressed-tensors", quant_method="compressed-tensors", quantization_config=model_quantization_config,
    projection_tensors=projection_tensors,
    load_projections=load_projections, refuses=refuses, how_to_load=how_to_load, act_quant=act_quant,
    refuses_config=refuses_config))
