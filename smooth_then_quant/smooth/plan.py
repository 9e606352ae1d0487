"""The smoothing plan: what to change, where, and why, as plain data (JSON round trip).

Each entry is a PlanItem of a registered kind, and declares
  exact     the model's function is unchanged (up to float rounding);
  foldable  the change lives in the weights (`apply_`), so a vanilla checkpoint reproduces it;
            otherwise it is a runtime hook (`runtime_op`) that our loader re-attaches;
  touched   the parameters it edits (so planning can apply it temporarily and put them back).
The list order is the order of application: lossy edits first, then the exact migrations whose
scales were computed on the already-edited model. The kinds are registered by the intervention
modules (smooth/interventions/).
"""
from __future__ import annotations

import functools
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from torch import nn

from ..arch import ArchAdapter
from ..errors import SmoothQuantError

ITEM_KINDS: dict[str, type[PlanItem]] = {}

# the field types of plan items: a plan read back from JSON is validated against them (strict types, bounds)
Layer = Annotated[int, Field(ge=0)]  # below the model's layer count: checked against the model (from_dict)
Channel = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Alpha = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Site = Literal["attn", "mlp"]
Fill = Literal["mean", "zero"]
Point = Literal["x1", "x2", "x3", "x4", "x5", "x8", "x9", "y1", "y2", "y3", "y4", "y5", "y6", "y7"]


@dataclass
class PlanItem:
    """One edit of the plan. Subclasses are dataclasses with a `kind`, `exact` and `foldable`."""
    kind: ClassVar[str]
    exact: ClassVar[bool]
    foldable: ClassVar[bool]

    def apply_(self, layer: nn.Module, adapter: ArchAdapter) -> None:
        """Edit the weights of decoder layer `layer` (foldable items)."""
        raise NotImplementedError(f"{self.kind} is not weight-folded")

    def runtime_op(self):
        """The hook that does it at run time (non-foldable items): see arch.runtime."""
        raise NotImplementedError(f"{self.kind} is folded into the weights")

    def touched(self, adapter: ArchAdapter, layer: nn.Module) -> list[torch.Tensor]:
        """The parameters apply_ edits (every foldable kind must say)."""
        raise NotImplementedError(f"{self.kind} does not say which parameters it edits")


def register_item(cls: type[PlanItem]) -> type[PlanItem]:
    if cls.kind in ITEM_KINDS and ITEM_KINDS[cls.kind] is not cls:
        raise ValueError(f"plan kind '{cls.kind}' is already registered by {ITEM_KINDS[cls.kind].__name__}")
    ITEM_KINDS[cls.kind] = cls
    return cls


def params_of(layer: nn.Module, path: str) -> list[torch.Tensor]:
    """weight (and bias) of the submodule at `path`: what most items touch."""
    m = layer.get_submodule(path)
    return [t for t in (m.weight, getattr(m, "bias", None)) if t is not None]


@dataclass
class SmoothingPlan:
    model_type: str
    interventions: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    FORMAT: ClassVar[int] = 1

    def runtime(self) -> list:
        return [i.runtime_op() for i in self.interventions if not i.foldable]

    def kinds(self) -> list[str]:
        return list(dict.fromkeys(i.kind for i in self.interventions))

    def subset(self, kinds: set[str]) -> SmoothingPlan:
        return SmoothingPlan(self.model_type, [i for i in self.interventions if i.kind in kinds], list(self.notes))

    def summary(self) -> list[dict]:
        """One row per kind: how many edits, layers touched, exact?, foldable?"""
        rows = []
        for kind in self.kinds():
            items = [i for i in self.interventions if i.kind == kind]
            layers = sorted({getattr(i, "layer", -1) for i in items} - {-1})
            rows.append({"kind": kind, "count": len(items), "layers": layers, "exact": items[0].exact,
                         "foldable": items[0].foldable, "doc": (type(items[0]).__doc__ or "").split("\n")[0]})
        return rows

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "model_type": self.model_type, "notes": self.notes,
                "summary": self.summary(),
                "interventions": [{"kind": i.kind, "exact": i.exact, "foldable": i.foldable, **asdict(i)}
                                  for i in self.interventions]}

    @classmethod
    def from_dict(cls, d: dict, num_layers: int | None = None, model_type: str | None = None,
                  source: str = "smoothing plan") -> SmoothingPlan:
        """Validated: known kinds, every field of its declared type and bounds (strict: no "1" for 1, no NaN),
        no unknown fields, layers below `num_layers`, the `model_type` it was made for."""
        if not isinstance(d, dict) or d.get("format") != cls.FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise SmoothQuantError(f"{source}: format {str(got)[:40]!r} is not supported (expected {cls.FORMAT}).")
        if not isinstance(d.get("model_type"), str) or not isinstance(d.get("interventions", []), list):
            raise SmoothQuantError(f"{source}: needs a model_type (text) and a list of interventions.")
        if model_type is not None and d["model_type"] != model_type:
            raise SmoothQuantError(f"{source} was made for a {d['model_type'][:40]!r} model, not this "
                                   f"{model_type!r} one.")
        items = []
        for n, raw in enumerate(d.get("interventions", [])):
            kind = raw.get("kind") if isinstance(raw, dict) else None
            if kind not in ITEM_KINDS:
                raise SmoothQuantError(f"{source}: intervention {n} has unknown kind {str(kind)[:40]!r}; known: "
                                       f"{', '.join(ITEM_KINDS)}.")
            c = ITEM_KINDS[kind]
            names = {f.name for f in fields(c)}
            extra = sorted(set(raw) - names - {"kind", "exact", "foldable"})
            if extra or raw.get("exact", c.exact) != c.exact or raw.get("foldable", c.foldable) != c.foldable:
                raise SmoothQuantError(f"{source}: intervention {n} ({kind}) has unknown or altered fields "
                                       f"{(extra or ['exact/foldable'])[:3]}.")
            try:
                item = c(**dict(_schema(c).model_validate({k: v for k, v in raw.items() if k in names})))
            except ValidationError as e:
                why = "; ".join(f"{'.'.join(map(str, err['loc']))[:40]}: {err['msg']}" for err in e.errors()[:3])
                raise SmoothQuantError(f"{source}: intervention {n} ({kind}): {why}.") from None
            layer = getattr(item, "layer", None)
            if num_layers is not None and layer is not None and layer >= num_layers:
                raise SmoothQuantError(f"{source}: intervention {n} ({kind}) is for layer {layer}, but the model has "
                                       f"{num_layers} layers.")
            items.append(item)
        return cls(d["model_type"], items, [str(x) for x in d.get("notes", [])][:1000])

    def save(self, path: str | Path, weights: dict[str, str] | None = None) -> None:
        """`weights`: {file: sha256} of the checkpoint this plan belongs to (export folders bind it)."""
        d = self.to_dict() if weights is None else {**self.to_dict(), "weights_sha256": weights}
        Path(path).write_text(json.dumps(d, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, num_layers: int | None = None, model_type: str | None = None) -> SmoothingPlan:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise SmoothQuantError(f"{path} is not a valid smoothing plan ({' '.join(str(e).split())[:120]}).") from None
        return cls.from_dict(d, num_layers, model_type, source=str(path))


@functools.cache
def _schema(c: type) -> type[BaseModel]:
    """A strict pydantic model of dataclass `c`'s fields (their annotated types, bounds and defaults)."""
    hints = typing.get_type_hints(c, include_extras=True)
    spec = {f.name: (hints[f.name], f.default if f.default is not MISSING else
                     Field(default_factory=f.default_factory) if f.default_factory is not MISSING else ...)
            for f in fields(c)}
    return create_model(f"{c.__name__}Schema", __config__=ConfigDict(strict=True, extra="forbid", allow_inf_nan=False),
                        **spec)
