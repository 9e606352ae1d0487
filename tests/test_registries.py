"""A new intervention, export format, weight method and activation granularity are each one registration:
defined here, outside the package, they are validated, dry-run, planned, applied, reported and exported."""
import json
from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest
import torch
from pydantic import Field

from planting import save_tiny, tiny_model, windows
from smooth_then_quant.arch import adapter_for
from smooth_then_quant.cli import main
from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.evaluate import evaluation_windows, perplexity
from smooth_then_quant.export import ExportFormat, register_format, unregister_format
from smooth_then_quant.load import load_model
from smooth_then_quant.quantize import (GRANULARITIES, WEIGHT_METHODS, ActQuant, Granularity, GroupSize, Scheme,
                                        WeightMethod, WeightQuant, fake_quant_act, linear_modules, quantize_,
                                        register_granularity, register_weight_method, rtn_weights_)
from smooth_then_quant.quantize.fake import weight_view
from smooth_then_quant.recipe import validate_recipe
from smooth_then_quant.schema import Config
from smooth_then_quant.smooth import (Intervention, PlanItem, SmoothingConfig, SmoothingPlan, params_of,
                                      plan_smoothing, register_intervention, smooth_, unregister_intervention)


# ---- a toy intervention: scale layer 0's attention norm by 1/f and the q/k/v input columns by f (exact) ----
class ScaleNormConfig(Config):
    enabled: bool = False
    factor: float = Field(2.0, gt=0)


@dataclass
class ScaleNorm(PlanItem):
    """Toy: attention norm γ / f, q/k/v columns × f (exact)."""
    kind: ClassVar[str] = "toy_scale_norm"
    exact: ClassVar[bool] = True
    foldable: ClassVar[bool] = True
    layer: int
    factor: float

    def apply_(self, layer, adapter) -> None:
        with torch.no_grad():
            layer.get_submodule(adapter.attn_norm.norm).weight.div_(self.factor)
            for p in adapter.attn_norm.reads:
                layer.get_submodule(p.module).weight.mul_(self.factor)

    def touched(self, adapter, layer):
        return params_of(layer, adapter.attn_norm.norm) + [t for p in adapter.attn_norm.reads
                                                            for t in params_of(layer, p.module)]


def _plan(ctx, cfg: ScaleNormConfig) -> None:
    ctx.plan.interventions.append(ScaleNorm(0, cfg.factor))


# ---- a toy export format: the dequantized projections in float32 under their own key ----------------
def _projection_tensors(model, name, m, qc):
    return {"toy_weight": weight_view(m).detach().float().cpu()}


def _load_projections(model, tensors, qc, source):
    for n, m in adapter_for(model).named_projections(model):
        weight_view(m).copy_(tensors.pop(f"{n}.toy_weight"))


# ---- a toy weight method (RTN at half the group size) and a toy granularity (per-tensor dynamic) -------
class HalfGroupRTN(Config):
    bits: int = Field(4, ge=2, le=8)
    group_size: GroupSize = 64
    symmetric: bool = True
    method: Literal["toy_half_group"] = "toy_half_group"

    def describe(self) -> str:
        return f"toy RTN int{self.bits} g{self.group_size // 2}"


def _half_group(model, cfg, ids, batch_size, backend, tokenizer) -> dict:
    rtn_weights_(model, WeightQuant(cfg.bits, cfg.group_size // 2, cfg.symmetric))
    return {"toy": True}


@pytest.fixture(scope="module", autouse=True)
def toys():
    register_intervention(Intervention(
        name="toy_scale", config=ScaleNormConfig, items=(ScaleNorm,), plan=_plan, order=40,
        describe=lambda cfg: [f"toy: scale the attention norm by 1/{cfg.factor} (exact)"]))
    register_format(ExportFormat(
        name="toy-f32", quant_method="toy-f32", projection_tensors=_projection_tensors, load_projections=_load_projections,
        quantization_config=lambda model: {"quant_method": "toy-f32", "note": "dequantized projections"},
        refuses=lambda scheme: None if scheme["weights"]["bits"] == 4 else "with bits other than 4 (toy)",
        how_to_load=lambda w, a8: ["Toy format: load it with `smooth_then_quant.load_model`.", ""]))
    register_weight_method(WeightMethod("toy_half_group", HalfGroupRTN, _half_group))
    register_granularity(Granularity("toy_tensor_dynamic", False, "per-tensor dynamic (toy)",
                                     lambda x, _static: (x.amin(), x.amax())))
    yield
    unregister_intervention("toy_scale")
    unregister_format("toy-f32")
    del WEIGHT_METHODS["toy_half_group"], GRANULARITIES["toy_tensor_dynamic"]


def test_the_toy_intervention_validates_plans_and_applies_exactly():
    cfg = validate_recipe({"output_dir": "x", "smoothing": {"toy_scale": {"enabled": True, "factor": 4}}}).smoothing
    assert cfg.section("toy_scale").factor == 4.0 and [iv.name for iv in cfg.active()] == ["toy_scale", "migrate"]
    with pytest.raises(SmoothQuantError, match=r"'smoothing.toy_scale.factor': Input should be greater than 0"):
        validate_recipe({"output_dir": "x", "smoothing": {"toy_scale": {"factor": -1}}})
    with pytest.raises(SmoothQuantError, match=r"did you mean 'smoothing.toy_scale'"):
        validate_recipe({"output_dir": "x", "smoothing": {"toy_scal": {}}})
    model = tiny_model("llama", init=0.05)
    ids = windows(2, 16)
    ref = model(ids).logits
    only = SmoothingConfig(toy_scale=ScaleNormConfig(enabled=True), migrate={"norm": "none", "down": False})
    plan = plan_smoothing(model, None, only, ids)
    assert [i.kind for i in plan.interventions] == ["toy_scale_norm"]
    assert SmoothingPlan.from_dict(json.loads(json.dumps(plan.to_dict()))).interventions == plan.interventions
    norm = adapter_for(model).decoder_layers(model)[0].get_submodule(adapter_for(model).attn_norm.norm).weight
    before = norm.detach().clone()
    smooth_(model, plan)
    assert torch.allclose(norm, before / 2) and torch.allclose(model(ids).logits, ref, atol=1e-4)


def test_the_toy_method_and_granularity_quantize():
    model = tiny_model("llama", init=0.05)
    rep = quantize_(model, Scheme("toy", {"method": "toy_half_group", "group_size": 64},
                                  ActQuant(8, "toy_tensor_dynamic")), windows(2, 16))
    assert rep["weights"]["toy"] and rep["scheme"]["description"] == "toy RTN int4 g32, A8 per-tensor dynamic (toy)"
    w = weight_view(linear_modules(model)[0][1])
    assert max(w[r, s: s + 32].unique().numel() for r in range(4) for s in range(0, w.shape[1], 32)) <= 16
    x = torch.randn(3, 5, 8)
    assert torch.equal(fake_quant_act(x, ActQuant(8, "toy_tensor_dynamic")), fake_quant_act(x, ActQuant(8)))
    with pytest.raises(SmoothQuantError, match="granularity must be one of per_token, per_tensor, toy_tensor_dynamic"):
        ActQuant(8, "per_row")
    # the compressed-tensors format has no strategy for it: refused at validation, not after the run
    with pytest.raises(SmoothQuantError, match="cannot hold scheme 'T' with activation granularity toy_tensor_dynamic"):
        validate_recipe({"output_dir": "x", "quantization": {"enabled": True, "schemes": {
            "T": {"weights": {"method": "rtn"}, "activations": {"granularity": "toy_tensor_dynamic"}}}},
            "export": {"model": False, "quantized": {"scheme": "T", "state": "baseline",
                                                      "format": "compressed-tensors"}}})


def test_a_recipe_run_dry_runs_reports_and_exports_through_the_toys(tmp_path, capsys):
    folder = tmp_path / "tiny"
    save_tiny(folder, "llama")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {folder}\noutput_dir: {tmp_path / 'out'}\ncalibration: {{samples: 4, seq_len: 32}}\n"
        "analysis: {plots: false}\n"
        "smoothing: {enabled: true, toy_scale: {enabled: true, factor: 2}, migrate: {norm: none, down: false}}\n"
        "quantization: {enabled: true, compare: [baseline, smoothed], schemes: "
        "{T: {weights: {method: toy_half_group, group_size: 64}}}}\n"
        "evaluation: {seq_len: 32, max_windows: 2, per_intervention: false, evidence_samples: 2}\n"
        "export: {model: true, quantized: {scheme: T, state: smoothed, format: toy-f32}}\n")
    assert main([str(recipe), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "toy: scale the attention norm by 1/2.0 (exact)" in dry and "toy-f32 format" in dry
    assert main([str(recipe), "-q"]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert [r["kind"] for r in report["smoothing"]["plan"]["summary"]] == ["toy_scale_norm"]
    assert "toy_scale_norm" in (out / "report.md").read_text()
    assert "toy_scale_norm" in (out / "model" / "README.md").read_text()
    card = (out / "quantized" / "README.md").read_text()
    assert "Toy format" in card and "toy RTN int4 g32" in card
    assert json.loads((out / "quantized" / "config.json").read_text())["quantization_config"]["quant_method"] == \
        "toy-f32"
    reloaded = load_model(str(out / "quantized"))  # through the toy format's reader
    ids, _ = evaluation_windows(reloaded.tokenizer, "offline", 32, 2)
    row = next(r for r in report["quantization"]["rows"] if (r["scheme"], r["state"]) == ("T", "smoothed"))
    assert perplexity(reloaded.model, ids, 1, False) == pytest.approx(row["ppl"]["offline"], rel=1e-6)



def test_every_registered_plan_kind_says_how_it_applies_and_what_it_touches():
    """Planning applies earlier items temporarily and restores what they touched: a foldable kind that does
    not say what it touches would fail only when a later intervention plans on top of it."""
    from smooth_then_quant.smooth.plan import ITEM_KINDS

    assert {"remove_massive", "flatten_gamma", "flatten_rows", "migrate_norm", "migrate_down", "repair"} <= set(ITEM_KINDS)
    for kind, cls in ITEM_KINDS.items():
        if cls.foldable:
            assert cls.apply_ is not PlanItem.apply_ and cls.touched is not PlanItem.touched, kind
        else:
            assert cls.runtime_op is not PlanItem.runtime_op, kind
