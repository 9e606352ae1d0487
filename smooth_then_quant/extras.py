"""Optional dependencies: each feature that needs one imports it here, and a missing one is a one-line error
naming the extra that installs it (`pip install 'smooth-then-quant[plots]'`), never an ImportError traceback.

    plt = require("matplotlib.pyplot", "plots", "plots (analysis.plots: true)")

The extras are declared in setup.cfg; EXTRAS below is the same table, tested against it.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import SmoothQuantError

# extra -> the distributions it installs (setup.cfg's [options.extras_require] says the same; a test checks)
EXTRAS: dict[str, tuple[str, ...]] = {
    "gptq": ("gptqmodel", "optimum"),
    "repair": ("peft",),
    "plots": ("matplotlib",),
    "gguf": ("gguf",),
    "data": ("datasets",),
    "eval": ("lm_eval",),
}


def available(module: str) -> bool:
    """Importable without importing it (a missing parent package counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module` for `feature`, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None) or module
        raise SmoothQuantError(f"{feature} needs the optional package {missing.split('.')[0]}, which is not "
                               f"installed: pip install 'smooth-then-quant[{extra}]'.") from None


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen needed), or the `[plots]` extra's message."""
    matplotlib = require("matplotlib", "plots", "analysis.plots (PNG plots)")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "plots", "analysis.plots (PNG plots)")
