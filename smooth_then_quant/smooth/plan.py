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

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..arch import ArchAdapter
from ..errors import SmoothQuantError

ITEM_KINDS: dict[str, type[PlanItem]] = {}


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
    def from_dict(cls, d: dict) -> SmoothingPlan:
        if d.get("format") != cls.FORMAT:
            raise SmoothQuantError(f"smoothing plan format {d.get('format')!r} is not supported (expected {cls.FORMAT}).")
        items = []
        for raw in d.get("interventions", []):
            kind = raw.get("kind")
            if kind not in ITEM_KINDS:
                raise SmoothQuantError(f"unknown intervention kind '{kind}' in smoothing plan; known: "
                                       f"{', '.join(ITEM_KINDS)}")
            c = ITEM_KINDS[kind]
            items.append(c(**{f.name: raw[f.name] for f in fields(c) if f.name in raw}))
        return cls(d["model_type"], items, list(d.get("notes", [])))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> SmoothingPlan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SmoothQuantError(f"{path} is not a valid smoothing plan ({e}).") from None
