"""Exact migrations keep the function; lossy edits do exactly what they say."""
import pytest
import torch

from planting import FAMILIES, plant_gamma_, structured_embeddings_, tiny_model, windows
from smooth_then_quant.arch import adapter_for
from smooth_then_quant.smooth.transforms import (flatten_gamma_, flatten_rows_, migrate_down_, migrate_norm_,
                                                 smoothquant_scales)


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().detach())


def model_with_gamma_outliers(family):
    model = tiny_model(family, init=0.05)
    structured_embeddings_(model)
    for li in range(2):
        plant_gamma_(model, li, "attn", 7, 25.0)
        plant_gamma_(model, li, "mlp", 13, -18.0)
    if family == "gpt2":  # give LayerNorm a β so its migration is exercised too
        with torch.no_grad():
            for blk in adapter_for(model).decoder_layers(model):
                blk.ln_1.bias.normal_(0, 0.5)
                blk.ln_2.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_norm_migration_is_exact_in_float32(family):
    model = model_with_gamma_outliers(family)
    ids = windows(4, 24)
    ref = model(ids).logits
    a = adapter_for(model)
    g = torch.Generator().manual_seed(0)
    for layer in a.decoder_layers(model):
        for site in a.norm_sites():
            s = torch.exp(torch.randn(layer.get_submodule(site.norm).weight.numel(), generator=g) * 2)  # 1e-3 .. 1e3
            migrate_norm_(layer, a, site, s)
    out = model(ids).logits
    assert rel_err(out, ref) < 1e-4


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gpt2"])
def test_down_migration_is_exact_and_shrinks_y6(family):
    model = tiny_model(family, init=0.05)
    ids = windows(4, 24)
    ref = model(ids).logits
    a = adapter_for(model)
    layer = a.decoder_layers(model)[1]
    s = torch.full((layer.get_submodule(a.mlp_out.module).weight.shape[1],), 1.0)
    s[5] = 1000.0
    seen = {}
    h = layer.get_submodule(a.mlp_out.module).register_forward_pre_hook(lambda m, x: seen.__setitem__("y6", x[0]))
    model(ids)
    before = seen["y6"][..., 5].abs().max()
    migrate_down_(layer, a, s)
    out = model(ids).logits
    h.remove()
    assert rel_err(out, ref) < 1e-4
    assert torch.allclose(seen["y6"][..., 5].abs().max() * 1000, before, rtol=1e-4)


def test_gpt2_has_no_exact_down_migration():
    model = tiny_model("gpt2")
    a = adapter_for(model)
    with pytest.raises(ValueError, match="exact migration"):
        migrate_down_(a.decoder_layers(model)[0], a, torch.ones(4 * 64))


@pytest.mark.parametrize("family", FAMILIES)
def test_flatten_gamma_sets_the_effective_factor(family):
    model = model_with_gamma_outliers(family)
    a = adapter_for(model)
    layer = a.decoder_layers(model)[0]
    mean = float(a.gamma(layer, a.attn_norm).mean())
    flatten_gamma_(layer, a.attn_norm, [7], "mean")
    assert a.gamma(layer, a.attn_norm)[7] == pytest.approx(mean, rel=1e-5)
    flatten_gamma_(layer, a.mlp_norm, [13], "zero")
    assert a.gamma(layer, a.mlp_norm)[13] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_flatten_rows_sets_each_row_to_its_mean_and_nothing_else(family):
    model = tiny_model(family, init=0.05)
    a = adapter_for(model)
    layer = a.decoder_layers(model)[0]
    proj = a.qkv["x4"]  # GPT-2: the k block of the fused c_attn
    w0 = a.weight(layer, proj).detach().clone()
    full0 = layer.get_submodule(proj.module).weight.detach().clone()
    flatten_rows_(layer, a, proj, [2, 9])
    w = a.weight(layer, proj)
    for r in (2, 9):
        assert torch.allclose(w[r], w0[r].mean().expand_as(w[r]))
    assert (layer.get_submodule(proj.module).weight != full0).sum() == 2 * w.shape[1]  # only those rows moved


def test_smoothquant_scales_formula():
    act, w = torch.tensor([100.0, 1.0, 4.0]), torch.tensor([1.0, 4.0, 1.0])
    s = smoothquant_scales(act, w, 0.5)
    assert torch.allclose(s, torch.tensor([10.0, 0.5, 2.0]))
    assert torch.allclose(smoothquant_scales(act, w, 1.0), act)
