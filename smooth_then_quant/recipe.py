"""The recipe: the stage configs composed into one schema; strings exist only at this YAML boundary.

    recipe = load_recipe("recipes/analyze.yaml", ["calibration.samples=8"])
    recipe.smoothing            # a SmoothingConfig, what plan_smoothing takes
    recipe.quantization.schemes # Schemes, what quantize_ takes

Nothing here restates a stage's keys or defaults: each section IS the stage's config class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError, field_validator, model_validator

from .detect import AnalysisConfig
from .errors import SmoothQuantError
from .evaluate import EvalConfig, QuantizationConfig
from .export import get_format
from .export.config import ExportConfig
from .load import CalibrationConfig, LoadConfig, ResourcesConfig
from .load.model import resolve_source
from .schema import Config, explain, short_repr
from .smooth import SmoothingConfig


class Recipe(Config):
    stage: Literal["analyze", "smooth", "full"] = "full"  # stop after analysis / after smoothing / run it all
    model: str = "default"  # default | hub id | local folder | file.gguf
    load: LoadConfig = LoadConfig()
    resources: ResourcesConfig = ResourcesConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    smoothing: SmoothingConfig = SmoothingConfig(enabled=False)
    quantization: QuantizationConfig = QuantizationConfig()
    evaluation: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    output_dir: str
    overwrite: bool = False

    @field_validator("model")
    @classmethod
    def _model_exists(cls, v: str) -> str:
        """A local path must exist now (a hub id is checked when it is downloaded): --dry-run catches it too."""
        try:
            resolve_source(v)
        except SmoothQuantError as e:
            raise ValueError(str(e)) from None
        return v

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
            why = get_format(q.format).refuses(self.quantization.schemes[q.scheme].to_dict())
            if why:
                raise ValueError(f"export.quantized.format {q.format} cannot hold scheme '{q.scheme}' {why}")
        return self


# ---- presets: the shipped recipes, package data (so they work outside a checkout) --------------------
PRESET_DIR = Path(__file__).resolve().parent / "recipes"


def presets() -> dict[str, Path]:
    """name -> the preset's YAML file: `smooth-quant quickstart` runs recipes/quickstart.yaml."""
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


def preset_summary(path: Path, width: int = 100) -> str:
    """The first sentence of the preset's header comment, at most `width` characters."""
    head = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or line.startswith("#  "):  # the header ends at a command line or the keys
            break
        head.append(line.lstrip("# ").strip())
    text = " ".join(head)
    text = text.split(". ")[0].rstrip(".:")
    return text if len(text) <= width else text[:width - 1].rsplit(" ", 1)[0] + "…"


def resolve_recipe(spec: str | Path) -> Path:
    """A recipe file, or a preset's name (`quickstart`): a file of that name wins."""
    path = Path(spec)
    try:
        if path.is_file():
            return path
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        raise SmoothQuantError(f"recipe {str(spec)[:80]!r}{'...' if len(str(spec)) > 80 else ''} cannot be read: "
                               f"{getattr(e, 'strerror', None) or e}.") from None
    name = str(spec).removesuffix(".yaml")
    if "/" not in str(spec) and name in presets():
        return presets()[name]
    hint = (f"; the preset is `{path.stem}` (smooth-quant {path.stem})" if path.stem in presets() else
            f". Pass a YAML recipe or a preset name ({', '.join(presets())}; smooth-quant --list-presets)")
    raise SmoothQuantError(f"recipe file not found: {path}{hint}.")


# ---- loading -----------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """A YAML recipe file or a preset name, with --set style overrides (KEY.PATH=VALUE) applied."""
    path = resolve_recipe(path)
    raw = read_recipe(path)
    for item in overrides:
        apply_override(raw, item)
    return validate_recipe(raw, source=str(path))


def read_recipe(path: Path) -> dict:
    """The raw mapping of a recipe file; every way YAML or the file can fail is one line."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SmoothQuantError(f"recipe {path} is not valid YAML: " + " ".join(str(e).split())) from None
    except UnicodeDecodeError:
        raise SmoothQuantError(f"recipe {path} is not UTF-8 text.") from None
    except RecursionError:
        raise SmoothQuantError(f"recipe {path} is nested too deeply to be a recipe.") from None
    except ValueError as e:
        if "integer string conversion" in str(e):
            raise SmoothQuantError(f"recipe {path} holds an integer of more than 4,300 digits; no key takes one.") from None
        raise SmoothQuantError(f"recipe {path} holds a value YAML cannot read: {' '.join(str(e).split())[:160]}") from None
    except OSError as e:
        raise SmoothQuantError(f"cannot read recipe {path}: {e.strerror or e}.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SmoothQuantError(f"recipe {path} must be a mapping of keys (model:, calibration:, output_dir:, ...), "
                               f"not a {type(raw).__name__}.")
    return raw


def apply_override(raw: dict, item: str) -> None:
    """KEY.PATH=VALUE, VALUE parsed as YAML (numbers, booleans, null, lists)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SmoothQuantError("--set expects KEY=VALUE with a dotted key, e.g. --set calibration.samples=8 "
                               f"(got {short_repr(item)}).")
    try:
        parsed = yaml.safe_load(value) if value.strip() else value
    except (yaml.YAMLError, ValueError):  # not YAML, or a number YAML cannot hold (5,000 digits): the text itself
        parsed = value
    except RecursionError:
        raise SmoothQuantError(f"--set {key[:60]}: the value is nested too deeply.") from None
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SmoothQuantError(f"--set {short_repr(key)}: {short_repr('.'.join(parts[:i + 1]))} is a value, not a "
                                   "section.")
        node = child
    node[parts[-1]] = parsed


def validate_recipe(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise SmoothQuantError(explain(e, source, Recipe, raw)) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
