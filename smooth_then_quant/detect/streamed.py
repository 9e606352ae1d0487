"""The analysis of a checkpoint that is never whole in memory: one decoder layer resident at a time.

    analysis = analyze_checkpoint("path/to/folder", calibration_ids, AnalysisConfig())

The same Analysis as `analyze(model, ids)` on the loaded model (the tests check every statistic and
finding on all four families): the embeddings are gathered row by row from the checkpoint, the hidden
states of every window enter layer 0, and each layer in turn is read from its safetensors shard, runs
every window with the probe's hooks, has its weight-based detectors (γ outliers, OTC rows) run while it
is resident, and is freed. Resident: one layer, the windows' hidden states, the statistics.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..arch import adapter_for
from ..arch.walk import layer_inputs, layer_output
from ..load.lazy import Checkpoint, onload_small_, onloaded, skeleton
from ..probe import ProbeConfig, ProbeResult, Recorder, hooks_at_points
from ..probe.stats import release_workspace, trim_heap
from ..progress import bar
from .analysis import Analysis, AnalysisConfig, assemble, layer_weight_outliers


def input_embeddings(model, ckpt: Checkpoint, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """model.get_input_embeddings()(ids) from the checkpoint's rows alone: ids [B, T] -> [B, T, H]."""
    emb = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is emb)
    rows = ckpt.rows(ckpt.key(f"{name}.weight", (model.base_model_prefix,)), ids, dtype)
    scale = getattr(emb, "embed_scale", None)  # Gemma's scaled embedding multiplies inside the module
    return rows if scale is None else rows * scale.to(dtype)


@torch.inference_mode()
def analyze_checkpoint(folder: str | Path, input_ids: torch.Tensor, config: AnalysisConfig = AnalysisConfig(),
                       batch_size: int = 4, dtype: torch.dtype = torch.float32, device: str = "cpu",
                       hf_config=None) -> Analysis:
    """Probe the checkpoint in `folder` on input_ids [samples, seq_len], layer by layer, and detect."""
    from transformers import AutoConfig

    ckpt = Checkpoint(folder)  # a missing or mismatched shard fails here, before any work
    hf_config = hf_config if hf_config is not None else AutoConfig.from_pretrained(folder)
    adapter = adapter_for(hf_config)
    model = skeleton(hf_config, dtype)
    layers = adapter.decoder_layers(model)
    onload_small_(model, ckpt, layers, dtype, device)
    names = {id(m): n for n, m in model.named_modules()}
    starts = range(0, input_ids.shape[0], batch_size)
    hidden, extra = layer_inputs(model, layers, ({"inputs_embeds": input_embeddings(
        model, ckpt, input_ids[s: s + batch_size], dtype).to(device)} for s in starts))
    record = Recorder(ProbeConfig(batch_size=batch_size, top_k=config.top_k, massive=config.massive))
    result = ProbeResult(adapter, len(layers), *input_ids.shape, record.stats, record.config)
    per_layer = []
    with hooks_at_points(model, adapter, record):
        for li, layer in enumerate(bar(layers, desc="analysis: layers", unit="layer")):
            with onloaded(layer, ckpt, names[id(layer)], dtype, device, model):
                for i, s in enumerate(starts):
                    record.running(s, input_ids[s: s + batch_size])
                    args, kw = extra[li][i]
                    hidden[i] = layer_output(layer(hidden[i], *args, **kw))
                    trim_heap()
                record.finalize(li)
                per_layer.append(layer_weight_outliers(li, layer, result, config.channel))
            extra[li] = None
    release_workspace()
    return assemble(record.result(adapter, len(layers), input_ids), config, per_layer)
