"""The quantize_ verb: GPTQ (or RTN) weights and A8 activation quantizers combine."""
import pytest
import torch

from planting import tiny_model, windows
from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.quantize.names import SCHEME_PRESETS, serving
from smooth_then_quant.quantize import ActQuant, GPTQWeights, Scheme, WeightQuant, linear_modules, quantize_
from smooth_then_quant.quantize.fake import weight_view
from smooth_then_quant.quantize.grid import grid_of


def test_gptq_w4_plus_static_a8():
    model = tiny_model("llama", init=0.05)
    ids = windows(8, 32)
    rep = quantize_(model, Scheme("W4A8-static", GPTQWeights(bits=4, group_size=32), ActQuant(8, "per_tensor")),
                    ids)
    assert rep["scheme"]["method"] == "gptq"
    grids = [grid_of(m) for _, m in linear_modules(model)]  # GPTQ ran on every projection, with this grid
    assert all(g is not None and (g.bits, g.group_size, g.symmetric) == (4, 32, True) for g in grids)
    seen = {}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, a[0].detach()))
               for n, m in linear_modules(model)]  # registered after the quantizers: sees their output
    with torch.no_grad():
        model(input_ids=ids[:2])
    for h in handles:
        h.remove()
    assert len(seen) == len(linear_modules(model))
    for name, x in seen.items():
        assert x.unique().numel() <= 256, name  # int8 grid: at most 256 levels per projection input
    for name, m in linear_modules(model):
        w = weight_view(m)
        assert max(w[r, s: s + 32].unique().numel() for r in range(3) for s in range(0, w.shape[1], 32)) <= 16, name


def test_rtn_scheme_and_uneven_group_note():
    model = tiny_model("llama", init=0.05)
    rep = quantize_(model, Scheme("W4A16", WeightQuant(4, 48)), windows(2, 16))
    assert "uneven_groups" in rep["weights"] and "last group of 16" in rep["weights"]["uneven_groups"]
    assert Scheme("W4A16", WeightQuant(4, 48)).describe() == "RTN int4 g48 sym, A16"


def test_recipe_default_schemes_are_the_api_presets():
    """The recipe's default table columns and preset_schemes() are two spellings of one thing."""
    from smooth_then_quant.quantize import preset_schemes
    from smooth_then_quant.recipe import validate_recipe

    assert list(validate_recipe({"output_dir": "x"}).quantization.schemes.values()) == list(preset_schemes())


# ---- scheme names: what compressed-tensors and vLLM mean by them ---------------------------------------


def test_preset_names_match_compressed_tensors():
    """W4A16 / W8A16 / W8A8 / W4A8 as compressed-tensors' presets define them (bits, group, A8 dynamic per token)."""
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    for name in ("W4A16", "W8A16", "W8A8", "W4A8"):
        ct = preset_name_to_scheme(name, ["Linear"])
        ours = Scheme(name)
        assert ours.weights.bits == ct.weights.num_bits and ours.weights.symmetric == ct.weights.symmetric
        assert ours.weights.group_size == (ct.weights.group_size if ct.weights.strategy == "group" else -1)
        if ct.input_activations is None:
            assert ours.activations is None
        else:
            a = ct.input_activations
            assert ours.activations.bits == a.num_bits and a.dynamic is True and a.strategy == "token"
            assert ours.activations.granularity == "per_token" and not ours.activations.kind.static


def test_static_variants_are_named_so():
    for name in ("W4A8-static", "W8A8-static"):
        s = Scheme(name)
        assert s.activations.granularity == "per_tensor" and s.activations.kind.static


def test_a_preset_name_fills_what_is_left_out():
    s = Scheme("W4A8", GPTQWeights(bits=4, group_size=64))
    assert s.weights.group_size == 64 and s.activations.granularity == "per_token"
    s = Scheme.model_validate({"name": "W4A8-static", "weights": {"group_size": 32}})
    assert (s.weights.bits, s.weights.group_size, s.activations.granularity) == (4, 32, "per_tensor")
    assert Scheme("mine", GPTQWeights(4, 64)).activations is None  # not a preset name: nothing filled in


@pytest.mark.parametrize("raw, match", [
    ({"W4A8": {"activations": {"granularity": "per_tensor"}}}, "rename the scheme 'W4A8-static'"),
    ({"W4A8-static": {"activations": {"granularity": "per_token"}}}, "name it 'W4A8'"),
    ({"W4A16": {"weights": {"bits": 8}}}, "W8A16"),
    ({"W4A16": {"activations": {"bits": 8}}}, "16-bit activations by its name"),
    ({"W8A8": {"activations": None}}, "W8A16 for weight-only"),
    ({"W4A8": {"activations": {"bits": 4}}}, "activations.bits 4"),
    (["W5A5"], "unknown scheme name 'W5A5'"),
])
def test_a_name_that_contradicts_its_scheme_is_refused(raw, match):
    from smooth_then_quant.recipe import validate_recipe

    with pytest.raises(SmoothQuantError, match=match) as e:
        validate_recipe({"output_dir": "x", "quantization": {"schemes": raw}})
    assert "\n" not in str(e.value)


def test_old_w4a8_recipe_gets_the_message_not_a_silent_change():
    from smooth_then_quant.recipe import validate_recipe

    old = {"W4A8": {"weights": {"method": "gptq", "bits": 4, "group_size": 64},
                    "activations": {"bits": 8, "granularity": "per_tensor"}}}
    with pytest.raises(SmoothQuantError, match=r"smooth-then-quant 0.1 used the name for the static variant"):
        validate_recipe({"output_dir": "x", "quantization": {"schemes": old}})
    with pytest.raises(SmoothQuantError, match="W4A8-static"):
        Scheme("W4A8", GPTQWeights(4, 64), ActQuant(8, "per_tensor"))


def test_list_and_string_forms():
    from smooth_then_quant.recipe import validate_recipe

    q = validate_recipe({"output_dir": "x", "quantization": {"schemes": ["W4A16", "W4A8-static"]}}).quantization
    assert list(q.schemes) == ["W4A16", "W4A8-static"] and q.schemes["W4A16"] == Scheme("W4A16")
    q = validate_recipe({"output_dir": "x", "quantization": {"schemes": {"mine": "W4A8-static", "W4A8": None}}}).quantization
    assert q.schemes["mine"].activations.granularity == "per_tensor" and q.schemes["mine"].name == "mine"
    assert q.schemes["W4A8"] == Scheme("W4A8")
    with pytest.raises(SmoothQuantError, match="rename the scheme 'W4A8-static'"):
        validate_recipe({"output_dir": "x", "quantization": {"schemes": {"W4A8": "W4A8-static"}}})


def test_quantize_takes_a_preset_name():
    model = tiny_model("llama", init=0.05)
    rep = quantize_(model, "W4A16", windows(2, 16))
    assert rep["scheme"]["name"] == "W4A16" and rep["scheme"]["activations"] is None
    with pytest.raises(SmoothQuantError, match="unknown scheme name"):
        quantize_(model, "W9A9", windows(2, 16))


def test_serving_names_a_kernel_or_says_none():
    for name in SCHEME_PRESETS:
        d = Scheme(name).to_dict()
        text = serving(d, "compressed-tensors")
        assert ("no vLLM kernel" in text) == (name == "W4A8-static"), (name, text)
        assert "A16" in serving(d, "gptq") or d["activations"] is None  # GPTQ holds weights only
