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

import torch
from torch import nn

from ..errors import SmoothQuantError
from ..quantize.grid import QuantGrid
from ..quantize.rtn import ActQuant, scale_zero

SCHEME_NAME = "group_0"


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
        token = act.granularity == "per_token"
        inputs = QuantizationArgs(num_bits=act.bits, type="int", symmetric=act.symmetric,
                                  strategy="token" if token else "tensor", dynamic=token or not static)
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
