"""recipes/quickstart.yaml end to end on the embedded SmolLM2 (about 7 minutes on 2 CPU cores):
the table, both exports with model cards, and the quantized checkpoint reloading to the reported
perplexity, through our loader exactly and through transformers + GPTQModel's kernel closely."""
import json
import os
from pathlib import Path

import pytest

from smooth_then_quant.cli import main
from smooth_then_quant.evaluate import evaluation_windows, perplexity
from smooth_then_quant.load import load_model

pytestmark = pytest.mark.slow
RECIPE = Path(__file__).parents[1] / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "run"
    assert main([str(RECIPE), "-q", "--set", f"output_dir={out}"]) == 0
    return out, json.loads((out / "report.json").read_text())


def _row(report, scheme, state):
    return next(r for r in report["quantization"]["rows"] if (r["scheme"], r["state"]) == (scheme, state))


def test_quickstart_table_and_exports(quickstart):
    out, report = quickstart
    rows = {(r["scheme"], r["state"]) for r in report["quantization"]["rows"]}
    assert rows == {(s, st) for s in ("FP", "W4A16", "W4A8-static") for st in ("baseline", "paper", "smoothed")}
    # what the quickstart demonstrates: the exact smoothing keeps the float model and helps W4A8-static
    assert _row(report, "FP", "smoothed")["ppl"]["offline"] == pytest.approx(
        _row(report, "FP", "baseline")["ppl"]["offline"], rel=1e-4)
    assert _row(report, "W4A8-static", "smoothed")["ppl"]["offline"] < _row(report, "W4A8-static", "baseline")["ppl"]["offline"]
    for folder in ("model", "quantized"):
        card = (out / folder / "README.md").read_text()
        assert "## Perplexity" in card and "## Recipe" in card
    assert {"top_activations.png", "quantization.png", "smoothing_effect.png"} <= {p.name for p in out.iterdir()}


def test_quantized_checkpoint_reproduces_the_reported_perplexity(quickstart, tmp_path, monkeypatch):
    out, report = quickstart
    reported = _row(report, "W4A16", "smoothed")["ppl"]["offline"]
    ours = load_model(str(out / "quantized"))
    ids, _ = evaluation_windows(ours.tokenizer, "offline", 512, report["recipe"]["evaluation"]["max_windows"])
    assert perplexity(ours.model, ids, 1, False) == pytest.approx(reported, rel=1e-6)
    # the same files through transformers (GPTQModel's torch kernel; its own float16 arithmetic)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from transformers import AutoModelForCausalLM, GPTQConfig

    hf = AutoModelForCausalLM.from_pretrained(out / "quantized", quantization_config=GPTQConfig(
        bits=4, backend="torch")).eval()
    assert type(hf.model.layers[0].mlp.down_proj).__name__ == "TorchLinear"  # really the packed integers
    few = ids[:4]
    assert perplexity(hf, few, 1, False) == pytest.approx(perplexity(ours.model, few, 1, False), rel=0.01)
