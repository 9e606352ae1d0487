"""Tamper-proof reload: smoothing_plan.json and activation_quant.json are checked against a schema (types, ranges,
layers within the model, finite values, known kinds and modes) and bound by sha256 to the weights they were written
with; every mismatch is a one-line error, never a silently different model."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from planting import save_tiny, windows
from smooth_then_quant import SmoothQuantError
from smooth_then_quant.export import export_quantized
from smooth_then_quant.load import load_model
from smooth_then_quant.quantize import ActQuant, GPTQWeights, Scheme, quantize_
from smooth_then_quant.smooth import MassiveRemoval, RemoveMassive, SmoothingPlan, attach_runtime_


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tamper")
    save_tiny(tmp / "m", "llama", init=0.05)
    loaded = load_model(str(tmp / "m"))
    model, ids = loaded.model, windows(4, 24)
    attach_runtime_(model, [MassiveRemoval(1, "y6", (5,), "mean")])
    quantize_(model, Scheme("W4A8-static", GPTQWeights(4, 32), ActQuant(8, "per_tensor")), ids)
    plan = SmoothingPlan("llama", [RemoveMassive(layer=1, point="y6", channels=[5], replace_with="mean")])
    export_quantized(model, loaded.tokenizer, tmp / "q", plan=plan)
    return tmp / "q"


def _copy(export, tmp_path):
    dst = tmp_path / "q"
    shutil.copytree(export, dst)
    return dst


def test_the_untouched_export_loads(export):
    back = load_model(str(export))
    assert back.provenance["runtime_interventions"] == 1 and "activation_quant" in back.provenance


def _plan_edit(path, f):
    d = json.loads(path.read_text())
    f(d)
    path.write_text(json.dumps(d))


PLAN_TAMPERS = {
    "layer -1": (lambda d: d["interventions"][0].update(layer=-1), "greater than or equal to 0"),
    "layer past the model": (lambda d: d["interventions"][0].update(layer=99), "layer 99, but the model has 4 layers"),
    "replace_with evil": (lambda d: d["interventions"][0].update(replace_with="evil"), "replace_with"),
    "ratio NaN": (lambda d: d["interventions"][0].update(ratio=float("nan")), "finite"),
    "ratio as text": (lambda d: d["interventions"][0].update(ratio="1000"), "ratio"),
    "layer as text": (lambda d: d["interventions"][0].update(layer="1"), "layer"),
    "channel negative": (lambda d: d["interventions"][0].update(channels=[-3]), "channels"),
    "unknown kind": (lambda d: d["interventions"][0].update(kind="rm_rf"), "unknown kind"),
    "unknown field": (lambda d: d["interventions"][0].update(hook="os.system"), "unknown or altered fields"),
    "altered exactness": (lambda d: d["interventions"][0].update(exact=True), "unknown or altered fields"),
    "other model type": (lambda d: d.update(model_type="gpt2"), "made for a 'gpt2' model"),
    "interventions not a list": (lambda d: d.update(interventions={"a": 1}), "list of interventions"),
    "binding removed": (lambda d: d.pop("weights_sha256"), "not bound to any weights"),
    "binding altered": (lambda d: d["weights_sha256"].update({"model.safetensors": "0" * 64}), "belongs to other weights"),
}


@pytest.mark.parametrize("case", list(PLAN_TAMPERS))
def test_a_tampered_plan_is_refused(export, tmp_path, case):
    q = _copy(export, tmp_path)
    edit, needle = PLAN_TAMPERS[case]
    _plan_edit(q / "smoothing_plan.json", edit)
    with pytest.raises(SmoothQuantError, match=needle) as e:
        load_model(str(q))
    assert "\n" not in str(e.value)


ACT_TAMPERS = {
    "NaN range": (lambda d: next(iter(d["ranges"].values())).__setitem__(0, float("nan")), "finite"),
    "swapped range": (lambda d: d["ranges"].update({k: [1.0, -1.0] for k in list(d["ranges"])[:1]}), "lo <= hi"),
    "unknown projection": (lambda d: d["ranges"].update({"model.evil": [0.0, 1.0]}), "this model's projections"),
    "bits as text": (lambda d: d.update(bits="8"), "bits"),
    "bits out of range": (lambda d: d.update(bits=99), "bits"),
    "unknown granularity": (lambda d: d.update(granularity="per_galaxy"), "granularity"),
    "static without ranges": (lambda d: d.update(ranges=None), "needs its calibrated ranges"),
    "extra key": (lambda d: d.update(exec="x"), "expected the keys"),
    "binding altered": (lambda d: d.update(weights_sha256={"model.safetensors": "f" * 64}), "belongs to other weights"),
}


@pytest.mark.parametrize("case", list(ACT_TAMPERS))
def test_tampered_activation_ranges_are_refused(export, tmp_path, case):
    q = _copy(export, tmp_path)
    edit, needle = ACT_TAMPERS[case]
    _plan_edit(q / "activation_quant.json", edit)
    with pytest.raises(SmoothQuantError, match=needle) as e:
        load_model(str(q))
    assert "\n" not in str(e.value)


def test_other_weights_under_the_same_plan_are_refused(export, tmp_path):
    q = _copy(export, tmp_path)
    t = load_file(q / "model.safetensors")
    name = next(k for k, v in t.items() if v.dtype == torch.float32 and "norm" in k)
    t[name] = t[name] * 2
    save_file(t, q / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SmoothQuantError, match="belongs to other weights: model.safetensors"):
        load_model(str(q))


def test_garbage_json_is_a_one_line_error(export, tmp_path):
    q = _copy(export, tmp_path)
    (q / "smoothing_plan.json").write_bytes(b"\xff\xfe{not json")
    with pytest.raises(SmoothQuantError, match="smoothing_plan.json is not valid JSON"):
        load_model(str(q))
    q2 = _copy(export, tmp_path / "b")
    (q2 / "activation_quant.json").write_text("[" * 100000)
    with pytest.raises(SmoothQuantError, match="not valid JSON"):
        load_model(str(q2))
