"""oneshot: the whole recipe in one call, as llm-compressor users know it.

    from smooth_then_quant import oneshot
    report = oneshot("HuggingFaceTB/SmolLM2-135M-Instruct", "w4a16", dataset="HuggingFaceH4/ultrachat_200k",
                     output_dir="smollm2-w4a16", **{"calibration.split": "train_sft", "calibration.samples": 128})
    report = oneshot(model, "quickstart", dataset=["some text", ...], output_dir="out", tokenizer=tok)

The same run as `smooth-quant RECIPE` (same stages, same atomic output folder), with Python objects where the
command line takes names: a model object, in-memory calibration data, a recipe dict or Recipe.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import SmoothQuantError
from .load.model import IN_MEMORY, load_model
from .pipeline import run
from .recipe import Recipe, apply_override, read_recipe, resolve_recipe, validate_recipe


def recipe_dict(recipe) -> dict:
    """A recipe given as a YAML path, a preset's name, a dict or a Recipe -> its raw mapping."""
    if isinstance(recipe, Recipe):
        return recipe.model_dump(mode="json")
    if isinstance(recipe, dict):
        return json.loads(json.dumps(recipe))  # a deep copy; the caller's dict is left alone
    if isinstance(recipe, str | Path):
        return read_recipe(resolve_recipe(recipe))
    raise SmoothQuantError(f"recipe must be a YAML path, a preset name, a dict or a Recipe, not a "
                           f"{type(recipe).__name__}.")


def oneshot(model, recipe, dataset=None, output_dir: str | Path | None = None, *, tokenizer=None,
            **overrides) -> dict:
    """Run `recipe` on `model` and return its report (report.json's content, plus `outputs`: where things went).
    Under torchrun every rank calls it; rank 0 writes and returns the report, the others return {"outputs": ...}.

    model: a transformers model object (with `tokenizer`, or its name_or_path's), a hub id, a folder, a .gguf
        file or "default". A model object is used as it is (its device and dtype) and left unchanged: the
        smoothed and quantized states are copies, written to output_dir.
    recipe: a YAML path, a preset's name ("w4a16"), a dict, or a Recipe.
    dataset: the calibration data: "offline" | "wikitext2" | "c4" | a .txt/.jsonl file | a Hub dataset id
        (with overrides calibration.split / calibration.text_column) | a datasets.Dataset | a list of strings |
        a list of chat conversations (rendered with the tokenizer's chat template). Default: the recipe's.
    output_dir: where the outputs go (default: the recipe's output_dir).
    overrides: recipe keys by dotted path, as --set: **{"calibration.samples": 64}, or calibration__samples=64.
    """
    raw = recipe_dict(recipe)
    given = None
    if isinstance(model, str | Path):
        raw["model"] = str(model)
    elif model is not None:
        given = load_model(model, tokenizer=tokenizer)
        raw["model"] = IN_MEMORY
    data = None
    if dataset is not None:
        calibration = raw.setdefault("calibration", {})
        if not isinstance(calibration, dict):
            raise SmoothQuantError("the recipe's calibration must be a mapping of keys.")
        if isinstance(dataset, str | Path):
            calibration["data"] = str(dataset)
        else:
            data, calibration["data"] = dataset, IN_MEMORY
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    for key, value in overrides.items():
        apply_override(raw, f"{key.replace('__', '.')}={json.dumps(value)}")  # JSON is YAML: the value as given
    if "output_dir" not in raw:
        raise SmoothQuantError("oneshot needs output_dir= (the recipe gives none).")
    parsed = validate_recipe(raw, source="oneshot recipe")
    summary = run(parsed, source=recipe if isinstance(recipe, str | Path) and Path(recipe).is_file() else None,
                  model=given, data=data, tokenizer=tokenizer if given is None else None)
    if summary.get("rank"):  # under torchrun, a rank other than 0: it wrote nothing, rank 0 returns the report
        return {"outputs": summary}
    report = json.loads((Path(summary["output_dir"]) / "report.json").read_text(encoding="utf-8"))
    report["outputs"] = summary
    return report
