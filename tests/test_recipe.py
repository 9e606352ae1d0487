import re
from pathlib import Path

import pytest

from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.pipeline import stages
from smooth_then_quant.recipe import Recipe, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_dry_runs(path, capsys):
    import torch
    import yaml

    from smooth_then_quant.cli import main

    text = path.read_text()
    assert text.startswith("#") and (f"smooth-quant recipes/{path.name}" in text or f"smooth-quant {path.stem}" in text)  # documented
    device = yaml.safe_load(path.read_text()).get("load", {}).get("device", "cpu")
    here = []
    if device.startswith("cuda") and not torch.cuda.is_available():  # the GPU recipe on this CPU machine:
        assert main([str(path), "--dry-run"]) == 2                   # refused at validation, saying why
        assert "CUDA is not available" in capsys.readouterr().err
        here = ["load.device=cpu"]                                    # and valid once pointed at the CPU
    assert isinstance(load_recipe(path, here), Recipe)
    assert main([str(path), "--dry-run", *[a for kv in here for a in ("--set", kv)]]) == 0
    out = capsys.readouterr().out
    recipe = load_recipe(path, here)
    assert "# stages" in out and "report   " in out
    for stage in stages(recipe):  # every stage the run would walk is printed, in order
        for line in stage.describe(recipe):
            assert line in out.split("# stages", 1)[1], (stage.name, line)


def test_the_documented_recipe_set_ships():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "analyze.yaml", "w4a8.yaml", "w8a8.yaml", "w4a16.yaml",
            "paper-llama3.2-3b.yaml"} <= names
    paper = load_recipe(Path(RECIPES[0]).parent / "paper-llama3.2-3b.yaml", ["load.device=cpu"])
    assert paper.evaluation.datasets == ["wikitext2", "c4"] and paper.evaluation.seq_len == 2048


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_set_overrides_dotted_keys_with_yaml_types(tmp_path):
    r = load_recipe(write(tmp_path, "output_dir: out\n"), ["calibration.samples=8", "calibration.data=offline",
                                                             "load.trust_remote_code=true", "model=foo/bar"])
    assert r.calibration.samples == 8 and r.load.trust_remote_code is True and r.model == "foo/bar"
    assert load_recipe(write(tmp_path, "output_dir: out\n")).load.trust_remote_code is False  # safe default


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    with pytest.raises(SmoothQuantError) as e:
        load_recipe(write(tmp_path, "output_dir: o\ncalibration:\n  samplse: 3\n"))
    msg = str(e.value)
    assert "calibration.samplse" in msg and "did you mean 'calibration.samples'" in msg and "seq_len" in msg


def test_bad_value_and_missing_key(tmp_path):
    with pytest.raises(SmoothQuantError, match="calibration.seq_len"):
        load_recipe(write(tmp_path, "output_dir: o\ncalibration: {seq_len: -1}\n"))
    with pytest.raises(SmoothQuantError, match="missing required key 'output_dir'"):
        load_recipe(write(tmp_path, "model: default\n"))
    with pytest.raises(SmoothQuantError, match="load.dtype"):
        load_recipe(write(tmp_path, "output_dir: o\n"), ["load.dtype=int3"])


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(SmoothQuantError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(SmoothQuantError, match="not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(SmoothQuantError, match="mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SmoothQuantError, match="KEY=VALUE"):
        load_recipe(write(tmp_path, "output_dir: o\n"), ["calibration.samples"])
    with pytest.raises(SmoothQuantError, match="is a value, not a section"):
        load_recipe(write(tmp_path, "output_dir: o\nmodel: default\n"), ["model.name=x"])


def test_unquoted_off_means_act_order_off(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("output_dir: x\nquantization:\n  schemes:\n    W4A16:\n      weights: {act_order: off}\n")
    assert load_recipe(p).quantization.schemes["W4A16"].weights.act_order == "off"
    assert load_recipe(p, ["quantization.schemes.W4A16.weights.act_order=desc"]
                       ).quantization.schemes["W4A16"].weights.act_order == "desc"
    with pytest.raises(SmoothQuantError, match="act_order.*'off', 'desc' or 'group_aware'"):
        load_recipe(p, ["quantization.schemes.W4A16.weights.act_order=on"])



@pytest.mark.parametrize("device,why", [
    ("zzz", "not a device"), ("meta", "meta cannot run the model"),
    ("cuda:{n}", "CUDA"),  # one past the last GPU, or any CUDA device on a machine without one
])
def test_a_device_this_machine_lacks_is_refused_at_validation(tmp_path, device, why, capsys):
    import torch

    from smooth_then_quant.cli import main

    device = device.format(n=torch.cuda.device_count())
    with pytest.raises(SmoothQuantError, match=f"'load.device'.*{why}"):
        load_recipe(write(tmp_path, "output_dir: o\n"), [f"load.device={device}"])
    assert main([str(write(tmp_path, "output_dir: o\n")), "--dry-run", "--set", f"load.device={device}"]) == 2
    assert why.split()[0] in capsys.readouterr().err
    from smooth_then_quant.load import load_model
    with pytest.raises(SmoothQuantError, match=f"device '{device}'"):
        load_model("default", device=device)


@pytest.mark.parametrize("key", ["int", "str", "none", "bool", "literal[x]", "constrained-float", "list[...]"])
def test_keys_named_like_pydantic_tags_are_unknown_keys_not_tracebacks(tmp_path, key):
    # regression: the error explainer dropped these as pydantic's union tags, then indexed an empty path
    with pytest.raises(SmoothQuantError, match=rf"unknown key '{re.escape(key)}'; allowed keys here: stage, model"):
        load_recipe(write(tmp_path, f"output_dir: o\n'{key}': 3\n"))
    with pytest.raises(SmoothQuantError, match=rf"unknown key 'calibration.{re.escape(key)}'"):
        load_recipe(write(tmp_path, f"output_dir: o\ncalibration: {{'{key}': 3}}\n"))


def test_errors_inside_a_registry_chosen_section_list_its_own_keys(tmp_path):
    with pytest.raises(SmoothQuantError) as e:
        load_recipe(write(tmp_path, "output_dir: o\nquantization: {schemes: {R: {weights: {method: rtn, damp: 0.1}}}}\n"))
    assert "unknown key 'quantization.schemes.R.weights.damp'; allowed keys here: bits, group_size, symmetric, method" \
        in str(e.value)
    with pytest.raises(SmoothQuantError, match="'smoothing.migrate.alpha': Input should be 'search' or less than or equal to 1"):
        load_recipe(write(tmp_path, "output_dir: o\nsmoothing: {migrate: {alpha: 2}}\n"))
    with pytest.raises(SmoothQuantError, match="'smoothing.migrate.target.group_size': group_size must be -1"):
        load_recipe(write(tmp_path, "output_dir: o\nsmoothing: {migrate: {target: {group_size: 0}}}\n"))
