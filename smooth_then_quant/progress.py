"""Progress bars: one switch for the whole toolkit, like transformers' disable_progress_bar().

    from smooth_then_quant import progress
    progress.set_enabled(False)      # the CLI's -q does this

Stage configs carry no progress flag: whether a person watches is not part of a recipe.
"""
from __future__ import annotations

from tqdm.auto import tqdm

_enabled = True


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def bar(iterable=None, *, show: bool = True, **kwargs) -> tqdm:
    """tqdm, drawn only when progress is enabled and the caller's `show` allows it."""
    return tqdm(iterable, disable=not (_enabled and show), **kwargs)
