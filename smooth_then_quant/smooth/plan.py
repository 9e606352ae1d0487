"""The smoothing plan: what to change, where, and why, as plain data (JSON round trip).

Each intervention declares
  exact     the model's function is unchanged (up to float rounding);
  foldable  the change lives in the weights, so a vanilla checkpoint reproduces it;
            otherwise it is a runtime hook that our loader re-attaches (MassiveRemoval).
The list order is the order of application: lossy edits first, then the exact migrations whose
scales were computed on the already-edited model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from ..errors import SmoothQuantError
from .runtime import MassiveRemoval


@dataclass
class RemoveMassive:
    """Paper §3.3: replace the TMAs at `point` (y6) by the tensor mean or zero, at run time."""
    kind: ClassVar[str] = "remove_massive"
    exact: ClassVar[bool] = False
    foldable: ClassVar[bool] = False
    layer: int
    point: str
    channels: list[int] | None
    replace_with: str
    abs_threshold: float = 100.0
    ratio: float = 1000.0
    reason: str = ""

    def runtime_op(self) -> MassiveRemoval:
        return MassiveRemoval(self.layer, self.point, None if self.channels is None else tuple(self.channels),
                              self.replace_with, self.abs_threshold, self.ratio)


@dataclass
class FlattenGamma:
    """Paper §4.2/4.4: set the γ entries that make channel outliers to the γ mean (or zero)."""
    kind: ClassVar[str] = "flatten_gamma"
    exact: ClassVar[bool] = False
    foldable: ClassVar[bool] = True
    layer: int
    site: str  # attn | mlp
    channels: list[int]
    replace_with: str
    reason: str = ""


@dataclass
class FlattenRows:
    """Paper §4.3 / Table 3: set rows (output channels) of a projection, e.g. OTCs, to their mean."""
    kind: ClassVar[str] = "flatten_rows"
    exact: ClassVar[bool] = False
    foldable: ClassVar[bool] = True
    layer: int
    point: str  # the point the projection computes: x3/x4/x5, y3/y4, y7
    rows: list[int]
    reason: str = ""


@dataclass
class MigrateNorm:
    """Exact: γ / s and the reading projections' input columns × s (SmoothQuant at x2 / y2)."""
    kind: ClassVar[str] = "migrate_norm"
    exact: ClassVar[bool] = True
    foldable: ClassVar[bool] = True
    layer: int
    site: str  # attn | mlp
    alpha: float
    scales: list[float]
    reason: str = ""


@dataclass
class MigrateDown:
    """Exact: y6 / s through W_up's rows, W_down's columns × s (the exact counterpart of §3.3)."""
    kind: ClassVar[str] = "migrate_down"
    exact: ClassVar[bool] = True
    foldable: ClassVar[bool] = True
    layer: int
    alpha: float
    scales: list[float]
    reason: str = ""


@dataclass
class Repair:
    """§4.4: LoRA adapters distilled against the unmodified model, merged into the weights.
    Not replayable from the plan (it is training); the weights of an export carry it."""
    kind: ClassVar[str] = "repair"
    exact: ClassVar[bool] = False
    foldable: ClassVar[bool] = True
    modules: list[str]
    config: dict
    result: dict
    reason: str = ""


Intervention = RemoveMassive | FlattenGamma | FlattenRows | MigrateNorm | MigrateDown | Repair
KINDS: dict[str, type] = {c.kind: c for c in (RemoveMassive, FlattenGamma, FlattenRows, MigrateNorm, MigrateDown,
                                              Repair)}


@dataclass
class SmoothingPlan:
    model_type: str
    interventions: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    FORMAT: ClassVar[int] = 1

    def runtime(self) -> list[MassiveRemoval]:
        return [i.runtime_op() for i in self.interventions if not i.foldable]

    def kinds(self) -> list[str]:
        return list(dict.fromkeys(i.kind for i in self.interventions))

    def subset(self, kinds: set[str]) -> "SmoothingPlan":
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
    def from_dict(cls, d: dict) -> "SmoothingPlan":
        if d.get("format") != cls.FORMAT:
            raise SmoothQuantError(f"smoothing plan format {d.get('format')!r} is not supported (expected {cls.FORMAT}).")
        items = []
        for raw in d.get("interventions", []):
            kind = raw.get("kind")
            if kind not in KINDS:
                raise SmoothQuantError(f"unknown intervention kind '{kind}' in smoothing plan; known: {', '.join(KINDS)}")
            c = KINDS[kind]
            items.append(c(**{f.name: raw[f.name] for f in fields(c) if f.name in raw}))
        return cls(d["model_type"], items, list(d.get("notes", [])))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "SmoothingPlan":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SmoothQuantError(f"{path} is not a valid smoothing plan ({e}).") from None
