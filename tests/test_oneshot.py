"""oneshot(model, recipe, dataset, output_dir): model objects, in-memory data, presets, dicts and Recipes."""
from __future__ import annotations

import warnings

import pytest
import torch

from planting import char_tokenizer, save_tiny
from smooth_then_quant import calibration_windows, load_model, oneshot
from smooth_then_quant.cli import main
from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.recipe import validate_recipe

TEXTS = [f"line {i}: the quick brown fox jumps over the lazy dog.\n" * 3 for i in range(40)]
SMALL = {"calibration": {"samples": 4, "seq_len": 32}, "analysis": {"plots": False},
         "smoothing": {"enabled": True, "migrate": {"norm": "smoothquant", "down": True, "alpha": 0.5}},
         "quantization": {"enabled": True, "compare": ["baseline", "smoothed"],
                          "schemes": {"W4A16": {"weights": {"group_size": 32}}}},
         "evaluation": {"seq_len": 32, "max_windows": 2, "per_intervention": False}}
CHAT = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.fixture
def tiny(tmp_path):
    save_tiny(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_model_object_and_texts(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = oneshot(model, SMALL, dataset=TEXTS, output_dir=tmp_path / "out", tokenizer=char_tokenizer())
    assert report["data"]["name"] == "in-memory" and report["data"]["documents"] == len(TEXTS)
    assert report["model"]["source"] == "in-memory"
    assert {(r["scheme"], r["state"]) for r in report["quantization"]["rows"]} >= {("W4A16", "smoothed")}
    assert (tmp_path / "out" / "report.md").is_file() and report["outputs"]["output_dir"] == str(tmp_path / "out")
    after = model.state_dict()  # the states are copies: the caller's model is left as it was
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_tokenizer_from_the_models_name_or_path(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)  # name_or_path = the folder, which has the tokenizer
    report = oneshot(model, {**SMALL, "quantization": {"enabled": False}}, dataset=TEXTS, output_dir=tmp_path / "o")
    assert report["model"]["name"] == str(tiny)


def test_output_dir_may_not_be_the_held_models_folder(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    with pytest.raises(SmoothQuantError, match="model"):
        oneshot(model, {**SMALL, "overwrite": True}, dataset=TEXTS, output_dir=tiny)
    assert (tiny / "config.json").is_file()


def test_chat_conversations_use_the_chat_template(tiny, tmp_path):
    tok = char_tokenizer()
    tok.chat_template = CHAT
    convs = [[{"role": "user", "content": t}, {"role": "assistant", "content": t[::-1]}] for t in TEXTS]
    ids, prov = calibration_windows(tok, convs, samples=4, seq_len=32)
    assert prov["chat_documents"] == len(convs) and ids.shape == (4, 32)
    report = oneshot(str(tiny), {**SMALL, "quantization": {"enabled": False}}, dataset=convs,
                     output_dir=tmp_path / "out", tokenizer=tok)
    assert report["data"]["chat_documents"] == len(convs)


def test_preset_name_with_overrides_and_a_file(tiny, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("".join(TEXTS))
    report = oneshot(str(tiny), "analyze", dataset=data, output_dir=tmp_path / "out",
                     **{"calibration.samples": 4}, calibration__seq_len=32, analysis__plots=False)
    assert report["recipe"]["calibration"]["samples"] == 4 and report["recipe"]["calibration"]["seq_len"] == 32
    assert report["data"]["name"] == str(data) and "quantization" not in report


def test_recipe_object(tiny, tmp_path):
    recipe = validate_recipe({**SMALL, "model": str(tiny), "output_dir": str(tmp_path / "unused"),
                              "quantization": {"enabled": False}})
    report = oneshot(None, recipe, output_dir=tmp_path / "out", **{"calibration.data": str(_file(tmp_path))})
    assert report["recipe"]["model"] == str(tiny)


def _file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("".join(TEXTS))
    return f


def test_hub_dataset_id_split_and_column(tiny, tmp_path, monkeypatch):
    import datasets

    seen = {}
    rows = [[{"role": "user", "content": t}] for t in TEXTS]

    def fake_load_dataset(name, split=None, **kw):  # the Hub, offline: what load_dataset returns for it
        seen.update(name=name, split=split)
        return datasets.Dataset.from_dict({"prompt_id": list(range(len(rows))), "messages": rows})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    tok = char_tokenizer()
    tok.chat_template = CHAT
    report = oneshot(str(tiny), {**SMALL, "quantization": {"enabled": False}}, dataset="HuggingFaceH4/ultrachat_200k",
                     output_dir=tmp_path / "out", tokenizer=tok, calibration__split="train_sft")
    assert seen == {"name": "HuggingFaceH4/ultrachat_200k", "split": "train_sft"}
    assert report["data"]["column"] == "messages" and report["data"]["hub"] == "HuggingFaceH4/ultrachat_200k"
    ds = fake_load_dataset("x")  # a Dataset object directly, with an explicit column that is not there
    with pytest.raises(SmoothQuantError, match="no column nope"):
        calibration_windows(tok, ds, samples=2, seq_len=16, text_column="nope")


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": [1, 2, 3]}, "calibration item 0 is a int"),
    ({"dataset": []}, "non-empty list"),
    ({"model": 42}, "model must be a name, a path or a model object"),
    ({"recipe": 3.5}, "recipe must be"),
    ({"recipe": "nosuch"}, "recipe file not found"),
    ({"output_dir": None}, "needs output_dir"),
    ({"calibration__samples": 0}, "calibration.samples"),
])
def test_bad_input_is_one_line(tiny, tmp_path, kwargs, match):
    args = {"model": str(tiny), "recipe": {**SMALL}, "dataset": TEXTS, "output_dir": tmp_path / "out", **kwargs}
    with pytest.raises(SmoothQuantError, match=match) as e:
        oneshot(args.pop("model"), args.pop("recipe"), **args)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_in_memory_markers_are_refused_in_a_recipe_file(tiny, tmp_path, capsys):
    r = tmp_path / "r.yaml"
    r.write_text(f"model: in-memory\noutput_dir: {tmp_path / 'o'}\n")
    assert main([str(r), "--dry-run"]) == 2
    assert "model: in-memory is a model object handed to oneshot()" in capsys.readouterr().err
    r.write_text(f"model: {tiny}\ncalibration: {{data: in-memory}}\noutput_dir: {tmp_path / 'o'}\n")
    assert main([str(r), "--dry-run"]) == 2
    assert "calibration.data: in-memory is data handed to oneshot" in capsys.readouterr().err


def test_load_model_takes_a_held_model(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    loaded = load_model(model, tokenizer=char_tokenizer())
    assert loaded.model is model and loaded.provenance["source"] == "in-memory"


def test_gptqconfig_is_a_deprecated_alias():
    import smooth_then_quant

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert smooth_then_quant.GPTQConfig is smooth_then_quant.GPTQWeights
    assert any(issubclass(x.category, DeprecationWarning) and "transformers.GPTQConfig" in str(x.message) for x in w)
    import transformers
    assert smooth_then_quant.GPTQWeights is not transformers.GPTQConfig
