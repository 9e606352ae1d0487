"""Model cards: huggingface_hub metadata on every export (API and recipe), and no absolute local path in any
exported file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from planting import save_tiny, windows
from smooth_then_quant import Scheme, export_quantized, export_smoothed, load_model, quantize_
from smooth_then_quant.cli import main
from smooth_then_quant.export.card import card_data, portable
from smooth_then_quant.smooth import SmoothingPlan


def _texts(folder: Path) -> dict[str, str]:
    return {f.name: f.read_text(encoding="utf-8", errors="replace") for f in folder.iterdir()
            if f.is_file() and f.suffix in (".json", ".md", ".txt", ".jinja", "")}


def _no_local_paths(folder: Path, *roots: Path):
    for name, text in _texts(folder).items():
        for root in roots:
            assert str(root) not in text, f"{folder.name}/{name} holds the local path {root}"


def test_api_exports_get_a_card(tmp_path):
    save_tiny(tmp_path / "tiny")
    loaded = load_model(str(tmp_path / "tiny"))
    quantize_(loaded.model, Scheme("W4A8-static", {"bits": 4, "group_size": 32}), windows(4, 32))
    out = export_quantized(loaded.model, loaded.tokenizer, tmp_path / "q", format="compressed-tensors")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "smooth-then-quant" in card.data.tags and "compressed-tensors" in card.data.tags
    assert "W4A8-static" in card.text and "**Serving:** no vLLM kernel" in card.text
    assert card.data.license == "other" and card.data.license_name == "same-as-base-model"
    _no_local_paths(out, tmp_path)

    plain = load_model(str(tmp_path / "tiny"))
    smoothed = export_smoothed(plain.model, plain.tokenizer, SmoothingPlan([]), tmp_path / "s")
    card = ModelCard.load(smoothed / "README.md")
    assert "smoothed" in card.data.tags and "No smoothing was applied." in card.text
    assert card.data.base_model is None  # a local folder is no Hub base model
    _no_local_paths(smoothed, tmp_path)


def test_the_source_models_license_is_carried(tmp_path):
    save_tiny(tmp_path / "tiny")
    (tmp_path / "tiny" / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    loaded = load_model(str(tmp_path / "tiny"))
    quantize_(loaded.model, "W4A16", windows(2, 32))  # g128 on 64-wide projections: one short group
    out = export_quantized(loaded.model, loaded.tokenizer, tmp_path / "q")
    assert ModelCard.load(out / "README.md").data.license == "mit"


def test_default_model_card_metadata():
    data = card_data({"name": "default", "source": "gguf"}, quantized=True, tags=["gptq"], datasets=["offline", "c4"],
                     eval_results=[{"dataset": "c4", "metric": "perplexity", "value": 13.7}])
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    assert data.to_dict()["base_model_relation"] == "quantized"
    assert data.datasets == ["allenai/c4"]
    assert data.eval_results[0].metric_value == 13.7 and data.eval_results[0].dataset_type == "allenai/c4"


def test_portable_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    got = portable({"a": str(tmp_path / "data" / "x.txt"), "b": ["/somewhere/else/model", "relative/p"], "c": 3,
                    "d": "text with / slash"})
    assert got == {"a": "data/x.txt", "b": ["<local>/model", "relative/p"], "c": 3, "d": "text with / slash"}


@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_recipe_exports_hold_no_local_path_and_a_model_index(tmp_path, fmt):
    save_tiny(tmp_path / "tiny")
    data = tmp_path / "d.txt"
    data.write_text("the quick brown fox jumps over the lazy dog.\n" * 400)
    r = tmp_path / "r.yaml"
    r.write_text(f"model: {tmp_path / 'tiny'}\noutput_dir: {tmp_path / 'out'}\n"
                 f"calibration: {{data: {data}, samples: 4, seq_len: 32}}\nanalysis: {{plots: false}}\n"
                 "smoothing: {enabled: true, migrate: {norm: smoothquant, down: true, alpha: 0.5}}\n"
                 "quantization: {enabled: true, compare: [baseline, smoothed], schemes: {W4A16: {weights: {group_size: 32}}}}\n"
                 f"evaluation: {{datasets: [{data}], seq_len: 32, max_windows: 2, per_intervention: false}}\n"
                 f"export: {{model: true, license: apache-2.0, quantized: {{scheme: W4A16, state: smoothed, "
                 f"format: {fmt}}}}}\n")
    assert main([str(r), "-q"]) == 0
    out = tmp_path / "out"
    for folder in ("model", "quantized"):
        _no_local_paths(out / folder, tmp_path)
        card = ModelCard.load(out / folder / "README.md")
        assert card.data.license == "apache-2.0"
        assert card.data.eval_results and card.data.eval_results[0].metric_type == "perplexity"
    report = json.loads((out / "report.json").read_text())
    row = next(x for x in report["quantization"]["rows"] if (x["scheme"], x["state"]) == ("W4A16", "smoothed"))
    got = ModelCard.load(out / "quantized" / "README.md").data.eval_results[0].metric_value
    assert got == pytest.approx(row["ppl"][str(data)], rel=1e-3)
