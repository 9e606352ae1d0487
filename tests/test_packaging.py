"""Packaging: the extras, what a core install runs without them, the presets shipped as package data,
--version and --list-presets, the wheel's contents."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import smooth_then_quant
from smooth_then_quant.cli import main
from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.extras import EXTRAS, require
from smooth_then_quant.recipe import load_recipe, presets, resolve_recipe

from planting import save_tiny

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = ["matplotlib", "peft", "gguf", "datasets", "gptqmodel", "optimum", "lm_eval"]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def test_extras_table_matches_setup_cfg():
    extras = _setup_cfg()["options.extras_require"]
    for extra, modules in EXTRAS.items():
        declared = {line.split(">")[0].split("=")[0].strip().replace("-", "_").lower()
                    for line in extras[extra].strip().splitlines()}
        assert declared == {m.lower() for m in modules}, extra
    everything = extras["all"].strip()
    assert all(e in everything for e in EXTRAS)


def test_core_requirements_hold_no_optional_package():
    core = _setup_cfg()["options"]["install_requires"].lower()
    for name in ("peft", "gguf", "matplotlib", "datasets", "gptqmodel", "optimum", "lm-eval"):
        assert name not in core


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(SmoothQuantError, match=r"pip install 'smooth-then-quant\[repair\]'"):
        require("peft", "repair", "the LoRA repair")


BLOCK = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Block())
    from smooth_then_quant.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _core_cli(args: list[str], cwd: Path, blocked=OPTIONAL) -> subprocess.CompletedProcess:
    """smooth-quant in a process where the optional packages cannot be imported (a core install)."""
    return subprocess.run([sys.executable, "-c", BLOCK.format(blocked=set(blocked)), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_core_install_runs_a_recipe_without_optional_packages(tmp_path):
    """Analysis, exact smoothing, GPTQ and the table on a local safetensors model, no optional package."""
    save_tiny(tmp_path / "tiny")
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""
        model: {tmp_path / 'tiny'}
        calibration: {{samples: 4, seq_len: 32}}
        smoothing: {{enabled: true, migrate: {{norm: smoothquant, down: true, alpha: 0.5}}}}
        quantization: {{enabled: true, compare: [baseline, smoothed],
                        schemes: {{W4A16: {{weights: {{bits: 4, group_size: 32}}}}}}}}
        evaluation: {{seq_len: 32, max_windows: 2, per_intervention: false}}
        output_dir: {tmp_path / 'out'}
    """))
    p = _core_cli([str(tmp_path / "r.yaml"), "-q"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert (tmp_path / "out" / "report.md").is_file()
    assert not list((tmp_path / "out").glob("*.png"))  # plots: when matplotlib is there; it is not


@pytest.mark.parametrize("override, extra", [
    ("analysis.plots=true", "plots"),
    ("smoothing.repair.enabled=true", "repair"),
    ("quantization.gptq_backend=gptqmodel", "gptq"),
    ("calibration.data=wikitext2", "data"),
])
def test_missing_extra_is_refused_before_any_work(tmp_path, override, extra):
    save_tiny(tmp_path / "tiny")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tmp_path / 'tiny'}\nsmoothing: {{enabled: true}}\nquantization: {{enabled: true}}\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    p = _core_cli([str(recipe), "--set", override, "--dry-run"], tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert f"pip install 'smooth-then-quant[{extra}]'" in p.stderr
    assert not (tmp_path / "out").exists()


def test_gguf_model_needs_the_gguf_extra(tmp_path):
    p = _core_cli(["analyze", "--dry-run"], tmp_path)  # the default model is a GGUF file
    assert p.returncode == 2
    assert "smooth-then-quant[gguf]" in p.stderr and "Traceback" not in p.stderr


# ---- presets -------------------------------------------------------------------------------------
def test_presets_are_the_package_recipes():
    names = set(presets())
    assert {"quickstart", "analyze", "w4a16", "w4a8", "w8a8"} <= names
    assert all(p.parent == Path(smooth_then_quant.__file__).parent / "recipes" for p in presets().values())
    for name in names - {"paper-llama3.2-3b"}:  # that one asks for CUDA
        load_recipe(name)  # every preset validates here


def test_preset_runs_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["quickstart", "--dry-run"]) == 0
    assert "quantize W4A16" in capsys.readouterr().out
    assert resolve_recipe("quickstart.yaml") == presets()["quickstart"]


def test_a_file_wins_over_a_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text("output_dir: mine\n")
    assert load_recipe("quickstart").output_dir == "mine"


def test_unknown_recipe_lists_the_presets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes/quickstart.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "the preset is `quickstart`" in err and err.count("\n") == 1
    assert main(["nosuch"]) == 2
    assert "smooth-quant --list-presets" in capsys.readouterr().err


def test_list_presets_and_version(capsys):
    assert main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in presets())
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and smooth_then_quant.__version__ in capsys.readouterr().out


def test_wheel_carries_presets_and_license(tmp_path):
    src = tmp_path / "src"  # a copy of the tracked files: setuptools builds in the source tree (build/, egg-info)
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / f).is_symlink():
            (src / f).symlink_to(os.readlink(ROOT / f))
        elif (ROOT / f).is_file():
            shutil.copy2(ROOT / f, src / f)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    wheel = next(tmp_path.glob("smooth_then_quant-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"smooth_then_quant/recipes/{n}.yaml" for n in presets()} <= set(names)
    assert "smooth_then_quant/evaluate/tasks/offline_cloze.yaml" in names  # the offline lm-eval task
    assert any(n.endswith("licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    for extra in (*EXTRAS, "all"):
        assert f"Provides-Extra: {extra}" in meta
