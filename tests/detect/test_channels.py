import pytest
import torch

from planting import FAMILIES, plant_gamma_, plant_otc_, quiet_post_norms_, structured_embeddings_, tiny_model, windows
from smooth_then_quant.detect import AnalysisConfig, analyze
from smooth_then_quant.detect import ChannelRule, outlier_mask

CONST = 21  # the embedding channel that holds the same value for every token


def run(model):
    return analyze(model, windows(8, 16), AnalysisConfig())


def test_outlier_rule_by_hand():
    mean = torch.tensor([0.0, 0.1, 9.0, -9.0, 9.0], dtype=torch.float64)
    std = torch.tensor([1.0, 1.0, 0.1, 0.2, 0.5], dtype=torch.float64)
    got = outlier_mask(mean, std, tensor_mean=0.0, tensor_std=2.0, rule=ChannelRule(m=4, beta=1 / 3))
    assert got.tolist() == [False, False, True, True, False]  # last one: too spread (std 0.5 > β)


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_gamma_entries_are_reported(family):
    model = tiny_model(family)
    structured_embeddings_(model, const_channel=CONST)
    quiet_post_norms_(model)
    plant_gamma_(model, 0, "attn", CONST, 30.0)
    plant_gamma_(model, 0, "mlp", CONST, 30.0)
    a = run(model)
    assert a.gamma_outliers["x2"][0]["channels"] == [CONST]
    assert a.gamma_outliers["y2"][0]["channels"] == [CONST]
    assert a.gamma_outliers["x2"][0]["gamma"] == [pytest.approx(30.0)]
    assert a.channel_outliers["x2"][0] == [CONST]
    assert 0 not in a.channel_outliers["x1"]  # the standardized input has no outlier there


@pytest.mark.parametrize("family", FAMILIES)
def test_no_gamma_outlier_without_the_plant(family):
    model = tiny_model(family)
    structured_embeddings_(model, const_channel=CONST)
    a = run(model)
    assert 0 not in a.gamma_outliers["x2"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("point", ["x3", "x4"])
def test_planted_query_key_row_is_an_otc(family, point):
    model = tiny_model(family)
    structured_embeddings_(model, const_channel=CONST)
    row = 5
    plant_otc_(model, 1, point, row, CONST, 10.0)
    a = run(model)
    assert a.otc[point] == {1: [row]}
    assert all(not rows for p, rows in a.otc.items() if p != point)


def test_an_outlier_explained_by_the_input_is_not_an_otc():
    """If x2 already has the outlier channel (γ made it), a row reading it is not an OTC."""
    model = tiny_model("llama")
    structured_embeddings_(model, const_channel=CONST)
    plant_gamma_(model, 1, "attn", CONST, 30.0)
    plant_otc_(model, 1, "x3", 5, CONST, 1.0)
    a = run(model)
    assert 5 in a.channel_outliers["x3"].get(1, [])
    assert a.otc["x3"] == {}
