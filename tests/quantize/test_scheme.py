"""The quantize_ verb: GPTQ (or RTN) weights and A8 activation quantizers combine."""
import torch

from planting import tiny_model, windows
from smooth_then_quant.quantize import ActQuant, GPTQConfig, Scheme, WeightQuant, linear_modules, quantize_
from smooth_then_quant.quantize.fake import weight_view
from smooth_then_quant.quantize.grid import grid_of


def test_gptq_w4_plus_static_a8():
    model = tiny_model("llama", init=0.05)
    ids = windows(8, 32)
    rep = quantize_(model, Scheme("W4A8", GPTQConfig(bits=4, group_size=32), ActQuant(8, "per_tensor")),
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
