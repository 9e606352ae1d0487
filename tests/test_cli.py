import subprocess
import sys

import pytest

from smooth_then_quant.cli import main


@pytest.mark.parametrize("text,overrides,needle", [
    ("output_dir: o\nbogus: 1\n", [], "unknown key 'bogus'"),
    ("output_dir: o\ncalibration: {samples: zero}\n", [], "calibration.samples"),
    ("output_dir: o\nmodel: /nonexistent/model.gguf\n", [], "model file not found"),
    ("output_dir: o\nmodel: ./no/such/folder\n", [], "model not found"),
    ("output_dir: o\n", ["calibration.seq_len=1"], "calibration.seq_len"),
    ("output_dir: o\ncalibration: {data: /nope/cal.txt}\n", [], "data file not found"),  # before any model loads
    ("output_dir: o\nevaluation: {datasets: [offline, wikitext3]}\n", [], "unknown data source 'wikitext3'"),
    # found by the property-based test: a key holding a newline, and YAML's multi-line messages
    ('output_dir: o\n"\\n_x": 1\n', [], "unknown key '\\n_x'"),
    ("output_dir: o\n  bad: [\n", [], "is not valid YAML"),
    ("output_dir: o\nexport: {quantized: {scheme: W9}}\nquantization: {enabled: true}\n", [],
     "export.quantized.scheme 'W9' is not one of quantization.schemes"),
    ("output_dir: o\nexport: {quantized: {scheme: W4A16, format: awq}}\nquantization: {enabled: true}\n", [],
     "export.quantized.format"),
    ("output_dir: o\nexport: {quantized: {scheme: W4A16, format: compressed-tensors, state: baseline}}\n"
     "quantization: {enabled: true, schemes: {W4A16: {weights: {act_order: desc}}}}\n", [],
     "compressed-tensors cannot hold scheme 'W4A16' with act_order desc"),
    # refused before any work (the run used to refuse these after all of it): the model's config is read
    ("output_dir: o\nexport: {quantized: {scheme: W4, format: compressed-tensors, state: baseline}}\n"
     "quantization: {enabled: true, schemes: {W4: {weights: {group_size: 100}}}}\n", [],
     "group_size 100: it does not divide this model's input width 576"),
    ("output_dir: o\nstage: analyze\nsmoothing: {enabled: true}\nexport: {push_to_hub: me/x}\n", [],
     "nothing to push"),
])
def test_user_errors_exit_2_with_one_paragraph(tmp_path, capsys, text, overrides, needle):
    p = tmp_path / "r.yaml"
    p.write_text(text.replace("output_dir: o", f"output_dir: {tmp_path / 'out'}"))
    args = [str(p)] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_existing_output_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    p = tmp_path / "r.yaml"
    p.write_text(f"output_dir: {out}\n")
    assert main([str(p)]) == 2
    assert "overwrite: true" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"


def test_python_dash_m_works_like_the_console_script(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("output_dir: o\nnope: 1\n")
    proc = subprocess.run([sys.executable, "-m", "smooth_then_quant", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown key 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_quiet_run_draws_no_progress_bar(tmp_path):
    from planting import save_tiny

    save_tiny(tmp_path / "m", "llama")
    p = tmp_path / "r.yaml"
    p.write_text(f"model: {tmp_path / 'm'}\ncalibration: {{samples: 2, seq_len: 32}}\nanalysis: {{plots: false}}\n"
                 f"output_dir: {tmp_path / 'out'}\n")
    proc = subprocess.run([sys.executable, "-m", "smooth_then_quant", str(p), "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "it/s" not in proc.stderr and "%|" not in proc.stderr, proc.stderr[-500:]
    assert (tmp_path / "out" / "report.json").is_file()


def test_dry_run_prints_recipe_and_stages_without_loading(tmp_path, capsys, monkeypatch):
    import transformers

    import smooth_then_quant.stages as stages
    monkeypatch.setattr(stages, "load_model", lambda *a, **k: pytest.fail("--dry-run loaded a model"))
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoConfig):  # whatever binding a loader uses
        monkeypatch.setattr(auto, "from_pretrained", lambda *a, **k: pytest.fail("--dry-run read a checkpoint"))
    p = tmp_path / "r.yaml"
    p.write_text(f"output_dir: {tmp_path / 'out'}\nsmoothing: {{enabled: true}}\nquantization: {{enabled: true}}\n")
    assert main([str(p), "--dry-run", "--set", "calibration.samples=8"]) == 0
    out = capsys.readouterr().out
    assert "samples: 8" in out and "# stages" in out
    assert "quantize W4A8-static: gptq int4 g128 + A8 per_tensor (builtin) on baseline, paper, smoothed" in out
    assert "quantize W4A8: gptq int4 g128 + A8 per_token (builtin) on baseline, paper, smoothed" in out
    assert "remove TMAs at down_input -> mean (lossy)" in out and "migrate at y6" in out
    assert not (tmp_path / "out").exists()


def test_many_quiet_runs_in_one_process_do_not_nest_the_progress_bar_patch(tmp_path):
    """Regression (found by the fuzz test in CI): every `-q` main() wrapped tqdm.__init__ once more, so after
    ~1,000 in-process runs any progress bar raised RecursionError."""
    import tqdm
    p = tmp_path / "r.yaml"
    p.write_text(f"output_dir: {tmp_path / 'out'}\nstage: analyze\n")
    for _ in range(3):
        assert main([str(p), "--dry-run", "-q"]) == 0
    init = tqdm.tqdm.__dict__["__init__"]
    assert not isinstance(getattr(init, "func", None), type(init))  # one layer of partialmethod at most
    for _ in tqdm.tqdm(range(2)):
        pass
