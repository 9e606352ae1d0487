"""The plan: computed without touching the model, JSON round trip, replay, cancellations."""
import json

import pytest
import torch

from planting import plant_gamma_, plant_massive_, plant_otc_, quiet_post_norms_, structured_embeddings_, tiny_model, windows
from smooth_then_quant import AnalysisConfig, ChannelRule, SmoothQuantError, analyze
from smooth_then_quant.evaluate import model_fingerprint
from smooth_then_quant.smooth import (FlattenGammaConfig, FlattenOTCConfig, MigrateConfig, RemoveMassiveConfig,
                                      Repair, SmoothingConfig, SmoothingPlan, plan_smoothing, runtime_ops, smooth_)


def busy_model(seed=0):
    """Planted TMA (layer 1), γ outliers (layer 2) and an OTC (layer 3) in one tiny llama."""
    model = tiny_model("llama", seed=seed)
    structured_embeddings_(model, const_channel=3)
    quiet_post_norms_(model)
    plant_massive_(model, 1, mlp_channel=5, hidden_channel=11, reserved=2, weight=40.0, const_channel=3)
    plant_gamma_(model, 2, "attn", 3, 30.0)  # γ at the channel every token holds constant
    plant_otc_(model, 3, "x3", row=9, channel=3, scale=2.0)
    return model


def quiet(model, ids):
    # β = 10: the trigger token (one per window) zeroes the constant channel there, which alone gives
    # that channel a spread of ~8 and would hide the planted γ outlier and OTC from the β = 1/3 rule
    return analyze(model, ids, AnalysisConfig(channel=ChannelRule(beta=10.0)))


EVERYTHING = SmoothingConfig(remove_massive=RemoveMassiveConfig(True), flatten_gamma=FlattenGammaConfig(True),
                             flatten_otc=FlattenOTCConfig(True))


@pytest.mark.parametrize("cfg", [SmoothingConfig(), EVERYTHING,
                                 SmoothingConfig(migrate=MigrateConfig(norm="gamma")),
                                 SmoothingConfig(migrate=MigrateConfig(alpha=0.5))],
                         ids=["default", "everything", "gamma", "fixed-alpha"])
def test_planning_leaves_the_model_unchanged(cfg):
    # regression: planning applied the plan temporarily and did not restore exact migrations
    model = busy_model()
    ids = windows(8, 32, trigger_at=0)
    an = quiet(model, ids)
    before = model_fingerprint(model)
    plan = plan_smoothing(model, an, cfg, ids)
    assert plan.interventions
    assert model_fingerprint(model) == before and not runtime_ops(model)


def test_plan_finds_every_planted_outlier_and_orders_lossy_edits_first():
    model = busy_model()
    ids = windows(8, 32, trigger_at=0)
    plan = plan_smoothing(model, quiet(model, ids), EVERYTHING, ids)
    kinds = [i.kind for i in plan.interventions]
    assert kinds.index("migrate_norm") > max(kinds.index(k) for k in ("remove_massive", "flatten_gamma", "flatten_rows"))
    by_kind = {k: [i for i in plan.interventions if i.kind == k] for k in kinds}
    assert [(i.layer, i.channels) for i in by_kind["remove_massive"]] == [(1, [5])]
    assert any(i.layer == 2 and i.site == "attn" and 3 in i.channels for i in by_kind["flatten_gamma"])
    assert [(i.layer, i.point, i.rows) for i in by_kind["flatten_rows"]] == [(3, "x3", [9])]
    assert 1 not in {i.layer for i in by_kind.get("migrate_down", [])}  # removal and y6 migration exclude each other
    assert any("removed at run time" in n for n in plan.notes)


def test_json_round_trip_and_replay_reproduce_the_smoothed_model(tmp_path):
    model = busy_model()
    ids = windows(8, 32, trigger_at=0)
    plan = plan_smoothing(model, quiet(model, ids), EVERYTHING, ids)
    plan.save(tmp_path / "plan.json")
    loaded = SmoothingPlan.load(tmp_path / "plan.json")
    assert loaded.to_dict() == plan.to_dict()
    assert json.loads((tmp_path / "plan.json").read_text())["summary"]
    smooth_(model, plan)
    fresh = smooth_(busy_model(), loaded)
    assert torch.allclose(fresh(ids).logits, model(ids).logits, atol=1e-6)
    assert len(runtime_ops(fresh)) == 1


def test_replay_refuses_what_it_cannot_do(tmp_path):
    model = busy_model()
    bad = {"format": 1, "model_type": "llama", "interventions": [{"kind": "teleport", "layer": 0}]}
    with pytest.raises(SmoothQuantError, match="has unknown kind 'teleport'"):
        SmoothingPlan.from_dict(bad)
    with pytest.raises(SmoothQuantError, match="made for model_type 'gpt2'"):
        smooth_(model, SmoothingPlan("gpt2"))
    with pytest.raises(SmoothQuantError, match="LoRA repair"):
        smooth_(model, SmoothingPlan("llama", [Repair(["model.layers.0.self_attn.q_proj"], {}, {})]))
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(SmoothQuantError, match="not a valid smoothing plan"):
        SmoothingPlan.load(tmp_path / "p.json")


def test_cancelling_tma_is_linked_and_kept_with_the_family_it_cancels():
    """Layer 1 writes +A into residual channel 11 at the trigger token; layer 3 writes -A back
    (the paper's late opposite-sign TMAs). Removing only layer 1's must bring layer 3's along."""
    model = tiny_model("llama", layers=5)
    structured_embeddings_(model, const_channel=3)
    plant_massive_(model, 1, mlp_channel=5, hidden_channel=11, reserved=2, weight=40.0, const_channel=3)
    with torch.no_grad():  # layer 3 reads the carried MA (channel 11) and writes it back with the opposite sign
        from smooth_then_quant.arch import adapter_for

        mlp = adapter_for(model).decoder_layers(model)[3].mlp
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
            w[5] = 0.0
            w[5, 11] = 40.0
        mlp.gate_proj.weight[5, 3] = -10.0 / 1.5
        mlp.down_proj.weight[:, 5] = 0.0
        mlp.down_proj.weight[11, 5] = -0.9
    ids = windows(8, 32, trigger_at=0)
    an = quiet(model, ids)
    links = an.cancellations()
    assert links and links[0]["layer"] == 3 and links[0]["channel"] == 11 and links[0]["cancels"]["layer"] == 1
    assert abs(links[0]["after"]) < abs(links[0]["carried"])
    cfg = SmoothingConfig(remove_massive=RemoveMassiveConfig(True, layers=(1,)),
                          migrate=MigrateConfig(norm="none", down=False))
    plan = plan_smoothing(model, an, cfg, ids)
    assert sorted(i.layer for i in plan.interventions) == [1, 3]
    assert any("cancels the family created at layer 1" in n for n in plan.notes)


def test_gamma_migration_is_exact_and_removes_the_gamma_outlier():
    """migrate.norm: gamma — the exact form of the paper's γ flattening: the planted γ outlier (layer 2, attn
    norm, channel 3) is brought to the γ mean, the readers' columns absorb it, the logits do not move."""
    model = busy_model()
    ids = windows(8, 32, trigger_at=0)
    before = quiet(model, ids)
    site_point = before.result.adapter.attn_norm.output_point
    assert 3 in before.gamma_outliers[site_point][2]["channels"]
    ref = model(ids).logits
    adapter = before.result.adapter
    old = adapter.gamma(adapter.decoder_layers(model)[2], adapter.attn_norm).clone()
    plan = plan_smoothing(model, before, SmoothingConfig(migrate=MigrateConfig(norm="gamma", down=False)), ids)
    items = [i for i in plan.interventions if i.kind == "migrate_norm"]
    assert items and all(i.alpha == 1.0 for i in items)
    smooth_(model, plan)
    assert torch.allclose(model(ids).logits, ref, atol=1e-4)  # exact
    gamma = adapter.gamma(adapter.decoder_layers(model)[2], adapter.attn_norm)
    assert float(old[3]) > 10 * float(old.mean())
    assert float(gamma[3]) == pytest.approx(float(old.mean()), rel=1e-4)  # s_3 = γ_3 / mean(γ): set to the mean
    others = torch.arange(gamma.numel()) != 3
    assert torch.equal(gamma[others], old[others])  # only the outlier channel moves
    assert 2 not in quiet(model, ids).gamma_outliers[site_point]  # and no longer a γ outlier


def test_remove_massive_on_all_channels_removes_what_calibration_never_saw():
    """remove_massive.channels: all — the hook acts on any channel, not only the detected ones."""
    model = busy_model()
    ids = windows(8, 32, trigger_at=0)
    an = quiet(model, ids)
    off = MigrateConfig(norm="none", down=False)
    detected = plan_smoothing(model, an, SmoothingConfig(remove_massive=RemoveMassiveConfig(True), migrate=off), ids)
    every = plan_smoothing(model, an, SmoothingConfig(remove_massive=RemoveMassiveConfig(True, channels="all"),
                                                      migrate=off), ids)
    assert [i.channels for i in detected.interventions] == [[5]]
    assert [i.channels for i in every.interventions] == [None]
    y = torch.zeros(1, 4, 8)
    y[0, 1, 2] = 5000.0  # a massive value in channel 2, which calibration did not see
    assert detected.runtime()[0](y)[0, 1, 2] == 5000.0
    assert every.runtime()[0](y)[0, 1, 2] == pytest.approx(float(y.mean()))
