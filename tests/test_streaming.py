"""The layer-streamed engine: a streamed run (one decoder layer resident, weights read from the checkpoint's
shards, GPTQ'd layers kept in the scratch folder) gives the same report as the model held whole: the same
plan, the same perplexities, bit-identical exports. And its faults: an offload folder that cannot be written,
a signal in the middle of a layer."""
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from planting import FAMILIES, save_tiny
from smooth_then_quant.cli import main

SMALL = ["calibration.samples=6", "calibration.seq_len=48", "calibration.batch_size=4", "evaluation.seq_len=48",
         "evaluation.max_windows=3", "evaluation.batch_size=2", "evaluation.evidence_samples=4",
         "smoothing.migrate.search_samples=2", "smoothing.migrate.target.group_size=32", "analysis.plots=false",
         "quantization.enabled=true", "quantization.schemes={W4A16: {weights: {bits: 4, group_size: 32}}, "
         "W4A8-static: {weights: {bits: 4, group_size: 32}, activations: {granularity: per_tensor}}}",
         "export.quantized={scheme: W4A8-static, state: paper}"]


def _run(folder, out, extra):
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(f"model: {folder}\nsmoothing: {{enabled: true}}\noutput_dir: {out}\n")
    assert main([str(recipe), "-q"] + [a for kv in SMALL + extra for a in ("--set", kv)]) == 0
    return json.loads((out / "report.json").read_text())


def _tensors(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_streamed_run_gives_the_report_and_exports_of_the_whole_model(tmp_path, family):
    save_tiny(tmp_path / "m", family, init=0.05)
    whole = _run(tmp_path / "m", tmp_path / "whole", ["load.stream=false"])
    streamed = _run(tmp_path / "m", tmp_path / "streamed", ["load.stream=true", "export.max_shard_size=20KB"])
    assert streamed["model"]["weights"].startswith("streamed") and "weights" not in whole["model"]
    assert streamed["smoothing"]["plan"] == whole["smoothing"]["plan"] and whole["smoothing"]["plan"]["interventions"]
    assert len(whole["quantization"]["rows"]) == 9
    for a, b in zip(whole["quantization"]["rows"], streamed["quantization"]["rows"]):
        assert (a["scheme"], a["state"]) == (b["scheme"], b["state"])
        assert b["ppl"]["offline"] == pytest.approx(a["ppl"]["offline"], rel=1e-6), (a["scheme"], a["state"])
    for a, b in zip(whole["smoothing"]["states"], streamed["smoothing"]["states"]):
        assert b["ppl"]["offline"] == pytest.approx(a["ppl"]["offline"], rel=1e-6)
        assert a["massive_total"] == b["massive_total"]
    for sub in ("model", "quantized"):
        ta, tb = _tensors(tmp_path / "whole" / sub), _tensors(tmp_path / "streamed" / sub)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), sub
        assert (tmp_path / "streamed" / sub / "model.safetensors.index.json").is_file()  # 20KB shards
        assert len(list((tmp_path / "streamed" / sub).glob("model-*-of-*.safetensors"))) > 2
    assert not [p for p in (tmp_path / "streamed").rglob("*") if "smooth-then-quant-" in p.name]  # scratch removed


def _offload_recipe(tmp_path, offload, capsys):
    save_tiny(tmp_path / "m", "llama")
    capsys.readouterr()  # transformers' "Writing model shards" bar (shown when no earlier test turned bars off)
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "mine.txt").write_text("the user's")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tmp_path / 'm'}\nresources: {{offload_dir: {offload}}}\noutput_dir: {tmp_path / 'out'}\n"
                      "calibration: {samples: 2, seq_len: 32}\nanalysis: {plots: false}\nevaluation: {seq_len: 32, "
                      "max_windows: 2}\nquantization: {enabled: true, compare: [baseline], schemes: {W4A16: {weights: "
                      "{group_size: 32}}}}\nexport: {model: false}\noverwrite: true\n")
    return recipe


def _one_line_error(capsys, text):
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err and err.count("\n") == 1, err


def test_an_offload_folder_that_cannot_be_written_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    import smooth_then_quant.io as io

    recipe = _offload_recipe(tmp_path, tmp_path / "nope", capsys)
    assert main([str(recipe), "-q", "--dry-run"]) == 2  # refused at validation
    _one_line_error(capsys, "resources.offload_dir")
    assert main([str(recipe), "-q"]) == 2
    _one_line_error(capsys, "not an existing folder")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
    (tmp_path / "ro").mkdir()  # a read-only file system (we may run as root, which chmod does not stop)
    real = tempfile.mkdtemp

    def read_only(*a, **k):
        if k.get("prefix") == "smooth-then-quant-":
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, **k)
    monkeypatch.setattr(io.tempfile, "mkdtemp", read_only)
    recipe = _offload_recipe(tmp_path, tmp_path / "ro", capsys)
    assert main([str(recipe), "-q"]) == 2
    _one_line_error(capsys, f"cannot write to the offload folder {tmp_path / 'ro'} (Read-only file system)")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"] and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("how", ["safetensors", "oserror"])
def test_a_full_offload_disk_mid_run_is_one_clear_error_and_the_output_is_untouched(tmp_path, capsys, monkeypatch,
                                                                                    how):
    """Regression (bench/streaming.py --only full, Llama-3.2-3B-shaped): a full disk under GPTQ's kept layers printed a
    traceback, because safetensors' rust writer raises SafetensorError, not OSError; the test had raised OSError."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, path, *a, **k):
        open(path, "wb").write(b"partial")
        if how == "safetensors":  # what safetensors 0.x raises on ENOSPC, word for word
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, "No space left on device")
    (tmp_path / "offload").mkdir()
    recipe = _offload_recipe(tmp_path, tmp_path / "offload", capsys)
    monkeypatch.setattr(safetensors.torch, "save_file", full)  # after the tiny model is saved
    assert main([str(recipe), "-q"]) == 2
    _one_line_error(capsys, f"cannot write layer 0 to the offload folder {tmp_path / 'offload'} (No space left")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"] and not list(tmp_path.glob(".out*"))
    assert list((tmp_path / "offload").iterdir()) == []


def test_a_scratch_disk_too_small_for_a_quantized_state_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """The Llama-3.2-3B-shaped benchmark once ran out of scratch disk after an hour of work: the room for one
    quantized state's layers (and the outputs, on the same disk) is checked right after loading."""
    import safetensors.torch

    import smooth_then_quant.stages as stages

    (tmp_path / "offload").mkdir()
    recipe = _offload_recipe(tmp_path, tmp_path / "offload", capsys)
    asked = []

    def huge(model, bits):
        asked.append((model.model.layers[0].mlp.down_proj.weight.device.type, bits))
        return 2**60

    def no_work(*a, **k):
        raise AssertionError("a layer was kept: work had started")
    monkeypatch.setattr(stages, "kept_bytes", huge)
    monkeypatch.setattr(safetensors.torch, "save_file", no_work)
    assert main([str(recipe), "-q"]) == 2
    _one_line_error(capsys, f"not enough free space for the run's scratch folder {tmp_path / 'offload'}: a quantized "
                    "state's layers and the outputs need about")
    assert asked == [("meta", 4)]  # the streamed skeleton, the scheme's bits
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"] and not list(tmp_path.glob(".out*"))
    assert list((tmp_path / "offload").iterdir()) == []


DRIVER = textwrap.dedent("""
    import pathlib, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI starts jobs with it ignored)
    from smooth_then_quant.load.stream import CheckpointSource
    from smooth_then_quant.cli import main
    real = CheckpointSource.offload_
    def slow(self, model, li, layer, keep):  # GPTQ has quantized a layer and is keeping it
        real(self, model, li, layer, keep)
        if keep:
            pathlib.Path(sys.argv[2]).write_text("in a layer")
            time.sleep(120)
    CheckpointSource.offload_ = slow
    sys.exit(main([sys.argv[1], "-q"]))
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_middle_of_a_layer_leaves_no_output_and_no_offload_folder(tmp_path, sig):
    save_tiny(tmp_path / "m", "llama")
    (tmp_path / "offload").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tmp_path / 'm'}\nresources: {{offload_dir: {tmp_path / 'offload'}}}\n"
                      "calibration: {samples: 2, seq_len: 32}\nanalysis: {plots: false}\n"
                      "quantization: {enabled: true, compare: [baseline], schemes: {W4A16: {weights: {group_size: 32}}}}\n"
                      "evaluation: {seq_len: 32, max_windows: 2}\nexport: {model: false}\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    marker = tmp_path / "marker"
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(recipe), str(marker)], stdout=subprocess.DEVNULL,
                                stderr=err)
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
        assert time.time() - t0 < 300, "the run never reached GPTQ"
        time.sleep(0.2)
    assert list((tmp_path / "offload").rglob("layer*.safetensors"))  # a kept layer is there now
    proc.send_signal(sig)
    assert proc.wait(60) == 130
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()
    assert list((tmp_path / "offload").iterdir()) == []  # the run's scratch folder is gone, the user's folder stays
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_hidden_states_beyond_the_memory_budget_spill_to_disk_with_the_same_numbers(tmp_path):
    from planting import windows
    from smooth_then_quant.arch import walk
    from smooth_then_quant.detect import analyze
    from smooth_then_quant.evaluate import window_nll
    from smooth_then_quant.load import load_model
    from smooth_then_quant.quantize import GPTQWeights, gptq_

    save_tiny(tmp_path / "m", "qwen2", init=0.05)
    ids = windows(6, 32, trigger_at=0)
    roomy = load_model(str(tmp_path / "m"), stream=True, offload_dir=str(tmp_path))
    tight = load_model(str(tmp_path / "m"), stream=True, offload_dir=str(tmp_path), max_memory=1)  # every batch spills
    hidden = walk(tight.model, ids, 2, show=False)
    assert hidden.spilled >= 3 and hidden.resident == 0
    assert len(list(tight.scratch.path.glob("hidden-*"))) == 3
    del hidden
    assert not list(tight.scratch.path.glob("hidden-*"))  # spill files go with their walk
    assert analyze(roomy.model, ids).to_dict() == analyze(tight.model, ids).to_dict()
    assert torch.equal(window_nll(roomy.model, ids, 2, False), window_nll(tight.model, ids, 2, False))
    for m in (roomy.model, tight.model):
        gptq_(m, ids, GPTQWeights(bits=4, group_size=32), batch_size=2)
    assert torch.equal(window_nll(roomy.model, ids, 2, False), window_nll(tight.model, ids, 2, False))


@pytest.mark.slow
def test_smollm2_streamed_from_its_gguf_gives_the_report_and_exports_of_the_whole_model(tmp_path):
    """The embedded default (GGUF, dequantized tensor by tensor into the scratch folder), streamed, against the
    model held whole: same plan, perplexities within 1e-6, bit-identical exports (bench/streaming.py runs the
    full quickstart this way)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: default\nsmoothing: {enabled: true, migrate: {search_samples: 2}}\n"
                      "calibration: {samples: 4, seq_len: 128}\nanalysis: {plots: false}\n"
                      "evaluation: {seq_len: 128, max_windows: 4, per_intervention: false, evidence_samples: 2}\n"
                      "quantization: {enabled: true, compare: [baseline, paper, smoothed], schemes: {W4A8-static: {weights: "
                      "{bits: 4, group_size: 64}, activations: {granularity: per_tensor}}}}\n"
                      "export: {model: true, quantized: {scheme: W4A8-static, state: smoothed, format: compressed-tensors}}\n"
                      "output_dir: unused\n")
    reports = {}
    for stream in ("false", "true"):
        assert main([str(recipe), "-q", "--set", f"load.stream={stream}", "--set",
                     f"output_dir={tmp_path / stream}"]) == 0
        reports[stream] = json.loads((tmp_path / stream / "report.json").read_text())
    whole, streamed = reports["false"], reports["true"]
    assert streamed["model"]["weights"].startswith("streamed") and "weights" not in whole["model"]
    assert streamed["smoothing"]["plan"] == whole["smoothing"]["plan"]
    assert streamed["analysis"] == whole["analysis"]
    for a, b in zip(whole["quantization"]["rows"], streamed["quantization"]["rows"]):
        assert b["ppl"]["offline"] == pytest.approx(a["ppl"]["offline"], rel=1e-6), (a["scheme"], a["state"])
    for sub in ("model", "quantized"):
        ta, tb = _tensors(tmp_path / "false" / sub), _tensors(tmp_path / "true" / sub)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), sub
