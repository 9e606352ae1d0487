"""Integration on the embedded default model: SmolLM2-135M-Instruct from its GGUF file."""
import json
from pathlib import Path

import pytest
import torch

from smooth_then_quant.cli import main
from smooth_then_quant.load import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model("default")


def test_gguf_loads_as_float_llama_and_saves_without_the_gguf_marker(smollm2, tmp_path):
    model = smollm2.model
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert len(smollm2.provenance["sha256"]) == 64
    model.save_pretrained(tmp_path / "saved")  # would fail or write a gguf marker otherwise
    cfg = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert list((tmp_path / "saved").glob("*.safetensors"))


def test_analysis_run_writes_a_valid_report(tmp_path):
    out = tmp_path / "analysis"
    rc = main([str(Path(__file__).parents[1] / "recipes" / "analyze.yaml"), "-q", "--set", f"output_dir={out}", "--set", "calibration.samples=4",
               "--set", "calibration.seq_len=128"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "default" and report["model"]["sha256"]
    assert report["data"]["name"] == "offline" and report["data"]["samples"] == 4 and report["data"]["seq_len"] == 128
    assert report["data"]["seed"] == 0 and report["data"]["sha256"]
    mas = report["massive_activations"]
    assert mas and {m["kind"] for m in mas} == {"TMA", "FMA"}
    for m in mas:
        assert set(m) >= {"layer", "point", "token", "channel", "value", "kind"}
        assert abs(m["value"]) > 100
    # SmolLM2's family that rides the residual stream through the middle layers starts in an MLP.
    carried = [f for f in report["analysis"]["massive_families"] if f["residual_channels"]]
    assert carried and all(f["origin_point"].startswith("y") for f in carried)
    for key in ("channel_outliers", "gamma_outliers", "otc"):
        assert key in report
    assert set(report["channel_outliers"]) >= {"x1", "x2", "y1", "y2"}
    for png in ("top_activations.png", "channel_means.png", "channel_outliers.png"):
        assert (out / png).stat().st_size > 10_000
    assert (out / "report.md").read_text().startswith("# Outlier analysis")
    assert not list(tmp_path.glob(".analysis.partial-*"))


def test_exact_migrations_keep_smollm2_logits(smollm2):
    from smooth_then_quant import AnalysisConfig, MigrateConfig, SmoothingConfig, analyze, calibration_windows
    from smooth_then_quant.smooth import clone_model, plan_smoothing, smooth_

    model = smollm2.model
    ids, _ = calibration_windows(smollm2.tokenizer, "offline", samples=4, seq_len=128)
    analysis = analyze(model, ids, AnalysisConfig())
    # the real model's y6 TMAs (layer 11, channels 1229/1487) are what the y6 migration must shrink
    assert any(a.layer == 11 and a.point == "y6" and a.kind == "TMA" for a in analysis.massive)
    plan = plan_smoothing(model, analysis, SmoothingConfig(migrate=MigrateConfig(alpha=0.5)), ids)
    twin = smooth_(clone_model(model), plan)
    with torch.inference_mode():
        ref, out = model(ids[:2]).logits, twin(ids[:2]).logits
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
    y6 = {}
    for name, m in (("before", model), ("after", twin)):
        h = m.model.layers[11].mlp.down_proj.register_forward_pre_hook(lambda _m, a, n=name: y6.__setitem__(n, a[0]))
        with torch.inference_mode():
            m(ids[:1])
        h.remove()
    # α = 0.5 takes the square root of the massive channels' range: ~3000 -> ~100
    assert y6["before"].abs().max() > 1000 and y6["after"].abs().max() < y6["before"].abs().max() / 10
