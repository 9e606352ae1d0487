"""The quantized checkpoint: GPTQ v1 tensors that transformers/GPTQModel load, and our loader
reproducing the evaluated model exactly (weights, runtime smoothing, A8 quantizers)."""
import json
import os

import pytest
import torch

from planting import char_tokenizer, save_tiny, tiny_model, windows
from smooth_then_quant import SmoothQuantError
from smooth_then_quant.arch import adapter_for
from smooth_then_quant.export import export_quantized
from smooth_then_quant.quantize.packing import pack_rows, unpack_rows
from smooth_then_quant.load import load_model
from smooth_then_quant.quantize import ActQuant, GPTQWeights, Scheme, WeightQuant, quantize_
from smooth_then_quant.quantize.fake import weight_view
from smooth_then_quant.quantize.grid import grid_of
from smooth_then_quant.smooth import MassiveRemoval, SmoothingPlan, attach_runtime_
from smooth_then_quant.smooth import RemoveMassive

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")


def test_packing_by_hand():
    codes = torch.arange(1, 9)[:, None]  # 4-bit codes 1..8 of one column: word 0x87654321, low bits first
    assert pack_rows(codes, 4).item() == 0x87654321 - 2**32
    for bits in (2, 4, 8):
        c = torch.randint(0, 2**bits, (64, 5), generator=torch.Generator().manual_seed(bits))
        assert torch.equal(unpack_rows(pack_rows(c, bits), bits), c.to(torch.int32))


def _quantized(family, scheme, ids):
    model = tiny_model(family, init=0.05)
    quantize_(model, scheme, ids)
    return model


@pytest.mark.parametrize("family,weights", [
    ("llama", GPTQWeights(4, 32)),
    ("qwen2", GPTQWeights(4, 48, act_order="desc")),  # biases; uneven groups (64 = 48 + 16); desc
    ("gpt2", WeightQuant(8, -1)),                                      # Conv1D; RTN per channel
])
def test_reload_reproduces_the_quantized_model_exactly(family, weights, tmp_path):
    ids = windows(6, 24)
    model = _quantized(family, Scheme("w", weights), ids)
    export_quantized(model, char_tokenizer(), tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["desc_act"]) == (
        "gptq", weights.bits, weights.group_size, getattr(weights, "act_order", "off") == "desc")
    back = load_model(str(tmp_path / "q")).model
    for (name, a), (_, b) in zip(adapter_for(model).named_projections(model), adapter_for(back).named_projections(back)):
        assert torch.equal(weight_view(a), weight_view(b)), name
        assert torch.equal(grid_of(a).g_idx, grid_of(b).g_idx)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, back(ids).logits, rtol=0, atol=1e-5)


def test_transformers_and_gptqmodel_read_the_same_integers(tmp_path, monkeypatch):
    """The ecosystem's loader (transformers -> GPTQModel's torch kernel) on our files: its own
    dequantization equals our weights (up to its float16 arithmetic), and its forward agrees."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from transformers import AutoModelForCausalLM
    from transformers import GPTQConfig as HFGPTQConfig

    ids = windows(6, 24)
    model = _quantized("qwen2", Scheme("w", GPTQWeights(4, 32, act_order="desc")), ids)  # biases
    export_quantized(model, char_tokenizer(), tmp_path / "q")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "q", quantization_config=HFGPTQConfig(
        bits=4, backend="torch")).eval()  # on CPU GPTQModel's kernels run in bfloat16/float16
    mods = dict(theirs.named_modules())
    for name, m in adapter_for(model).named_projections(model):
        w = mods[name].dequantize_weight().t().float()  # [out, in]
        assert torch.allclose(w, weight_view(m), rtol=2**-10, atol=1e-6), name
    with torch.no_grad():
        ours, hf = model(ids).logits, theirs(ids).logits.float()
    assert (hf - ours).abs().max() < 0.05 * ours.abs().max()  # bfloat16 forward of the same integers


def test_a8_and_runtime_smoothing_come_back_with_the_checkpoint(tmp_path):
    save_tiny(tmp_path / "m", "llama", init=0.05)  # planted TMA at y6 of layer 1 ("\n" triggers it)
    loaded = load_model(str(tmp_path / "m"))
    model, ids = loaded.model, windows(6, 24)
    ids[:, 0] = 10
    ops = [MassiveRemoval(1, "y6", (5,), "mean")]
    attach_runtime_(model, ops)
    quantize_(model, Scheme("W4A8-static", GPTQWeights(4, 32), ActQuant(8, "per_tensor")), ids)
    with pytest.raises(SmoothQuantError, match="smoothing plan"):
        export_quantized(model, loaded.tokenizer, tmp_path / "q")
    assert not (tmp_path / "q").exists()
    plan = SmoothingPlan("llama", [RemoveMassive(layer=1, point="y6", channels=[5], replace_with="mean")])
    export_quantized(model, loaded.tokenizer, tmp_path / "q", plan=plan)
    back = load_model(str(tmp_path / "q"))
    assert back.provenance["runtime_interventions"] == 1 and "activation_quant" in back.provenance
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, back.model(ids).logits, rtol=0, atol=1e-5)


def test_models_without_grids_or_with_unexportable_grids_are_refused(tmp_path):
    ids = windows(4, 16)
    with pytest.raises(SmoothQuantError, match="not quantized"):
        export_quantized(tiny_model("llama"), None, tmp_path / "a")
    with pytest.raises(SmoothQuantError, match="3-bit"):
        export_quantized(_quantized("llama", Scheme("w", WeightQuant(3, 32)), ids), None, tmp_path / "b")
    with pytest.raises(SmoothQuantError, match="symmetric"):
        export_quantized(_quantized("llama", Scheme("w", WeightQuant(4, 32, symmetric=False)), ids), None,
                         tmp_path / "c")
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize("change,why", [({"sym": False}, "symmetric v1"), ({"bits": 3}, "bits 3"),
                                        ({"checkpoint_format": "gptq_v2"}, "format gptq_v2")])
def test_a_gptq_checkpoint_it_cannot_represent_is_refused_by_name(tmp_path, change, why):
    ids = windows(4, 16)
    export_quantized(_quantized("llama", Scheme("w", GPTQWeights(4, 32)), ids), char_tokenizer(), tmp_path / "q")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    cfg["quantization_config"].update(change)
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SmoothQuantError, match="only symmetric v1") as e:
        load_model(str(tmp_path / "q"))
    assert str(tmp_path / "q") in str(e.value) and "load it with transformers directly" in str(e.value)
    assert why.split()[-1] in str(e.value)
