"""What `smooth-quant RECIPE.yaml` runs: one list of stages, walked by the run and by --dry-run.

    load -> analyze (probe, detect) -> smooth -> paper -> quantize -> export -> report  [-> push]

Each stage says when it runs for a recipe, how it describes itself, and what it does (stages.py).
The whole run writes into one temporary folder that becomes `output_dir` only when complete.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import SmoothQuantError
from .io import atomic_output_dir, check_output_dir
from .recipe import Recipe
from .stages import (Run, compared_states, describe_analyze, describe_load, describe_paper, describe_quantize,
                     describe_smooth, exports, push, run_analyze, run_export, run_load, run_paper, run_quantize,
                     run_report, run_smooth)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    runs: Callable[[Recipe], bool]
    describe: Callable[[Recipe], list[str]]
    run: Callable[[Run], None]


def _smooths(r: Recipe) -> bool:
    return r.smoothing.enabled and r.stage != "analyze"


def _quantizes(r: Recipe) -> bool:
    return r.quantization.enabled and r.stage == "full"


def _exports(r: Recipe) -> bool:
    return bool(exports(r, _ran(r)))


def _ran(r: Recipe) -> set[str]:
    return ({"smooth"} if _smooths(r) else set()) | ({"quantize"} if _quantizes(r) else set())


def _describe_export(r: Recipe) -> list[str]:
    return ["export   " + ", ".join(exports(r, _ran(r)).values())]


def _describe_report(r: Recipe) -> list[str]:
    return [f"report   {r.output_dir}/ (report.md, report.json" + (", plots" if r.analysis.plots else "")
            + (", smoothing_plan.json" if _smooths(r) else "") + ")"]


STAGES: tuple[Stage, ...] = (
    Stage("load", lambda r: True, describe_load, run_load),
    Stage("analyze", lambda r: True, describe_analyze, run_analyze),
    Stage("smooth", _smooths, describe_smooth, run_smooth),
    Stage("paper", lambda r: _quantizes(r) and "paper" in compared_states(r), describe_paper, run_paper),
    Stage("quantize", _quantizes, describe_quantize, run_quantize),
    Stage("export", _exports, _describe_export, run_export),
    Stage("report", lambda r: True, _describe_report, run_report),
)


def stages(recipe: Recipe) -> list[Stage]:
    """The stages `recipe` runs, in order (the run and --dry-run both walk this)."""
    return [s for s in STAGES if s.runs(recipe)]


def describe_stages(recipe: Recipe) -> list[str]:
    """What --dry-run prints: one or more lines per stage the run would run, in order."""
    lines = [line for s in stages(recipe) for line in s.describe(recipe)]
    x = recipe.export
    if x.push_to_hub:
        lines.append(f"push     {'quantized/' if 'quantized' in exports(recipe, _ran(recipe)) else 'model/'} to the "
                     f"Hub repo {x.push_to_hub} ({'private' if x.private else 'public'})")
    if recipe.stage != "full":
        lines.append(f"(stage: {recipe.stage}: later stages are skipped)")
    return lines


def run(recipe: Recipe) -> dict:
    """Run the recipe into output_dir (written whole or not at all); returns where things went."""
    out = Path(recipe.output_dir)
    check_output_dir(out, recipe.overwrite)  # fail before minutes of work, not after
    if recipe.export.push_to_hub and not exports(recipe, _ran(recipe)):
        raise SmoothQuantError("export.push_to_hub is set but nothing would be exported (export.model is false, or the "
                               "stage stops before smoothing): nothing to push.")
    if recipe.export.quantized and not _quantizes(recipe):
        log.warning("stage %s stops before quantization: export.quantized is skipped", recipe.stage)
    todo = stages(recipe)
    with atomic_output_dir(out, recipe.overwrite) as tmp:
        state = Run(recipe, tmp)
        state.report["stages"] = [s.name for s in todo]
        try:
            for stage in todo:
                log.debug("stage %s", stage.name)
                stage.run(state)
        finally:  # the streamed model's scratch (in the partial folder unless load.offload_dir) goes first
            if state.loaded is not None and state.loaded.scratch is not None:
                state.loaded.scratch.cleanup()
    log.info("outputs written to %s", out)
    summary = {"output_dir": str(out), "report": str(out / "report.md"), "stages": [s.name for s in todo],
               "plots": [str(out / p) for p in state.plots], **{k: str(out / v) for k, v in state.exported.items()}}
    if "quantized" in summary:
        summary["quantized_format"] = recipe.export.quantized.format
    if recipe.export.push_to_hub:
        summary["hub"] = push(recipe, out, state.exported)
    return summary
