"""The recipe: one pydantic schema, unknown keys rejected, strings only at this YAML boundary.

    recipe = load_recipe("recipes/analyze.yaml", ["calibration.samples=8"])
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import SmoothQuantError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadSection(Section):
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    revision: str | None = None


class CalibrationSection(Section):
    data: str = "offline"  # offline | wikitext2 | c4 | path to .txt/.jsonl
    samples: int = Field(32, ge=1)
    seq_len: int = Field(512, ge=2)
    seed: int = 0
    batch_size: int = Field(4, ge=1)


class MassiveSection(Section):
    abs_threshold: float = Field(100.0, gt=0)
    ratio: float = Field(1000.0, gt=0)


class ChannelSection(Section):
    m: float = Field(4.0, gt=0)
    beta: float = Field(1 / 3, gt=0)
    exclude_massive: bool = True


class AnalysisSection(Section):
    massive: MassiveSection = MassiveSection()
    channel: ChannelSection = ChannelSection()
    top_k: int = Field(10, ge=3)
    plots: bool = True


class Recipe(Section):
    model: str = "default"  # default | hub id | local folder | file.gguf
    load: LoadSection = LoadSection()
    calibration: CalibrationSection = CalibrationSection()
    analysis: AnalysisSection = AnalysisSection()
    output_dir: str
    overwrite: bool = False


# ---- loading -----------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise SmoothQuantError(f"recipe file not found: {path}. Pass a YAML recipe, e.g. recipes/analyze.yaml.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SmoothQuantError(f"recipe {path} is not valid YAML: {e}") from None
    except UnicodeDecodeError:
        raise SmoothQuantError(f"recipe {path} is not UTF-8 text.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SmoothQuantError(f"recipe {path} must be a mapping of keys (model:, calibration:, output_dir:, ...), "
                               f"not a {type(raw).__name__}.")
    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(path))


def apply_override(raw: dict, item: str) -> None:
    """KEY.PATH=VALUE, VALUE parsed as YAML (numbers, booleans, null, lists)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SmoothQuantError(f"--set expects KEY=VALUE with a dotted key, e.g. --set calibration.samples=8 (got '{item}').")
    try:
        parsed = yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        parsed = value
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SmoothQuantError(f"--set {key}: '{'.'.join(parts[:i + 1])}' is a value, not a section.")
        node = child
    node[parts[-1]] = parsed


def validate_recipe(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise SmoothQuantError(f"{source}: " + "; ".join(_explain(err) for err in e.errors())) from None


def _explain(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        return (f"unknown key '{where}'" + (f" (did you mean '{'.'.join(loc[:-1] + hint)}'?)" if hint else "")
                + f"; allowed keys here: {', '.join(allowed)}")
    if err["type"] == "missing":
        return f"missing required key '{where}'"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    return f"bad value {shown[:80]} for '{where}': {err['msg']}"


def _fields_at(loc: list[str]) -> list[str]:
    model: Any = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
