"""Weight outliers: planted rows and columns are found in the projection they were planted in, on every family,
and an exact migration moves an activation outlier into the weight columns (what W4 pays for)."""
import pytest
import torch

from planting import FAMILIES, plant_gamma_, quiet_post_norms_, structured_embeddings_, tiny_model, windows
from smooth_then_quant import AnalysisConfig, ChannelRule, analyze
from smooth_then_quant.arch import adapter_for
from smooth_then_quant.detect.weights import WeightRule, matrix_outliers, projections
from smooth_then_quant.smooth import MigrateConfig, SmoothingConfig, plan_smoothing, smooth_


def test_matrix_outliers_on_a_known_matrix():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 30, generator=g) * 0.02
    w[7, 3] = 2.0  # row 7 and column 3
    w[:, 11] *= 20  # column 11
    e = matrix_outliers(w, WeightRule(k=4))
    assert e["rows"] == [7] and e["cols"] == [3, 11]
    assert e["max"] == pytest.approx(2.0) and e["ratio"] == pytest.approx(2.0 / float(w.abs().median()), rel=0.02)


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_weight_outliers_are_found_in_their_projection(family):
    model = tiny_model(family)
    adapter = adapter_for(model)
    layer = adapter.decoder_layers(model)[2]
    projs = projections(adapter)
    assert {"x3", "x4", "x5", "x9", adapter.mlp_out_point} <= set(projs)
    with torch.no_grad():
        adapter.weight(layer, projs["x4"])[:, 9] *= 100  # W_k column 9
        adapter.weight(layer, projs[adapter.mlp_out_point])[5] *= 100  # W_down row 5
    an = analyze(model, windows(4, 16)).to_dict()
    w = an["weight_outliers"]
    assert w["x4"]["2"]["cols"] == [9] and w["x4"]["2"]["rows"] == []
    assert w[adapter.mlp_out_point]["2"]["rows"] == [5]
    assert w["x4"]["2"]["ratio"] > 50 * w["x4"]["1"]["ratio"] / 5
    assert all(not e["rows"] and not e["cols"] for p, by in w.items() for li, e in by.items() if li != "2")


def test_an_exact_migration_moves_an_activation_outlier_into_the_weight_columns():
    model = tiny_model("llama")
    structured_embeddings_(model, const_channel=3)
    quiet_post_norms_(model)
    plant_gamma_(model, 2, "attn", 3, 30.0)  # x2 channel 3 ~ 45 in every token: a channel outlier
    ids = windows(8, 16)
    rule = AnalysisConfig(channel=ChannelRule(beta=10.0))
    before = analyze(model, ids, rule)
    plan = plan_smoothing(model, before, SmoothingConfig(migrate=MigrateConfig(alpha=0.5, down=False)), ids)
    after = analyze(smooth_(model, plan), ids, rule)
    for p in ("x3", "x4", "x5"):
        assert 3 not in before.weights[p][2]["cols"] and 3 in after.weights[p][2]["cols"]
        assert after.weights[p][2]["ratio"] > 2 * before.weights[p][2]["ratio"]
