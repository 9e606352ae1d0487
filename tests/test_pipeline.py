"""The recipe-driven pipeline end to end on a tiny saved model (char tokenizer, offline text)."""
import json

import pytest
from huggingface_hub import ModelCard

from planting import save_tiny
from smooth_then_quant.cli import main
from smooth_then_quant.evaluate import evaluation_windows, perplexity
from smooth_then_quant.evaluate.table import MIN_DEGRADATION
from smooth_then_quant.load import load_model
from smooth_then_quant.smooth import runtime_ops

SMALL = ["calibration.samples=8", "calibration.seq_len=64", "calibration.batch_size=4", "evaluation.seq_len=64",
         "evaluation.max_windows=3", "evaluation.batch_size=3", "evaluation.evidence_samples=4",
         "smoothing.migrate.search_samples=2", "smoothing.migrate.target.group_size=32"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    save_tiny(folder, "llama")
    return folder


def run(tmp_path, folder, extra):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {folder}\nsmoothing: {{enabled: true}}\noutput_dir: {tmp_path / 'out'}\n")
    args = [str(recipe), "-q"] + [a for kv in SMALL + extra for a in ("--set", kv)]
    assert main(args) == 0
    return tmp_path / "out", json.loads((tmp_path / "out" / "report.json").read_text())


def test_smoothing_run_reports_evidence_and_exports_a_reloadable_model(tmp_path, tiny_folder):
    out, report = run(tmp_path, tiny_folder, ["smoothing.remove_massive.enabled=true"])
    sm = report["smoothing"]
    kinds = [r["kind"] for r in sm["plan"]["summary"]]
    assert "remove_massive" in kinds and "migrate_norm" in kinds
    names = [s["name"] for s in sm["states"]]
    assert names[0] == "baseline" and names[-1] == "combined" and set(kinds) <= set(names)
    for s in sm["states"][1:]:
        assert set(s["ppl_change"]) == {"offline"} and "massive_total" in s["removed"]
        assert len(s["top3_abs_x1"]) == 4 and len(s["channel_outliers"]) == 4
    base, rm = sm["states"][0], names.index("remove_massive")
    assert sum(base["massive_residual"]) > 0 and sum(sm["states"][rm]["massive_residual"]) == 0
    migr = sm["states"][names.index("migrate_norm")]
    assert migr["ppl"]["offline"] == pytest.approx(base["ppl"]["offline"], rel=1e-4)  # exact
    assert (out / "smoothing_effect.png").stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "## Smoothing" in md and "**no (lossy)**" in md and "runtime hook" in md
    # the export comes back with its runtime hook and reproduces the reported perplexity
    loaded = load_model(str(out / "model"))
    assert len(runtime_ops(loaded.model)) == sum(1 for i in sm["plan"]["interventions"] if not i["foldable"])
    ids, _ = evaluation_windows(loaded.tokenizer, "offline", 64, 3)
    assert perplexity(loaded.model, ids, 3, False) == pytest.approx(sm["states"][-1]["ppl"]["offline"], rel=1e-5)
    exported = json.loads((out / "model" / "smoothing_plan.json").read_text())
    assert exported.pop("weights_sha256").keys() == {"model.safetensors"} and exported == sm["plan"]


def test_repair_run_shows_what_the_repair_wins_back(tmp_path, tiny_folder):
    _, report = run(tmp_path, tiny_folder, ["smoothing.flatten_gamma.enabled=true",
                                            "smoothing.flatten_gamma.replace_with=zero",
                                            "smoothing.repair.enabled=true", "smoothing.repair.steps=3",
                                            "smoothing.repair.layers=all", "smoothing.repair.seq_len=32",
                                            "smoothing.repair.heldout=2", "analysis.channel.beta=10"])
    sm = report["smoothing"]
    names = [s["name"] for s in sm["states"]]
    assert "combined without repair" in names and "repair" not in names
    rep = [i for i in sm["plan"]["interventions"] if i["kind"] == "repair"]
    assert len(rep) == 1 and rep[0]["result"]["steps"] == 3 and rep[0]["modules"]
    assert "repair_seconds" in report["timing"]


@pytest.fixture(scope="module")
def sensitive_folder(tmp_path_factory):
    """Larger random weights: predictions depend on them, so 4-bit quantization shows in perplexity."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama-sensitive"
    save_tiny(folder, "llama", init=0.05)
    return folder


def test_quantization_table_has_every_row(tmp_path, sensitive_folder):
    out, report = run(tmp_path, sensitive_folder, ["quantization.enabled=true"])
    q = report["quantization"]
    got = {(r["scheme"], r["state"]) for r in q["rows"]}
    assert got == {(s, st) for s in ("FP", "W4A16", "W8A8", "W4A8", "W4A8-static") for st in ("baseline", "paper", "smoothed")}
    fp = next(r for r in q["rows"] if r["scheme"] == "FP" and r["state"] == "baseline")["ppl"]["offline"]
    for r in q["rows"]:
        assert r["delta_ppl"]["offline"] == pytest.approx(r["ppl"]["offline"] - fp)
        if r["scheme"] != "FP" and r["state"] != "baseline":
            base = next(b for b in q["rows"] if b["scheme"] == r["scheme"] and b["state"] == "baseline")
            if base["delta_ppl"]["offline"] > MIN_DEGRADATION * fp:
                assert r["degradation_reduced"]["offline"] == pytest.approx(
                    1 - r["delta_ppl"]["offline"] / base["delta_ppl"]["offline"])
    smoothed_fp = next(r for r in q["rows"] if r["scheme"] == "FP" and r["state"] == "smoothed")
    assert smoothed_fp["ppl"]["offline"] == pytest.approx(fp, rel=1e-4)  # the recipe's smoothing is exact
    w4a16, w4a8 = ({r["state"]: r["ppl"]["offline"] for r in q["rows"] if r["scheme"] == s} for s in ("W4A16", "W4A8-static"))
    assert w4a16 != w4a8  # activation quantization is applied (and not served from the W4A16 cache entry)
    assert len(q["weights"]) == 6  # W4A16 and both W4A8 share one GPTQ run per state: 2 weight configs x 3 states
    md = (out / "report.md").read_text()
    assert "## Quantization" in md and "W8A8" in md and "per-tensor static" in md
    w4 = next(r for r in q["rows"] if r["scheme"] == "W4A8-static" and r["state"] == "baseline")
    assert w4["delta_ppl"]["offline"] > MIN_DEGRADATION * fp  # the model is sensitive enough to compare states
    assert (out / "quantization.png").stat().st_size > 10_000
    # the evidence table holds the paper's state too: its x6/x7 and weights beside the exact smoothing's
    states = {st["name"]: st for st in report["smoothing"]["states"]}
    paper = states["paper (quantization.paper)"]
    fp_paper = next(r for r in q["rows"] if r["scheme"] == "FP" and r["state"] == "paper")["ppl"]["offline"]
    assert paper["ppl"]["offline"] == pytest.approx(fp_paper, rel=1e-6)
    assert len(paper["sink_mass"]) == len(paper["weight_ratio"]) == 4 and "weight_outliers" in paper["removed"]
    assert states["combined"]["sink_mass"] == pytest.approx(states["baseline"]["sink_mass"], abs=1e-4)  # exact
    assert md.count("## Smoothing") == 1 and "| paper (quantization.paper) |" in md


@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_quantized_export_reloads_to_the_reported_perplexity(tmp_path, sensitive_folder, fmt):
    """The exported checkpoint (W4A8 on the paper's state: runtime TMA removal + A8 ranges ride
    along) reloads to exactly the perplexity the table reports; both exports carry a model card."""
    out, report = run(tmp_path, sensitive_folder, [
        "quantization.enabled=true", "quantization.schemes={W4A8-static: {weights: {bits: 4, group_size: 32}, "
        "activations: {granularity: per_tensor}}}", f"export.quantized={{scheme: W4A8-static, state: paper, format: {fmt}}}"])
    qc = json.loads((out / "quantized" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == fmt
    row = next(r for r in report["quantization"]["rows"] if (r["scheme"], r["state"]) == ("W4A8-static", "paper"))
    loaded = load_model(str(out / "quantized"))
    assert len(runtime_ops(loaded.model)) >= 1 and "activation_quant" in loaded.provenance
    ids, _ = evaluation_windows(loaded.tokenizer, "offline", 64, 3)
    assert perplexity(loaded.model, ids, 3, False) == pytest.approx(row["ppl"]["offline"], rel=1e-5)
    card = (out / "quantized" / "README.md").read_text()
    meta = ModelCard.load(out / "quantized" / "README.md").data
    assert meta.library_name == "transformers" and meta.pipeline_tag == "text-generation"
    assert {r.metric_type for r in meta.eval_results} == {"perplexity"}
    assert meta.eval_results[0].metric_value == pytest.approx(row["ppl"]["offline"], rel=1e-3)
    assert "| W4A8-static | paper's smoothing **← this checkpoint** |" in card and "**Serving:**" in card
    assert f"quant_method: {fmt}" in card
    assert "```yaml\nstage: full" in card and "per_tensor" in card  # the recipe, as run
    assert "| migrate_norm |" in (out / "model" / "README.md").read_text()
    assert json.loads((out / "quantized" / "report.json").read_text())["quantization"]["rows"] == \
        report["quantization"]["rows"]


@pytest.mark.parametrize("stage,present,absent", [
    ("analyze", [], ["smoothing", "quantization"]),
    ("smooth", ["smoothing"], ["quantization"]),
])
def test_stage_stops_the_pipeline_early(tmp_path, tiny_folder, stage, present, absent):
    out, report = run(tmp_path, tiny_folder, ["quantization.enabled=true", f"stage={stage}"])
    assert all(k in report for k in present) and not any(k in report for k in absent)
    assert (out / "model").is_dir() == (stage == "smooth")


def test_push_to_hub_uploads_the_complete_export_and_never_prints_the_token(tmp_path, tiny_folder, monkeypatch,
                                                                            capfd, caplog):
    import huggingface_hub

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETSECRETSECRET")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or
                        f"https://huggingface.co/{repo_id}")

    def upload(self, *, repo_id, folder_path, **kw):
        calls.append(("upload", repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_folder}\nsmoothing: {{enabled: true}}\noutput_dir: {tmp_path / 'out'}\n"
                      "export: {push_to_hub: me/tiny-smoothed}\n")
    assert main([str(recipe), "-v"] + [a for kv in SMALL for a in ("--set", kv)]) == 0
    assert calls[0] == ("create", "me/tiny-smoothed", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[1][0] == "upload" and {"README.md", "model.safetensors", "config.json", "smoothing_plan.json",
                                         "report.json"} <= set(calls[1][2])
    printed = capfd.readouterr()
    assert "https://huggingface.co/me/tiny-smoothed" in printed.out
    assert "SECRET" not in printed.out + printed.err + caplog.text


@pytest.mark.parametrize("stage", ["analyze", "smooth", "full"])
def test_dry_run_says_what_the_run_does(tmp_path, tiny_folder, capsys, stage):
    """--dry-run and the run walk one stage list: every effect the dry run announces happens, and nothing else."""
    from smooth_then_quant.pipeline import stages
    from smooth_then_quant.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_folder}\nsmoothing: {{enabled: true}}\noutput_dir: {tmp_path / 'out'}\n"
                      "quantization: {enabled: true, compare: [baseline, paper, smoothed], "
                      "schemes: {R: {weights: {method: rtn, bits: 4, group_size: 32}}}}\n"
                      "export: {model: true, quantized: {scheme: R, state: smoothed}}\n")
    args = [str(recipe), "--stage", stage] + [a for kv in SMALL for a in ("--set", kv)]
    assert main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr().out.split("# stages\n", 1)[1]
    verbs = [line.split()[0] for line in dry.splitlines() if not line.startswith("(")]
    assert main([*args, "-q"]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["stages"] == [s.name for s in stages(load_recipe(recipe, [f"stage={stage}", *SMALL]))]
    assert ("smooth" in verbs) == ("smoothing" in report) == (out / "smoothing_plan.json").is_file()
    assert ("quantize" in verbs) == ("quantization" in report)
    assert ("paper" in verbs) == ("paper" in report.get("quantization", {}).get("states", {}))
    export = next((line for line in dry.splitlines() if line.startswith("export")), "")
    assert ("model/" in export) == (out / "model").is_dir() and ("quantized/" in export) == (out / "quantized").is_dir()
    assert ("evaluate" in verbs) == ("smoothing" in report or "quantization" in report)
    assert verbs[:3] == ["load", "probe", "detect"] and verbs[-1] == "report"
    assert {"analyze": 0, "smooth": 1, "full": 3}[stage] == sum(v in verbs for v in ("smooth", "paper", "quantize"))


def test_an_analysis_run_streams_a_float_folder_and_reports_the_same_analysis(tmp_path, tiny_folder, monkeypatch):
    """stage analyze on a local float checkpoint: one decoder layer resident, the in-memory analysis's numbers."""
    from smooth_then_quant.detect import AnalysisConfig, analyze
    from smooth_then_quant.load import calibration_windows

    out, report = run(tmp_path, tiny_folder, ["stage=analyze"])
    assert report["model"]["weights"].startswith("streamed") and report["stages"] == ["load", "analyze", "report"]
    loaded = load_model(str(tiny_folder))
    ids, _ = calibration_windows(loaded.tokenizer, "offline", 8, 64, 0)
    whole = analyze(loaded.model, ids, AnalysisConfig(), batch_size=4).to_dict()
    assert json.loads(json.dumps(whole)) == report["analysis"]
    assert (out / "report.md").is_file() and (out / "top_activations.png").is_file()
    att = report["analysis"]["attention"]  # x6/x7, streamed like every other point
    assert len(att["per_layer"]) == report["analysis"]["num_layers"] and (out / "attention.png").is_file()
    md = (out / "report.md").read_text()
    assert "## Attention: scores (x6), softmax (x7), sinks" in md and "![attention.png](attention.png)" in md


def test_an_export_with_runtime_hooks_is_analysed_whole(tmp_path, tiny_folder):
    """A smoothed export whose plan re-attaches a runtime hook must be analysed with the hook: loaded whole."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = run(tmp_path / "a", tiny_folder, ["smoothing.remove_massive.enabled=true", "stage=smooth"])
    _, report = run(tmp_path / "b", first / "model", ["stage=analyze"])
    assert report["model"]["weights"].startswith("loaded whole: an export whose runtime interventions")
    assert report["model"]["runtime_interventions"] >= 1
