"""Attention outliers: a sink planted on the token that carries a massive activation is found at its layer and head
and linked to the family (born before the sink); the exact migrations leave x6/x7 as they were, the paper's lossy
removal of the family does not."""
import pytest
import torch

from planting import TRIGGER, plant_massive_, quiet_post_norms_, structured_embeddings_, tiny_model, windows
from smooth_then_quant import AnalysisConfig, ChannelRule, SmoothQuantError, analyze
from smooth_then_quant.detect import SinkRule, attention_outliers
from smooth_then_quant.smooth import MigrateConfig, RemoveMassiveConfig, SmoothingConfig, plan_smoothing, smooth_

MA_LAYER, SINK_LAYER, SINK_HEAD, TOKEN = 1, 2, 1, 3
CONST, HIDDEN = 3, 11


@torch.no_grad()
def sink_on_massive_model():
    """GPT-2 (no rotary embedding): layer 1's MLP writes a massive activation into residual channel 11 at the
    TRIGGER token; in layer 2, head 1's query reads the constant channel every ordinary token holds and its key
    reads channel 11, so every later query attends to the token carrying the massive activation."""
    model = tiny_model("gpt2")
    structured_embeddings_(model, const_channel=CONST)
    plant_massive_(model, MA_LAYER, mlp_channel=5, hidden_channel=HIDDEN, reserved=2, weight=300.0,
                   const_channel=CONST)
    w = model.transformer.h[SINK_LAYER].attn.c_attn.weight  # Conv1D [in, 3 * hidden]: q | k | v
    hidden, d = w.shape[0], w.shape[0] // 4
    col = SINK_HEAD * d
    w[:, col] = 0.0
    w[CONST, col] = 3.0
    w[:, hidden + col] = 0.0
    w[HIDDEN, hidden + col] = 3.0
    return model


def test_a_sink_on_the_massive_token_is_linked_to_its_family():
    model = sink_on_massive_model()
    ids = windows(8, 16, trigger_at=TOKEN)
    an = analyze(model, ids)
    att = an.to_dict()["attention"]
    assert [(h["layer"], h["head"]) for h in att["sink_heads"] if h["on_massive"] > 0] == [(SINK_LAYER, SINK_HEAD)]
    head = next(h for h in att["sink_heads"] if (h["layer"], h["head"]) == (SINK_LAYER, SINK_HEAD))
    assert head["keys"] == [TOKEN] and head["token_ids"] == [TRIGGER] and head["windows"] == 1.0
    assert head["on_massive"] == 1.0 and head["share"] > 0.7
    fam = [f for f in att["families"] if f["token"] == TOKEN and f["sink_heads"]]
    assert fam and fam[0]["origin_layer"] == MA_LAYER and fam[0]["first_sink_layer"] == SINK_LAYER
    assert fam[0]["born_before_sink"] is True
    per = att["per_layer"][SINK_LAYER]
    assert per["max_score_head"] == SINK_HEAD and per["max_score_at"]["key"] == TOKEN
    assert per["top_sink_share"] > att["per_layer"][0]["top_sink_share"]


def test_the_rule_cannot_ask_below_what_the_probe_recorded():
    model = sink_on_massive_model()
    an = analyze(model, windows(4, 16, trigger_at=TOKEN), AnalysisConfig(sink=SinkRule(share=0.4)))
    assert an.to_dict()["rules"]["sink"]["share"] == 0.4
    with pytest.raises(SmoothQuantError, match="sink_floor"):
        attention_outliers(an.result, an.massive, SinkRule(share=0.1))
    assert "attention" not in analyze(model, windows(4, 16), AnalysisConfig(attention=False)).to_dict()


def shares(model, ids):
    an = analyze(model, ids, AnalysisConfig(channel=ChannelRule(beta=10.0)))
    return an, {li: (st.mean_share, st.score_max) for li, st in an.result.attention.items()}


def test_exact_migrations_leave_x7_unchanged_and_the_lossy_removal_does_not():
    ids = windows(8, 16, trigger_at=TOKEN)
    model = sink_on_massive_model()
    quiet_post_norms_(model)
    an, before = shares(model, ids)
    exact = plan_smoothing(model, an, SmoothingConfig(migrate=MigrateConfig(alpha=0.5)), ids)
    assert exact.interventions and all(i.exact for i in exact.interventions)
    _, after = shares(smooth_(sink_on_massive_model(), exact), ids)
    for li in before:
        torch.testing.assert_close(after[li][0], before[li][0], rtol=0, atol=1e-5)  # x7: attention shares
        torch.testing.assert_close(after[li][1], before[li][1], rtol=1e-4, atol=1e-4)  # x6: largest scores
    lossy = plan_smoothing(model, an, SmoothingConfig(remove_massive=RemoveMassiveConfig(True)), ids)
    assert any(i.kind == "remove_massive" for i in lossy.interventions)
    _, removed = shares(smooth_(sink_on_massive_model(), lossy), ids)
    drop = before[SINK_LAYER][0][SINK_HEAD, TOKEN] - removed[SINK_LAYER][0][SINK_HEAD, TOKEN]
    assert drop > 0.5  # the sink went with the massive activation
