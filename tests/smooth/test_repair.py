"""LoRA repair (peft): lowers the KL to the unmodified model and merges cleanly."""
import pytest

from planting import tiny_model, windows
from smooth_then_quant import SmoothQuantError
from smooth_then_quant.smooth import (FlattenRows, RemoveMassive, RepairConfig, SmoothingPlan, clone_model, kl_to,
                                      repair_, runtime_ops, smooth_)

FAST = RepairConfig(steps=150, lr=3e-3, rank=16, batch_size=4, seq_len=32)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_repair_lowers_kl_and_leaves_no_peft_module(family):
    model = tiny_model(family, init=0.1)  # a model whose predictions depend on its weights
    ids = windows(16, 32)
    teacher = clone_model(model)
    keys = set(model.state_dict())
    plan = SmoothingPlan(model.config.model_type, [FlattenRows(1, "x3", list(range(0, 64, 4))),
                                                   FlattenRows(2, "x4", list(range(0, 32, 4)))])
    smooth_(model, plan)
    entry = repair_(model, teacher, ids, plan, FAST)
    r = entry.result
    assert r["kl_after"] < 0.8 * r["kl_before"]
    assert r["kl_after"] == pytest.approx(kl_to(teacher, model, ids[:FAST.heldout]), rel=1e-4)
    assert set(model.state_dict()) == keys  # merged: no lora_A / lora_B / base_layer left
    assert not any("lora" in n.lower() for n, _ in model.named_modules())
    assert type(model).__name__.endswith("LMHeadModel") or type(model).__name__.endswith("ForCausalLM")
    assert plan.interventions[-1] is entry and entry.modules


def test_repair_keeps_runtime_hooks_working():
    model = tiny_model("llama", init=0.1)
    ids = windows(12, 32)
    teacher = clone_model(model)
    plan = SmoothingPlan("llama", [RemoveMassive(1, "y6", None, "zero", abs_threshold=0.0, ratio=0.0)])  # zero all y6
    smooth_(model, plan)
    repair_(model, teacher, ids, plan, RepairConfig(roles=("mlp_out",), layers="affected", steps=3, seq_len=16,
                                                    heldout=2))
    assert len(runtime_ops(model)) == 1
    seen = {}
    model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("y7", o))
    model(ids[:1])
    assert seen["y7"].abs().max() == 0  # the hook still zeroes the merged down projection's input


def test_repair_needs_calibration_beyond_the_heldout_windows():
    model = tiny_model("llama")
    with pytest.raises(SmoothQuantError, match="heldout"):
        repair_(model, clone_model(model), windows(2, 8), SmoothingPlan("llama"), RepairConfig(heldout=4))


def test_peft_import_trouble_is_a_clear_error_and_keeps_the_hooks(monkeypatch):
    # regression: with gptqmodel installed but not optimum, peft raised ImportError from deep inside
    # get_peft_model and the CLI printed a traceback
    import peft

    def broken(*a, **k):
        raise ImportError("gptqmodel requires optimum version `1.24.0` or higher to be installed.")
    monkeypatch.setattr(peft, "get_peft_model", broken)
    model = tiny_model("llama")
    plan = SmoothingPlan("llama", [RemoveMassive(1, "y6", None, "zero")])
    smooth_(model, plan)
    with pytest.raises(SmoothQuantError, match="peft could not wrap the model.*optimum"):
        repair_(model, clone_model(model), windows(8, 16), plan, RepairConfig(steps=1, heldout=2))
    assert len(runtime_ops(model)) == 1
