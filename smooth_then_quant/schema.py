"""The one config hierarchy: every stage's typed config is a `Config`, and the recipe is composed of them.

    ActQuant(8, "per_token")                 # the API: positional arguments in field order, or keywords
    Recipe.model_validate(yaml_mapping)      # the recipe: the same classes, nested

A Config is a frozen pydantic model that rejects unknown keys. Every default and bound lives once, on
its field. A bad value raises SmoothQuantError with the message the recipe gives (the key's path, the
value, what is allowed, a did-you-mean for misspelt keys); strings exist only at the YAML boundary.
"""
from __future__ import annotations

import difflib
import reprlib
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import SmoothQuantError

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 4, 4, 2


class Config(BaseModel):
    # NaN and inf are refused for every float key (a NaN ratio or threshold silently disables a comparison)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def __init__(self, *args, **kwargs):
        if args:
            names = list(type(self).model_fields)
            if len(args) > len(names):
                raise SmoothQuantError(f"{type(self).__name__} takes at most {len(names)} positional arguments "
                                       f"({', '.join(names)}); got {len(args)}.")
            for name, value in zip(names, args):
                if name in kwargs:
                    raise SmoothQuantError(f"{type(self).__name__}: '{name}' given twice (positionally and by name).")
                kwargs[name] = value
        try:
            super().__init__(**kwargs)
        except ValidationError as e:
            raise SmoothQuantError(explain(e, type(self).__name__, type(self), kwargs)) from None

    def replace(self, **changes) -> Config:
        """A copy with `changes` applied and validated (dataclasses.replace for configs)."""
        return type(self)(**{**self.model_dump(), **changes})

    # pydantic calls a model's own __init__ when it validates it as a nested field; marked as the base
    # init, nested sections are validated by pydantic-core directly, so a recipe's error keeps its full path
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    # ---- what the error explainer needs to walk a schema (SmoothingConfig's keys are registered) ----
    @classmethod
    def allowed_keys(cls) -> list[str]:
        return list(cls.model_fields)

    @classmethod
    def child_type(cls, key: str, value: Any = None) -> Any:
        """The schema of `key` (`value`: the user's input there, for sections chosen by a registry)."""
        field = cls.model_fields.get(key)
        return None if field is None else field.annotation


# ---- validation errors -> one line a user can act on ----------------------------------------------
def explain(e: ValidationError, source: str, root: type, raw: Any = None) -> str:
    """`raw`: the validated input, so a location inside a registry-dispatched section (a scheme's weights
    of method rtn) lists that section's own keys."""
    merged: dict[tuple, dict] = {}  # a union (e.g. alpha: search | number) reports one error per member
    for err in e.errors():
        loc = _user_loc(root, err["loc"], raw)
        if loc in merged:
            merged[loc]["msg"] += " or " + err["msg"].removeprefix("Input should be ")
        else:
            merged[loc] = {**err, "loc": loc}
    return f"{source}: " + "; ".join(_explain(err, root, raw) for err in merged.values())


def _user_loc(root: type, loc: tuple, raw: Any) -> tuple:
    """The error location without pydantic's union-member tags (`literal['search']`, `constrained-float`,
    `int`...). A tag is dropped only where the schema has a union: a user's key named `int` stays."""
    out, ann, value = [], root, raw
    for part in loc:
        if _is_union(ann) and isinstance(part, str) and _looks_like_tag(part):
            ann = next((a for a in typing.get_args(ann) if _is_config(a)), None)
            continue
        out.append(part)
        ann, value = _child(ann, part, value)
    return tuple(out)


def _looks_like_tag(part: str) -> bool:
    return part.startswith(("literal[", "constrained-", "function-", "lax-or-strict[", "json-or-python[",
                            "tagged-union[", "list[", "dict[", "tuple[", "nullable[")) or \
        part in ("int", "float", "str", "bool", "none", "bytes")


def _is_union(ann) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _child(ann: Any, part: Any, value: Any) -> tuple[Any, Any]:
    """One step down the schema (and the raw input): a section's field, a map's value, a list's item."""
    sub = value.get(part) if isinstance(value, dict) else None
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    if _is_union(ann):
        ann = next((a for a in typing.get_args(ann) if _is_config(a)), None)
    if typing.get_origin(ann) is dict:
        return typing.get_args(ann)[1], sub
    if typing.get_origin(ann) in (list, tuple):
        return typing.get_args(ann)[0] if typing.get_args(ann) else None, None
    if _is_config(ann):
        return ann.child_type(part, sub), sub
    return None, None


def _explain(err: dict, root: type, raw: Any) -> str:
    loc = [short_repr(p)[1:-1] if isinstance(p, str) and not p.isprintable() else str(p)[:80] for p in err["loc"]]
    where = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden" and loc:
        allowed = fields_at(root, list(err["loc"])[:-1], raw)
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        return (f"unknown key '{where}'" + (f" (did you mean '{'.'.join(loc[:-1] + hint)}'?)" if hint else "")
                + f"; allowed keys here: {', '.join(allowed)}")
    if err["type"] == "missing":
        return f"missing required key '{where}'"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a rule across sections (e.g. export.quantized must name a scheme): the message says it all
        return msg
    value = err.get("input")
    if isinstance(value, dict) and err["type"] == "value_error":  # a rule across a section's keys
        return f"'{where}': {msg}"
    shown = "a mapping" if isinstance(value, dict) else short_repr(value)  # bounded: never the full repr
    why = _reason(root, list(err["loc"]), raw) if err["type"] in _BOUNDS else None
    return f"bad value {shown} for '{where}': {msg}" + (f" ({why})" if why else "")


_BOUNDS = ("less_than", "less_than_equal", "greater_than", "greater_than_equal")


def short_repr(value: Any) -> str:
    """A repr of at most ~60 characters, whatever the value (a 5,000-digit int, a YAML alias bomb)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<a {'negative ' if value < 0 else ''}integer of about {int(value.bit_length() * 0.30103)} digits>"
    try:
        return _SHORT.repr(value)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__}>"


def _reason(root: type, loc: list, raw: Any) -> str | None:
    """Why a key has its bounds: the `description` of its Field, when it has one."""
    ann, value = root, raw
    for part in loc[:-1]:
        ann, value = _child(ann, part, value)
    if _is_union(ann):
        ann = next((a for a in typing.get_args(ann) if _is_config(a)), None)
    field = ann.model_fields.get(loc[-1]) if _is_config(ann) and loc else None
    return field.description if field is not None else None


def fields_at(root: type, loc: list, raw: Any = None) -> list[str]:
    """The keys allowed at a location (through sections, optional sections and name -> section maps)."""
    ann, value = root, raw
    for part in loc:
        ann, value = _child(ann, part, value)
        if ann is None:
            return []
    if _is_union(ann):
        ann = next((a for a in typing.get_args(ann) if _is_config(a)), None)
    return ann.allowed_keys() if _is_config(ann) else []


def _is_config(ann) -> bool:
    return isinstance(ann, type) and issubclass(ann, Config)
