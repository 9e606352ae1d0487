"""Export of a smoothed model: weight-folded interventions need nothing but the checkpoint."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from planting import FAMILIES, char_tokenizer, plant_gamma_, structured_embeddings_, tiny_model, windows
from smooth_then_quant import AnalysisConfig, SmoothQuantError, analyze
from smooth_then_quant.export import export_smoothed
from smooth_then_quant.smooth import SmoothingConfig, plan_smoothing, smooth_


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_folded_smoothing_reloads_with_plain_transformers(family, tmp_path):
    model = tiny_model(family, init=0.05)
    structured_embeddings_(model, const_channel=3)
    plant_gamma_(model, 0, "attn", 3, 20.0)
    ids = windows(4, 24)
    ref = model(ids).logits.detach()
    an = analyze(model, ids, AnalysisConfig())
    plan = plan_smoothing(model, an, SmoothingConfig(), ids)
    assert plan.interventions and all(i.foldable for i in plan.interventions)
    smooth_(model, plan)
    export_smoothed(model, char_tokenizer(), plan, tmp_path / "out")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "smoothing_plan.json", "tokenizer.json"} <= files
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in files)  # safetensors only
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    out = plain(ids).logits.detach()
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4  # same function as the unsmoothed model
    assert not torch.equal(plain.get_submodule(_first_norm(family)).weight, tiny_model(family, init=0.05)
                           .get_submodule(_first_norm(family)).weight)  # and the weights did change


def _first_norm(family):
    return {"gpt2": "transformer.h.0.ln_1"}.get(family, "model.layers.0.input_layernorm")


def test_export_refuses_an_existing_folder_and_leaves_nothing_partial(tmp_path):
    model = tiny_model("llama")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    from smooth_then_quant.smooth import SmoothingPlan

    with pytest.raises(SmoothQuantError, match="not empty"):
        export_smoothed(model, None, SmoothingPlan("llama"), tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "x" and len(list(tmp_path.iterdir())) == 1


def test_exported_folder_gets_the_usual_directory_mode(tmp_path):
    """Regression: the temporary folder came from mkdtemp (0700) and kept that mode after the
    rename, so an export on a shared machine was unreadable by the user's group."""
    import os

    from smooth_then_quant.smooth import SmoothingPlan

    export_smoothed(tiny_model("llama"), None, SmoothingPlan("llama"), tmp_path / "out")
    (tmp_path / "plain").mkdir()
    assert os.stat(tmp_path / "out").st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777
