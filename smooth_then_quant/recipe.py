"""The recipe: one pydantic schema, unknown keys rejected, strings only at this YAML boundary.

    recipe = load_recipe("recipes/analyze.yaml", ["calibration.samples=8"])
"""
from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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

    @field_validator("data")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_source(v)


def _check_source(v: str) -> str:
    from .load.data import check_source

    try:
        check_source(v)
    except SmoothQuantError as e:
        raise ValueError(str(e)) from None
    return v


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


class RemoveMassiveSection(Section):
    """Paper §3.3: replace TMAs by the tensor mean / zero at run time (lossy on some models)."""
    enabled: bool = False
    replace_with: Literal["mean", "zero"] = "mean"
    at: Literal["down_input", "down_output"] = "down_input"  # y6 (paper) | y7 (the paper's contrast)
    channels: Literal["detected", "all"] = "detected"
    layers: list[Annotated[int, Field(ge=0)]] | None = None  # null: every layer with TMAs


class FlattenGammaSection(Section):
    """Paper §4.2/4.4: γ outlier entries set to the γ mean / zero (lossy)."""
    enabled: bool = False
    replace_with: Literal["mean", "zero"] = "mean"


class FlattenOTCSection(Section):
    """Paper §4.3: OTC rows of W_q/W_k/W_v set to their mean (lossy; pair it with repair)."""
    enabled: bool = False


class TargetSection(Section):
    """The quantization the α search scores migrations against."""
    weight_bits: int = Field(4, ge=2, le=8)
    group_size: int = Field(64, ge=-1)
    act_bits: int = Field(8, ge=2, le=16)
    act_granularity: Literal["per_token", "per_tensor"] = "per_tensor"


class MigrateSection(Section):
    """Exact, function-preserving migrations (weight-folded)."""
    norm: Literal["smoothquant", "gamma", "none"] = "smoothquant"  # x2 / y2 (see README)
    down: bool = True  # y6: W_up rows / W_down columns
    alpha: Literal["search"] | Annotated[float, Field(ge=0, le=1)] = "search"
    target: TargetSection = TargetSection()
    search_samples: int = Field(4, ge=1)


class RepairSection(Section):
    """LoRA (peft) distillation against the unmodified model, merged into the weights."""
    enabled: bool = False
    roles: list[Literal["qkv", "o", "mlp_in", "mlp_out"]] = ["qkv"]
    layers: Literal["affected", "all"] = "affected"
    rank: int = Field(8, ge=1)
    steps: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(2, ge=1)
    seq_len: int = Field(256, ge=2)
    penalty: float = Field(1.0, ge=0)
    heldout: int = Field(4, ge=1)


class SmoothingSection(Section):
    enabled: bool = True
    remove_massive: RemoveMassiveSection = RemoveMassiveSection()
    flatten_gamma: FlattenGammaSection = FlattenGammaSection()
    flatten_otc: FlattenOTCSection = FlattenOTCSection()
    migrate: MigrateSection = MigrateSection()
    repair: RepairSection = RepairSection()


PAPER_SMOOTHING = {"remove_massive": {"enabled": True}, "migrate": {"norm": "none", "down": False}}


class WeightsSection(Section):
    method: Literal["gptq", "rtn"] = "gptq"
    bits: Literal[2, 3, 4, 8] = 4
    group_size: int = Field(128, ge=-1)  # -1: per channel; uneven last groups are handled (see README)
    symmetric: bool = True
    act_order: Literal["off", "desc", "group_aware"] = "off"  # GPTQ only
    damp: float = Field(0.05, gt=0, lt=1)  # GPTQ only
    true_sequential: bool = True  # GPTQ only

    @field_validator("act_order", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads an unquoted `off` as false

    @field_validator("group_size")
    @classmethod
    def _nonzero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("group_size must be -1 (per channel) or a positive group width such as 64 or 128")
        return v


class ActivationsSection(Section):
    bits: int = Field(8, ge=2, le=16)
    granularity: Literal["per_token", "per_tensor"] = "per_tensor"  # per_token: dynamic; per_tensor: static
    symmetric: bool = True


class SchemeSection(Section):
    weights: WeightsSection = WeightsSection()
    activations: ActivationsSection | None = None  # null: A16 (weights only)


DEFAULT_SCHEMES = {
    "W4A16": {"weights": {"bits": 4}},
    "W8A8": {"weights": {"bits": 8, "group_size": -1}, "activations": {"granularity": "per_token"}},
    "W4A8": {"weights": {"bits": 4}, "activations": {"granularity": "per_tensor"}},
}


class QuantizationSection(Section):
    """The table: FP and every scheme x every compared smoothing state."""
    enabled: bool = False
    schemes: dict[str, SchemeSection] = {k: SchemeSection.model_validate(v) for k, v in DEFAULT_SCHEMES.items()}
    compare: list[Literal["baseline", "paper", "smoothed"]] = ["baseline", "paper", "smoothed"]
    paper: SmoothingSection = SmoothingSection.model_validate(PAPER_SMOOTHING)  # the paper's smoothing, as run
    batch_size: int = Field(1, ge=1)  # calibration windows per GPTQ layer forward (GPTQConfig default: least memory)
    gptq_backend: Literal["builtin", "gptqmodel"] = "builtin"  # builtin: faster on CPU, same PPL (bench/)

    @field_validator("compare")
    @classmethod
    def _baseline_first(cls, v: list[str]) -> list[str]:
        if "baseline" not in v:
            raise ValueError("compare must include baseline (the reference of 'degradation reduced')")
        return list(dict.fromkeys(["baseline", *v]))


class EvaluationSection(Section):
    datasets: list[str] = ["offline"]  # offline | wikitext2 | c4 | path to .txt/.jsonl
    seq_len: int = Field(2048, ge=2)
    max_windows: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    per_intervention: bool = True  # evidence for each intervention alone, not only combined
    evidence_samples: int = Field(8, ge=1)  # calibration windows probed before/after

    @field_validator("datasets")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one dataset (offline, wikitext2, c4 or a .txt/.jsonl file)")
        return [_check_source(d) for d in v]


class QuantizedExportSection(Section):
    """Write one cell of the table as a quantized checkpoint (output_dir/quantized)."""
    scheme: str = "W4A16"  # a name under quantization.schemes
    state: Literal["baseline", "paper", "smoothed"] = "smoothed"
    format: Literal["gptq", "compressed-tensors"] = "gptq"  # compressed-tensors also carries A8 (vLLM int8)


class ExportSection(Section):
    model: bool = True  # write the smoothed float checkpoint to output_dir/model
    quantized: QuantizedExportSection | None = None  # null: no quantized checkpoint
    push_to_hub: str | None = None  # a Hub repo id (user/name); token from HF_TOKEN or `hf auth login`
    private: bool = True  # a new Hub repo is private unless this is false


class Recipe(Section):
    stage: Literal["analyze", "smooth", "full"] = "full"  # stop after analysis / after smoothing / run it all
    model: str = "default"  # default | hub id | local folder | file.gguf
    load: LoadSection = LoadSection()
    calibration: CalibrationSection = CalibrationSection()
    analysis: AnalysisSection = AnalysisSection()
    smoothing: SmoothingSection = SmoothingSection(enabled=False)
    quantization: QuantizationSection = QuantizationSection()
    evaluation: EvaluationSection = EvaluationSection()
    export: ExportSection = ExportSection()
    output_dir: str
    overwrite: bool = False

    @model_validator(mode="after")
    def _export_matches(self):
        q = self.export.quantized
        if q is not None:
            if q.scheme not in self.quantization.schemes:
                raise ValueError(f"export.quantized.scheme '{q.scheme}' is not one of quantization.schemes "
                                 f"({', '.join(self.quantization.schemes)})")
            if q.state not in self.quantization.compare:
                raise ValueError(f"export.quantized.state '{q.state}' is not in quantization.compare "
                                 f"({', '.join(self.quantization.compare)})")
            if not self.quantization.enabled:
                raise ValueError("export.quantized needs quantization.enabled: true")
            if q.state == "smoothed" and not self.smoothing.enabled:
                raise ValueError("export.quantized.state 'smoothed' needs smoothing.enabled: true")
            w = self.quantization.schemes[q.scheme].weights
            if q.format == "compressed-tensors" and w.method == "gptq" and w.act_order != "off":
                raise ValueError(f"export.quantized.format compressed-tensors cannot hold scheme '{q.scheme}' with "
                                 f"act_order {w.act_order} (permuted groups); use act_order off, or format gptq")
        if self.export.push_to_hub is not None and self.export.push_to_hub.count("/") != 1:
            raise ValueError(f"export.push_to_hub must be a Hub repo id 'user/name' (got '{self.export.push_to_hub}')")
        return self


# ---- loading -----------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise SmoothQuantError(f"recipe file not found: {path}. Pass a YAML recipe, e.g. recipes/analyze.yaml.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SmoothQuantError(f"recipe {path} is not valid YAML: " + " ".join(str(e).split())) from None
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
        merged: dict[tuple, dict] = {}  # a union (e.g. alpha: search | number) reports one error per member
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
            if loc in merged:
                merged[loc]["msg"] += " or " + err["msg"].removeprefix("Input should be ")
            else:
                merged[loc] = {**err, "loc": loc}
        raise SmoothQuantError(f"{source}: " + "; ".join(_explain(err) for err in merged.values())) from None


def _is_union_tag(part) -> bool:
    return isinstance(part, str) and (part.startswith(("literal[", "constrained-", "function-")) or
                                      part in ("int", "float", "str", "bool", "list[...]", "none"))


def _explain(err: dict) -> str:
    loc = [str(p) if str(p).isprintable() else repr(str(p))[1:-1] for p in err["loc"]]  # a key with a newline...
    where = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        return (f"unknown key '{where}'" + (f" (did you mean '{'.'.join(loc[:-1] + hint)}'?)" if hint else "")
                + f"; allowed keys here: {', '.join(allowed)}")
    if err["type"] == "missing":
        return f"missing required key '{where}'"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a rule across sections (e.g. export.quantized must name a scheme): the message says it all
        return msg
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    return f"bad value {shown[:80]} for '{where}': {msg}"


def _fields_at(loc: list[str]) -> list[str]:
    """The keys allowed at a location (through sections, optional sections and name -> section maps)."""
    ann: Any = Recipe
    for part in loc:
        if typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[1]  # `part` is a user-chosen name (e.g. a scheme)
            continue
        field = ann.model_fields.get(part) if _is_section(ann) else None
        if field is None:
            return []
        ann = field.annotation
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            ann = next((a for a in typing.get_args(ann) if _is_section(a)), None)
    return list(ann.model_fields) if _is_section(ann) else []


def _is_section(ann) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
