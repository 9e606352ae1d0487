"""The quantized checkpoint in compressed-tensors format: weights and activation quantization in
the files, our loader reproducing the evaluated model exactly, transformers (through the
compressed-tensors package) reading the same integers and the same activation scheme."""
import json

import pytest
import torch

from planting import save_tiny, tiny_model, windows
from smooth_then_quant import SmoothQuantError
from smooth_then_quant.arch import adapter_for
from smooth_then_quant.export import export_quantized
from smooth_then_quant.export.formats import compressed_tensors as ct
from smooth_then_quant.load import load_model
from smooth_then_quant.quantize import ActQuant, GPTQWeights, Scheme, WeightQuant, quantize_
from smooth_then_quant.quantize.fake import weight_view
from smooth_then_quant.quantize.grid import grid_of

SCHEMES = {
    "W8A8 per-token": Scheme("W8A8", GPTQWeights(8, -1), ActQuant(8, "per_token")),
    "W4A8 static asym": Scheme("W4A8-static", WeightQuant(4, 32), ActQuant(8, "per_tensor", symmetric=False)),
    "W4A8 static, GPTQ": Scheme("W4A8-static", GPTQWeights(4, 32), ActQuant(8, "per_tensor")),
    "W4A16": Scheme("W4A16", GPTQWeights(4, 32)),
    "W8A16 asym groups": Scheme("W8A16", WeightQuant(8, 32, symmetric=False)),
}


def _loaded_and_quantized(tmp_path, family, scheme):
    """Loaded through load_model (so the reload runs the same attention kernel: per-token A8
    turns an ulp of difference between eager and sdpa attention into a rounding flip)."""
    save_tiny(tmp_path / "m", family, plant=False, init=0.05)
    loaded = load_model(str(tmp_path / "m"))
    ids = windows(6, 24)
    quantize_(loaded.model, scheme, ids)
    return loaded, ids


@pytest.mark.parametrize("family,key", [("llama", k) for k in SCHEMES] + [("qwen2", "W4A8 static asym")])
def test_reload_reproduces_the_quantized_model_exactly(family, key, tmp_path):
    scheme = SCHEMES[key]
    loaded, ids = _loaded_and_quantized(tmp_path, family, scheme)
    model = loaded.model
    export_quantized(model, loaded.tokenizer, tmp_path / "q", format="compressed-tensors")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    group = qc["config_groups"][ct.SCHEME_NAME]
    assert qc["quant_method"] == "compressed-tensors" and qc["quantization_status"] == "compressed"
    assert qc["format"] == ("int-quantized" if scheme.activations else "pack-quantized")
    assert group["weights"]["num_bits"] == scheme.weights.bits and qc["ignore"] == ["lm_head"]
    if scheme.activations:
        acts = group["input_activations"]
        assert (acts["strategy"], acts["dynamic"], acts["symmetric"]) == (
            "token" if scheme.activations.granularity == "per_token" else "tensor",
            scheme.activations.granularity == "per_token", scheme.activations.symmetric)
    else:
        assert group["input_activations"] is None
    back = load_model(str(tmp_path / "q"))
    for (name, a), (_, b) in zip(adapter_for(model).named_projections(model),
                                 adapter_for(back.model).named_projections(back.model)):
        assert torch.equal(weight_view(a), weight_view(b)), name
        if scheme.weights.symmetric:  # the grid comes back, so the reload can be exported again
            assert torch.equal(grid_of(a).scale, grid_of(b).scale)
    assert ("activation_quant" in back.provenance) == (scheme.activations is not None)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back.model(ids).logits)


@pytest.mark.parametrize("key", ["W4A8 static asym", "W4A8 static, GPTQ", "W8A8 per-token"])
def test_activation_scheme_comes_back_from_the_config_alone(key, tmp_path):
    """A compressed-tensors folder without our activation_quant.json (e.g. llm-compressor's): the
    A8 quantizer is rebuilt from the config and the input scales."""
    loaded, ids = _loaded_and_quantized(tmp_path, "llama", SCHEMES[key])
    export_quantized(loaded.model, loaded.tokenizer, tmp_path / "q", format="compressed-tensors")
    (tmp_path / "q" / "activation_quant.json").unlink()
    back = load_model(str(tmp_path / "q"))
    assert back.provenance["activation_quant"].endswith("config.json")
    with torch.no_grad():
        ours, again = loaded.model(ids).logits, back.model(ids).logits
    # the scale rebuilt from input_scale can be an ulp off ours, which may flip a value sitting on a
    # rounding boundary: close, not bit-equal (our own activation_quant.json is exact, tested above)
    assert (ours - again).abs().max() <= 0.02 * ours.abs().max()


@pytest.mark.parametrize("key", ["W4A8 static asym", "W4A16", "W8A8 per-token"])
def test_transformers_reads_the_same_integers_and_activation_scheme(key, tmp_path):
    """transformers + the compressed-tensors package on our files. Static A8 and weight-only schemes
    match exactly; per-token A8 differs by the library's scale (absmax / 127.5, ours / 127)."""
    from transformers import AutoModelForCausalLM

    loaded, ids = _loaded_and_quantized(tmp_path, "llama", SCHEMES[key])
    export_quantized(loaded.model, loaded.tokenizer, tmp_path / "q", format="compressed-tensors")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    with torch.no_grad():
        ours, hf = loaded.model(ids).logits, theirs(ids).logits.float()
    mods = dict(theirs.named_modules())  # decompressed by the first forward
    for name, m in adapter_for(loaded.model).named_projections(loaded.model):
        assert torch.equal(mods[name].weight.float(), weight_view(m)), name
    tol = 0.05 if SCHEMES[key].activations and SCHEMES[key].activations.granularity == "per_token" else 1e-5
    assert (hf - ours).abs().max() <= tol * ours.abs().max()


def test_library_would_choose_the_same_storage_format():
    from compressed_tensors.compressors.format import infer_module_format
    for scheme in SCHEMES.values():
        grid = grid_of_scheme(scheme)
        cs = ct.scheme_for(grid, scheme.activations, True)
        assert ct.storage_format(cs) == infer_module_format(torch.nn.Linear, cs).value


def grid_of_scheme(scheme):
    from smooth_then_quant.quantize.grid import rtn_grid
    w = scheme.weights
    return rtn_grid(torch.randn(8, 64), w.bits, w.group_size, w.symmetric)


def test_what_compressed_tensors_cannot_hold_is_refused(tmp_path):
    ids = windows(4, 16)

    def quantized(family, scheme):
        model = tiny_model(family, init=0.05)
        quantize_(model, scheme, ids)
        return model

    with pytest.raises(SmoothQuantError, match="nn.Linear"):  # GPT-2's Conv1D
        export_quantized(quantized("gpt2", Scheme("w", WeightQuant(8, -1))), None, tmp_path / "a",
                         format="compressed-tensors")
    with pytest.raises(SmoothQuantError, match="act order"):
        export_quantized(quantized("llama", Scheme("w", GPTQWeights(4, 32, act_order="desc"))), None,
                         tmp_path / "b", format="compressed-tensors")
    with pytest.raises(SmoothQuantError, match="does not divide"):
        export_quantized(quantized("qwen2", Scheme("w", WeightQuant(4, 48))), None, tmp_path / "c",
                         format="compressed-tensors")
    with pytest.raises(SmoothQuantError, match="3-bit"):
        export_quantized(quantized("llama", Scheme("w", WeightQuant(3, 32))), None, tmp_path / "d",
                         format="compressed-tensors")
    with pytest.raises(SmoothQuantError, match="unknown quantized export format"):
        export_quantized(quantized("llama", Scheme("w", WeightQuant(4, 32))), None, tmp_path / "e", format="awq")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_what_the_format_cannot_hold_is_known_from_the_config():
    from transformers import GPT2Config, LlamaConfig

    from smooth_then_quant.export import get_format
    ct = get_format("compressed-tensors")
    w4 = {"weights": {"bits": 4, "group_size": 64}}
    assert "Conv1D" in ct.refuses_config(w4, GPT2Config())
    llama = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9)
    assert ct.refuses_config(w4, llama) is None
    assert "input width 576" in ct.refuses_config({"weights": {"bits": 4, "group_size": 1024}}, llama)
    assert "input width 1600" in ct.refuses_config({"weights": {"bits": 4, "group_size": 192}}, LlamaConfig(
        hidden_size=576, intermediate_size=1600, num_attention_heads=9))
