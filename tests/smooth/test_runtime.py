"""TMA removal as a runtime hook: what it replaces, what vanishes downstream, and that it survives export."""
from collections import Counter

import pytest
import torch

from planting import FAMILIES, plant_massive_, quiet_post_norms_, structured_embeddings_, tiny_model, windows
from smooth_then_quant import AnalysisConfig, analyze
from smooth_then_quant.export import export_smoothed
from smooth_then_quant.load import load_model
from smooth_then_quant.smooth import (MassiveRemoval, MigrateConfig, RemoveMassiveConfig, SmoothingConfig, clone_model,
                                      plan_smoothing, remove_massive, runtime_ops, smooth_)

NO_MIGRATION = MigrateConfig(norm="none", down=False)


def planted(family):
    model = tiny_model(family)
    structured_embeddings_(model, const_channel=3)
    quiet_post_norms_(model)
    weight = 300.0 if family == "gpt2" else 40.0  # GPT-2's act(fc) is linear in the weight, not quadratic
    plant_massive_(model, 1, mlp_channel=5, hidden_channel=11, reserved=2, weight=weight, const_channel=3)
    return model


def quiet_analyze(model, ids):
    return analyze(model, ids, AnalysisConfig())


def test_remove_massive_hand_case():
    y = torch.ones(2, 3, 4)
    y[0, 0, 1] = 5000.0
    y[1, 2, 3] = -3000.0
    y[1, 1, 0] = 4000.0
    op = MassiveRemoval(0, "y6", (1, 3), "mean")
    out = remove_massive(y, op)
    assert out[0, 0, 1] == pytest.approx(float(y[0].mean()))
    assert out[1, 2, 3] == pytest.approx(float(y[1].mean()))
    assert out[1, 1, 0] == 4000.0  # channel 0 is not in the plan
    zero = remove_massive(y, MassiveRemoval(0, "y6", None, "zero"))
    assert zero[1, 1, 0] == 0 and zero[0, 0, 1] == 0 and (zero.abs() <= 1).sum() == y.numel()
    small = torch.full((1, 3, 4), 50.0)  # under the absolute threshold: untouched
    assert torch.equal(remove_massive(small, op), small)


@pytest.mark.parametrize("family", FAMILIES)
def test_tma_removal_at_down_input_removes_the_downstream_fmas(family):
    model = planted(family)
    ids = windows(8, 32, trigger_at=0)
    before = quiet_analyze(model, ids)
    point = before.result.adapter.massive_point
    assert any(a.kind == "FMA" for a in before.massive), Counter((a.layer, a.point, a.kind) for a in before.massive)
    plan = plan_smoothing(model, before, SmoothingConfig(remove_massive=RemoveMassiveConfig(True, "mean"),
                                                         migrate=NO_MIGRATION), ids)
    assert [(i.layer, i.point, i.channels) for i in plan.interventions] == [(1, point, [5])]
    smooth_(model, plan)
    after = quiet_analyze(model, ids)
    left = Counter((a.layer, a.point, a.kind) for a in after.massive)
    adapter = before.result.adapter
    assert not any(a.point in (point, adapter.mlp_out_point) for a in after.massive), left
    if adapter.post_norms:
        # Gemma rescales the MLP output with a post-norm before the residual add: a large γ there
        # re-creates the stream's MA from whatever is left, so y6 removal cannot reach it.
        assert any(a.point == "x1" for a in after.massive)
        return
    assert not any(a.kind == "FMA" for a in after.massive), left
    assert {a.point for a in after.massive} <= {"y3", "y4", "y5"} - {point}  # only upstream of the removal
    top_before, top_after = before.top_abs("x1", 1), after.top_abs("x1", 1)
    assert top_before[2][0] > 1000 and top_after[2][0] < 100  # paper Figure 4 right: no MA left in x1


def test_removal_at_down_output_is_the_papers_contrast():
    model = planted("llama")
    ids = windows(8, 32, trigger_at=0)
    an = quiet_analyze(model, ids)
    plan = plan_smoothing(model, an, SmoothingConfig(remove_massive=RemoveMassiveConfig(True, "zero", "down_output"),
                                                     migrate=NO_MIGRATION), ids)
    assert {i.point for i in plan.interventions} == {"y7"}
    smooth_(model, plan)
    after = quiet_analyze(model, ids)
    assert {a.point for a in after.massive} <= {"y3", "y4", "y5", "y6"}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_runtime_intervention_survives_export_and_reload(family, tmp_path):
    from planting import char_tokenizer

    model = planted(family)
    ids = windows(4, 32, trigger_at=0)
    an = quiet_analyze(model, ids)
    plan = plan_smoothing(model, an, SmoothingConfig(remove_massive=RemoveMassiveConfig(True), migrate=NO_MIGRATION), ids)
    original = model(ids).logits.detach()
    smooth_(model, plan)
    expected = model(ids).logits.detach()
    assert not torch.allclose(expected, original, atol=1e-3)  # the hook does change the outputs
    export_smoothed(model, char_tokenizer(), plan, tmp_path / "smoothed")
    assert (tmp_path / "smoothed" / "smoothing_plan.json").is_file()
    assert not list(tmp_path.glob(".smoothed.partial-*"))
    loaded = load_model(str(tmp_path / "smoothed"))
    assert loaded.provenance["runtime_interventions"] == 1 and len(runtime_ops(loaded.model)) == 1
    assert torch.allclose(loaded.model(ids).logits, expected, atol=1e-5)
    twin = clone_model(loaded.model)  # copies keep the hooks too
    assert torch.allclose(twin(ids).logits, expected, atol=1e-5)


def test_runtime_hook_runs_before_hooks_registered_earlier():
    """An activation quantizer or a GPTQ input catcher attached first must still see the smoothed input."""
    model = planted("llama")
    ids = windows(2, 16, trigger_at=0)
    down = model.model.layers[1].mlp.down_proj
    seen = {}
    down.register_forward_pre_hook(lambda m, a: seen.__setitem__("max", float(a[0].abs().max())))
    model(ids)
    assert seen["max"] > 1000
    smooth_(model, plan_smoothing(model, quiet_analyze(model, ids),
                                  SmoothingConfig(remove_massive=RemoveMassiveConfig(True, "zero"),
                                                  migrate=NO_MIGRATION), ids))
    model(ids)
    assert seen["max"] < 100


def test_runtime_hook_follows_a_module_swap():
    """GPTQModel replaces every nn.Linear during quantize(); the removal must keep acting on the new module."""
    model = planted("llama")
    ids = windows(2, 16, trigger_at=0)
    smooth_(model, plan_smoothing(model, quiet_analyze(model, ids),
                                  SmoothingConfig(remove_massive=RemoveMassiveConfig(True, "zero"),
                                                  migrate=NO_MIGRATION), ids))
    mlp = model.model.layers[1].mlp
    swapped = torch.nn.Linear(mlp.down_proj.in_features, mlp.down_proj.out_features, bias=False)
    swapped.weight.data.copy_(mlp.down_proj.weight.data)
    mlp.down_proj = swapped
    seen = {}
    swapped.register_forward_pre_hook(lambda m, a: seen.__setitem__("max", float(a[0].abs().max())))
    model(ids)
    assert seen["max"] < 100  # the TMA was removed before the new module's own hooks ran
    assert len(runtime_ops(model)) == 1
