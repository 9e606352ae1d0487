"""The intervention registry, and the smoothing config composed from it.

An intervention is one module (smooth/interventions/) that registers an `Intervention`:

    name      its section under `smoothing:` in a recipe (and SmoothingConfig's attribute)
    config    that section's schema (a Config; `active(config)` says whether it runs, default `enabled`)
    items     the PlanItem kinds it writes into the plan (apply_ / runtime_op / touched, exact, foldable)
    plan      (PlanContext, config) -> None: adds its items (and notes) to ctx.plan; None for a step
              that is not planned (the repair)
    train     (model, teacher, ids, plan, config) -> item: a step run after the plan is applied (the repair)
    describe  config -> phrases for --dry-run (the report and model card use the items' own docs)
    order     planning order: lossy edits first, exact migrations (measured on the edited model) after

SmoothingConfig's keys are `enabled` plus every registered section; nothing else is written twice.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, create_model, model_validator

from ..schema import Config
from .plan import ITEM_KINDS, PlanItem, register_item

_REGISTRY: dict[str, Intervention] = {}


def _enabled(cfg) -> bool:
    return bool(getattr(cfg, "enabled", False))


@dataclass(frozen=True)
class Intervention:
    name: str
    config: type[Config]
    items: tuple[type[PlanItem], ...]
    plan: Callable[[Any, Config], None] | None
    describe: Callable[[Config], list[str]]
    order: int = 50
    active: Callable[[Config], bool] = _enabled
    train: Callable | None = None


def register_intervention(iv: Intervention) -> Intervention:
    if iv.name in SmoothingConfig.model_fields:
        raise ValueError(f"'{iv.name}' is a SmoothingConfig field, not a free section name")
    for item in iv.items:
        register_item(item)
    _REGISTRY[iv.name] = iv
    _schema_cache.clear()
    return iv


def unregister_intervention(name: str) -> None:
    """Remove a registered intervention and its plan kinds (a plugin's teardown; tests)."""
    iv = _REGISTRY.pop(name)
    for item in iv.items:
        ITEM_KINDS.pop(item.kind, None)
    _schema_cache.clear()


def registered_interventions() -> list[Intervention]:
    """Registered interventions in planning order."""
    return sorted(_REGISTRY.values(), key=lambda iv: iv.order)


def get_intervention(name: str) -> Intervention:
    return _REGISTRY[name]


_schema_cache: dict[tuple, type] = {}


def _sections_schema() -> type:
    key = tuple(_REGISTRY)
    if key not in _schema_cache:
        _schema_cache[key] = create_model(
            "SmoothingSections", __config__=ConfigDict(extra="forbid"), enabled=(bool, True),
            **{iv.name: (iv.config, iv.config()) for iv in registered_interventions()})
    return _schema_cache[key]


class SmoothingConfig(Config):
    """`smoothing:` — `enabled` and one section per registered intervention (smooth/interventions/)."""
    model_config = ConfigDict(extra="allow", frozen=True)
    enabled: bool = True

    @model_validator(mode="wrap")
    @classmethod
    def _registered_sections(cls, data, handler):
        if isinstance(data, dict):
            typed = _sections_schema().model_validate(data)  # errors carry the section's own path
            return handler({k: getattr(typed, k) for k in type(typed).model_fields})
        return handler(data)

    def section(self, name: str) -> Config:
        """The config of intervention `name` (its default when this config predates its registration)."""
        value = (self.__pydantic_extra__ or {}).get(name)
        return value if value is not None else _REGISTRY[name].config()

    def active(self) -> list[Intervention]:
        """The interventions this config runs, in planning order."""
        return [iv for iv in registered_interventions() if iv.active(self.section(iv.name))]

    @classmethod
    def allowed_keys(cls) -> list[str]:
        return ["enabled", *(iv.name for iv in registered_interventions())]

    @classmethod
    def child_type(cls, key: str, value=None):
        return _REGISTRY[key].config if key in _REGISTRY else super().child_type(key, value)
