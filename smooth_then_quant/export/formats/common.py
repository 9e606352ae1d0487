"""What every quantized format shares: one grid per projection, the other tensors in float, and the
reload of a checkpoint into a float model whose projections hold the dequantized weights.

Why not `from_pretrained` for the reload: transformers runs GPTQ checkpoints through GPTQModel's
kernels, which on CPU compute in float16/bfloat16 and load every other tensor in that dtype too. Our
fake quantization is float32; to reproduce a reported perplexity exactly the integers and scales are
unpacked here (the tests check the result against GPTQModel's own dequantization).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from ...arch import adapter_for, resident, source_of, trim_heap
from ...errors import SmoothQuantError
from ...io import ShardWriter
from ...load import quantization_config, read_safetensors
from ...quantize.grid import grid_of


def uniform_grids(model: nn.Module) -> dict:
    """{projection: grid}; every projection quantized, all with one bits / group_size / sym."""
    grids = {name: grid_of(m) for name, m in adapter_for(model).named_projections(model)}
    missing = [n for n, g in grids.items() if g is None]
    if missing:
        raise SmoothQuantError(f"{len(missing)} projections (e.g. {missing[0]}) are not quantized: export_quantized "
                               "needs a model quantized with quantize_ / gptq_ / rtn_weights_ first.")
    kinds = {(g.bits, g.group_size, g.symmetric) for g in grids.values()}
    if len(kinds) > 1:
        raise SmoothQuantError(f"projections are quantized with different settings {sorted(kinds)}; a quantized "
                               "checkpoint has one bits / group_size / sym for the whole model.")
    return grids


@torch.no_grad()
def model_tensors(model: nn.Module, replaces: tuple[str, ...] = (),
                  projection_tensors: Callable[[str, nn.Module], dict[str, torch.Tensor]] | None = None
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the model's state dict once (tied copies once: transformers re-ties on load), on the CPU:
    first those outside the decoder layers, then layer by layer (a streamed model reads each layer, then frees
    it; its embedding and lm_head come as `io.Rows`, read block by block as the writer takes them). With
    `projection_tensors(name, module)`, each projection's `replaces` leaves give way to its tensors."""
    adapter = adapter_for(model)
    names = {id(m): n for n, m in model.named_modules()}
    prefixes = [names[id(layer)] for layer in adapter.decoder_layers(model)]
    src = source_of(model)
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen or any(name.startswith(p + ".") for p in prefixes):
            continue
        seen.add(id(t))
        yield name, (src.rows_of(model, name) if t.is_meta else t.detach().cpu().contiguous())
    for li, prefix in enumerate(prefixes):
        with resident(model, li) as layer:
            projections = dict(adapter.named_projections(model, layers=[li])) if projection_tensors else {}
            skip = {f"{p}.{leaf}" for p in projections for leaf in replaces}
            here: set[int] = set()  # ids only while the layer's tensors live (a streamed layer's are freed after)
            for name, t in layer.state_dict(keep_vars=True).items():
                if f"{prefix}.{name}" not in skip and id(t) not in here:
                    here.add(id(t))
                    yield f"{prefix}.{name}", t.detach().cpu().contiguous()
            for p, m in projections.items():
                for leaf, v in projection_tensors(p, m).items():
                    yield f"{p}.{leaf}", v.contiguous()
        trim_heap()  # packing's layer-sized temporaries: freed, and handed back to the OS before the next layer


def write_weights(tensors: Iterable[tuple[str, torch.Tensor]], folder: Path, max_shard_size: int) -> list[str]:
    """Safetensors shards of at most max_shard_size bytes (and their index), written as the tensors come."""
    writer = ShardWriter(folder, max_shard_size)
    for name, t in tensors:
        writer.add(name, t)
    return writer.close()


@torch.no_grad()
def load_quantized_model(fmt, folder: Path, config, dtype: torch.dtype) -> nn.Module:
    """A float model from `folder`, its projections unpacked by `fmt` (an ExportFormat)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tensors = read_safetensors(folder)
    fmt.load_projections(model, tensors, quantization_config(config), str(folder))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    projections = {n for n, _ in adapter_for(model).named_projections(model)}
    missing = [k for k in missing if k.rpartition(".")[0] not in projections and k != "lm_head.weight"]
    if missing or unexpected:
        raise SmoothQuantError(f"{folder}: weights do not match the config (missing {missing[:3]}, unexpected "
                               f"{unexpected[:3]}).")
    model.tie_weights()
    return model.to(dtype)
