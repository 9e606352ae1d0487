"""lm-eval accuracy beside perplexity: the shipped offline task, lm-eval's HFLM on our model objects (quantizers
included), the table, the card."""
from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard

from planting import char_tokenizer, save_tiny, tiny_model, windows
from smooth_then_quant import quantize_
from smooth_then_quant.cli import main
from smooth_then_quant.evaluate.lmeval import accuracies, build_offline_cloze

pytest.importorskip("lm_eval")


def test_offline_cloze_is_deterministic_and_well_formed(tmp_path):
    a = build_offline_cloze(tmp_path / "a.jsonl")
    b = build_offline_cloze(tmp_path / "b.jsonl")
    assert a.read_bytes() == b.read_bytes()
    rows = [json.loads(x) for x in a.read_text().splitlines()]
    assert len(rows) == 400
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and 0 <= r["label"] < 4
        n = {len(c.split()) for c in r["choices"]}
        assert len(n) == 1  # every ending has as many words: length gives nothing away
    assert {r["label"] for r in rows} == {0, 1, 2, 3}


def _manual_acc(model, tok, rows) -> float:
    """lm-eval's multiple_choice acc, by hand: argmax over choices of the summed log-probability of the
    continuation (" " + choice) given the context, tokenized as lm-eval does (whole minus context)."""
    hits = 0
    for r in rows:
        scores = []
        ctx = tok(r["context"], add_special_tokens=False).input_ids
        for c in r["choices"]:
            whole = tok(r["context"] + " " + c, add_special_tokens=False).input_ids
            cont = whole[len(ctx):]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            scores.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
        hits += int(max(range(4), key=lambda i: scores[i]) == r["label"])
    return hits / len(rows)


def test_lm_eval_scores_our_model_object_with_its_quantizers(tmp_path):
    model = tiny_model("llama", init=0.05).eval()
    tok = char_tokenizer()
    tok.eos_token = "<unk>"  # lm-eval ends requests with EOS; the tiny vocabulary's id 0 serves
    quantize_(model, "W4A8-static", windows(4, 32))  # A8 quantizers on every projection input
    got = accuracies(model, tok, ["offline_cloze"], tmp_path, limit=24, batch_size=4)
    rows = [json.loads(x) for x in (tmp_path / "offline_cloze.jsonl").read_text().splitlines()[:24]]
    assert got["offline_cloze"] == pytest.approx(_manual_acc(model, tok, rows), abs=1e-9)


def test_recipe_tasks_add_accuracy_to_table_report_and_card(tmp_path):
    save_tiny(tmp_path / "tiny")
    tok = char_tokenizer()
    tok.eos_token = "<unk>"
    tok.save_pretrained(tmp_path / "tiny")
    r = tmp_path / "r.yaml"
    r.write_text(f"model: {tmp_path / 'tiny'}\noutput_dir: {tmp_path / 'out'}\n"
                 "calibration: {samples: 4, seq_len: 32}\nanalysis: {plots: false}\n"
                 "smoothing: {enabled: true, migrate: {norm: smoothquant, down: true, alpha: 0.5}}\n"
                 "quantization: {enabled: true, compare: [baseline, smoothed], schemes: "
                 "{W4A16: {weights: {group_size: 32}}}}\n"
                 "evaluation: {seq_len: 32, max_windows: 2, per_intervention: false, tasks: [offline_cloze], "
                 "task_limit: 16}\n"
                 "export: {model: false, quantized: {scheme: W4A16, state: smoothed}}\n")
    assert main([str(r), "-q"]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    rows = report["quantization"]["rows"]
    assert report["quantization"]["tasks"] == ["offline_cloze"]
    assert all(0.0 <= x["accuracy"]["offline_cloze"] <= 1.0 for x in rows) and len(rows) == 4
    assert "offline_cloze acc" in (out / "report.md").read_text()
    meta = ModelCard.load(out / "quantized" / "README.md").data
    accs = [e for e in meta.eval_results if e.metric_type == "accuracy"]
    cell = next(x for x in rows if (x["scheme"], x["state"]) == ("W4A16", "smoothed"))
    assert accs and accs[0].metric_value == pytest.approx(cell["accuracy"]["offline_cloze"], abs=1e-4)
    assert not (out / ".lm-eval").exists()


def test_unknown_task_is_refused_by_the_dry_run(tmp_path, capsys):
    save_tiny(tmp_path / "tiny")
    r = tmp_path / "r.yaml"
    r.write_text(f"model: {tmp_path / 'tiny'}\noutput_dir: {tmp_path / 'out'}\nquantization: {{enabled: true}}\n"
                 "evaluation: {tasks: [arc_eazy]}\n")
    assert main([str(r), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "arc_eazy is not an lm-eval task" in err and err.count("\n") == 1


def test_a_tokenizer_without_eos_is_one_line(tmp_path):
    from smooth_then_quant.errors import SmoothQuantError

    with pytest.raises(SmoothQuantError, match="end-of-text token"):
        accuracies(tiny_model("llama"), char_tokenizer(), ["offline_cloze"], tmp_path, limit=2)
