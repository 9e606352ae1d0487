import pytest

from planting import FAMILIES, TRIGGER, plant_massive_, quiet_post_norms_, structured_embeddings_, tiny_model, windows
from smooth_then_quant.detect import analyze, AnalysisConfig
from smooth_then_quant.detect import MassiveRule, find_massive
from smooth_then_quant.probe import ProbeConfig, probe_model

LAYER, MLP_CH, HID_CH, RESERVED, TOKEN, CONST = 1, 17, 9, 40, 3, 21


def planted(family):
    model = tiny_model(family)
    structured_embeddings_(model, const_channel=CONST)
    quiet_post_norms_(model)
    weight = 300.0 if family == "gpt2" else 5.0  # |a| ≈ 2000: > 1000 × median of unit-scale activations
    plant_massive_(model, LAYER, MLP_CH, HID_CH, RESERVED, weight, const_channel=CONST)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_massive_activation_is_tma_at_its_layer_and_fma_downstream(family):
    model = planted(family)
    result = probe_model(model, windows(8, 16, trigger_at=TOKEN), ProbeConfig())
    mas = find_massive(result)
    assert mas, "planted massive activation not found"
    assert {a.token for a in mas} == {TOKEN}
    adapter = result.adapter
    # Born in the MLP of LAYER: y6 for gated MLPs; GPT-2's plain MLP makes it at the c_fc output y3
    # (GELU passes a large positive value through), then y4 = down-projection input.
    origin = "y3" if family == "gpt2" else "y6"
    assert {(a.origin_layer, a.origin_point) for a in mas} == {(LAYER, origin)}
    at_down_input = [a for a in mas if (a.layer, a.point) == (LAYER, adapter.massive_point)]
    assert {a.channel for a in at_down_input} == {MLP_CH}
    assert all(a.kind == "TMA" for a in at_down_input)
    assert len({a.sample for a in at_down_input}) == 8
    # Inside LAYER everything is TMA; every later layer input carries it as an FMA in HID_CH.
    assert all(a.kind == "TMA" for a in mas if a.layer == LAYER)
    downstream = [a for a in mas if a.layer > LAYER]
    assert downstream and all(a.kind == "FMA" for a in downstream)
    for layer in range(LAYER + 1, result.num_layers):
        x1 = [a for a in mas if (a.layer, a.point) == (layer, "x1")]
        assert {a.channel for a in x1} == {HID_CH}, layer
    assert not [a for a in mas if a.layer < LAYER]


def test_no_massive_activation_without_the_plant():
    model = tiny_model("llama")
    structured_embeddings_(model)
    assert find_massive(probe_model(model, windows(8, 16, trigger_at=TOKEN), ProbeConfig())) == []


def test_thresholds_are_configurable():
    model = planted("llama")
    ids = windows(8, 16, trigger_at=TOKEN)
    strict = analyze(model, ids, AnalysisConfig(massive=MassiveRule(abs_threshold=1e9)))
    assert strict.massive == []
    loose = analyze(model, ids, AnalysisConfig())
    assert loose.massive


def test_families_report_origin_and_residual_channel():
    model = planted("llama")
    a = analyze(model, windows(8, 16, trigger_at=TOKEN), AnalysisConfig())
    fams = a.to_dict()["massive_families"]
    assert len(fams) == 1
    f = fams[0]
    assert (f["origin_layer"], f["origin_point"], f["token"]) == (LAYER, "y6", TOKEN)
    assert f["origin_channels"] == [MLP_CH] and f["residual_channels"] == [HID_CH]
    assert f["token_id"] == TRIGGER
