"""The streamed analysis (one layer resident, weights read from the checkpoint's shards) gives the same
analysis as the whole model in memory, on every family; shards are checked before any work."""
import json

import pytest
import torch
from safetensors import safe_open

from planting import save_tiny, windows
from smooth_then_quant import SmoothQuantError
from smooth_then_quant.detect import AnalysisConfig, analyze, analyze_checkpoint
from smooth_then_quant.load import load_model

FAMILIES = ["llama", "qwen2", "gpt2", "gemma3_text"]


def _same(a, b):
    assert a.to_dict() == b.to_dict()
    assert a.result.stats.keys() == b.result.stats.keys()
    for key, sa in a.result.stats.items():
        sb = b.result.stats[key]
        for field in ("mean", "std", "absmax", "mean_ex", "std_ex"):
            assert torch.equal(getattr(sa, field), getattr(sb, field)), (key, field)
        assert sa.top == sb.top and sa.massive == sb.massive, key


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_analysis_equals_the_in_memory_one(tmp_path, family):
    save_tiny(tmp_path / "m", family)
    ids = windows(6, 32, trigger_at=0)
    whole = analyze(load_model(str(tmp_path / "m")).model, ids, AnalysisConfig(), batch_size=4)
    streamed = analyze_checkpoint(tmp_path / "m", ids, AnalysisConfig(), batch_size=4)
    assert whole.massive, "the planted massive activation must be found for the comparison to mean something"
    _same(whole, streamed)


def test_one_layer_is_resident_at_a_time(tmp_path, monkeypatch):
    from smooth_then_quant.load.stream import CheckpointSource

    save_tiny(tmp_path / "m", "llama")
    resident, real = [], CheckpointSource.onload_

    def counting(self, model, li, layer):
        real(self, model, li, layer)
        resident.append(sum(any(not p.is_meta for p in m.parameters()) for m in model.model.layers))
    monkeypatch.setattr(CheckpointSource, "onload_", counting)
    analyze_checkpoint(tmp_path / "m", windows(4, 16))
    assert len(resident) == 4 and max(resident) == 1


def test_sharded_checkpoints_and_their_faults(tmp_path):
    save_tiny(tmp_path / "m", "qwen2")
    model = load_model(str(tmp_path / "m")).model
    model.save_pretrained(tmp_path / "s", max_shard_size="60KB")
    (tmp_path / "s" / "model.safetensors").unlink(missing_ok=True)
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    ids = windows(4, 16, trigger_at=0)
    _same(analyze(model, ids), analyze_checkpoint(tmp_path / "s", ids))
    # a shard that does not match its index: named, before any work
    key = next(k for k, f in index["weight_map"].items() if f == shards[1])
    index["weight_map"][key] = shards[0]
    (tmp_path / "s" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SmoothQuantError, match=f"{shards[1]} does not match model.safetensors.index.json"):
        analyze_checkpoint(tmp_path / "s", ids)
    index["weight_map"][key] = shards[1]
    (tmp_path / "s" / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "s" / shards[-1]).unlink()  # a missing shard
    with pytest.raises(SmoothQuantError, match=f"shard {shards[-1]} named by model.safetensors.index.json is missing"):
        analyze_checkpoint(tmp_path / "s", ids)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "model.safetensors").write_bytes(b"\x00" * 64)  # truncated / not safetensors
    with pytest.raises(SmoothQuantError, match="not a readable safetensors file"):
        analyze_checkpoint(tmp_path / "t", ids, hf_config=model.config)


def test_a_checkpoint_saved_from_the_base_model_reads_without_its_prefix(tmp_path):
    """Hub GPT-2 checkpoints name tensors h.0.* (the base model's names), not transformer.h.0.*."""
    save_tiny(tmp_path / "m", "gpt2")
    model = load_model(str(tmp_path / "m")).model  # as loaded: the checkpoint's attention implementation
    model.transformer.save_pretrained(tmp_path / "base")
    with safe_open(str(tmp_path / "base" / "model.safetensors"), "pt") as st:
        keys = list(st.keys())
    assert "h.0.attn.c_attn.weight" in keys and not any(k.startswith("transformer.") for k in keys)
    ids = windows(4, 16, trigger_at=0)
    _same(analyze(model, ids), analyze_checkpoint(tmp_path / "base", ids))
