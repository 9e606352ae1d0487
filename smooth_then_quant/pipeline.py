"""What `smooth-quant RECIPE.yaml` runs: one list of stages, walked by the run and by --dry-run.

    load -> analyze (probe, detect) -> smooth -> paper -> quantize -> export -> report  [-> push]

Each stage says when it runs for a recipe, how it describes itself, and what it does (stages.py).
The whole run writes into one temporary folder that becomes `output_dir` only when complete.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import dist, progress
from .arch import input_widths
from .errors import SmoothQuantError
from .evaluate.lmeval import check_tasks
from .evaluate.nll import split_dataset
from .export import get_format
from .extras import require
from .load.data import HUB_SOURCES, is_hub_dataset
from .io import Scratch
from .load import LoadedModel
from .load.model import IN_MEMORY, model_config, resolve_source
from .output import Interrupted, OutputDir, check_output_path
from .recipe import Recipe
from .results import Run
from .stages import (compared_states, describe_analyze, describe_load, describe_paper, describe_quantize,
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
    return [f"report   {r.output_dir}/ (report.md, report.json" + (", plots" if r.analysis.draws else "")
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


def check(recipe: Recipe, config=None, given_data: bool = False) -> None:
    """What the run would refuse later, refused now (the run and --dry-run both call this). A local model's
    config is read (no weights): its architecture, and what the export format cannot hold for it. `config`: the
    config of a model object the caller holds (oneshot)."""
    for module, extra, feature in optional_needs(recipe):
        require(module, extra, feature)
    if _quantizes(recipe) and recipe.evaluation.tasks:
        check_tasks(recipe.evaluation.tasks, recipe.evaluation.task_path)
    if recipe.export.push_to_hub and not exports(recipe, _ran(recipe)):
        raise SmoothQuantError("export.push_to_hub is set but nothing would be exported (export.model is false, or the "
                               f"stage ({recipe.stage}) stops before smoothing): nothing to push.")
    if dist.launched():
        check_distributed(recipe)
    if recipe.model == IN_MEMORY and config is None:
        raise SmoothQuantError("model: in-memory is a model object handed to oneshot(); in a recipe give a hub id, a "
                               "folder, a .gguf file or default.")
    if recipe.calibration.data == IN_MEMORY and not given_data:
        raise SmoothQuantError("calibration.data: in-memory is data handed to oneshot(dataset=...); in a recipe give "
                               "offline, wikitext2, c4, a .txt/.jsonl file or a Hub dataset id.")
    if config is None:
        config = local_config(recipe)
    if config is None:
        return  # a hub model's config is fetched by the run (no network here)
    q = recipe.export.quantized
    if q is not None and _quantizes(recipe):
        fmt = get_format(q.format)
        why = fmt.refuses_config(recipe.quantization.schemes[q.scheme].to_dict(), config) if fmt.refuses_config else None
        if why:
            raise SmoothQuantError(f"export.quantized.format {q.format} cannot hold scheme '{q.scheme}' {why}.")


def _repairs(recipe: Recipe) -> bool:
    """Whether the run trains the LoRA repair (the recipe's smoothing, or the paper state's)."""
    paper = _quantizes(recipe) and "paper" in compared_states(recipe) and recipe.quantization.paper.repair.enabled
    return bool((recipe.smoothing.repair.enabled and _smooths(recipe)) or paper)


def check_distributed(recipe: Recipe) -> None:
    """Under torchrun: what this version runs on one process only, refused before any process starts work."""
    why = []
    if _quantizes(recipe) and recipe.evaluation.tasks:
        why.append("evaluation.tasks (lm-eval scores the whole model in one process)")
    if _repairs(recipe):
        why.append("the LoRA repair (its training runs in one process)")
    if _quantizes(recipe) and recipe.quantization.gptq_backend == "gptqmodel":
        why.append("quantization.gptq_backend: gptqmodel (GPTQModel runs its own loop)")
    if recipe.resources.distributed == "nccl" and not str(recipe.load.device).startswith("cuda"):
        why.append(f"resources.distributed: nccl with load.device {recipe.load.device} (nccl needs CUDA; use gloo)")
    if why:
        raise SmoothQuantError("under torchrun this run cannot use " + "; ".join(why) + ": run it as one process "
                               "(smooth-quant RECIPE), or turn those off.")
    world, cal = dist.env_world_size(), recipe.calibration
    shares = [("calibration.samples", cal.samples, "calibration.batch_size", cal.batch_size)]
    if _smooths(recipe):  # the evidence probe of every state
        shares.append(("evaluation.evidence_samples", min(recipe.evaluation.evidence_samples, cal.samples),
                       "calibration.batch_size", cal.batch_size))
    if _quantizes(recipe):  # GPTQ's Hessians and the static A8 ranges
        shares.append(("calibration.samples", cal.samples, "quantization.batch_size", recipe.quantization.batch_size))
    for key, n, per, size in shares:
        batches = -(-n // size)
        if batches < world:  # batches go to processes whole (the same numbers at any world size): one each at least
            raise SmoothQuantError(
                f"{key} {n} in batches of {size} ({per}) make {batches} batch(es) for {world} processes; every process "
                f"needs one: set {key} to at least {size * world} (--set {key}={size * world})"
                + (f" or {per} to at most {n // world}" if n >= world else "") + ", or start fewer processes.")


def optional_needs(recipe: Recipe) -> list[tuple[str, str, str]]:
    """(module, extra, feature) for each optional package this recipe needs (a GGUF model: resolve_source)."""
    needs = []
    if recipe.analysis.plots:
        needs.append(("matplotlib", "plots", "analysis.plots: true"))
    if _repairs(recipe):
        needs.append(("peft", "repair", "the LoRA repair (repair.enabled: true)"))
    if _quantizes(recipe) and recipe.quantization.gptq_backend == "gptqmodel":
        needs.append(("gptqmodel", "gptq", "quantization.gptq_backend: gptqmodel (or set it to builtin)"))
    if _quantizes(recipe) and recipe.evaluation.tasks:
        needs.append(("lm_eval", "eval", "evaluation.tasks (lm-eval accuracy)"))
    data = [recipe.calibration.data, *(split_dataset(d)[0] for d in recipe.evaluation.datasets)]
    needs += [("datasets", "data", f"the Hub dataset {d}") for d in dict.fromkeys(data)
              if d in HUB_SOURCES or is_hub_dataset(d)]
    return needs


def local_config(recipe: Recipe):
    """The config of the recipe's model when it is local (read once per file version, no weights); None for a hub id."""
    if resolve_source(recipe.model)[0] == "hub":
        return None
    ld = recipe.load
    return _config(recipe.model, ld.dtype, ld.device, ld.trust_remote_code, ld.revision, _stamp(recipe.model))


@functools.lru_cache(maxsize=8)
def _config(name: str, dtype: str, device: str, trust: bool, revision: str | None, stamp: float):
    return model_config(name, dtype, device, trust, revision)


def _stamp(name: str) -> float:
    """When the model's config last changed (a cached config is read again after)."""
    kind, kw = resolve_source(name)
    p = Path(kw["pretrained_model_name_or_path"]) / kw.get("gguf_file", "config.json")
    return p.stat().st_mtime if p.exists() else 0.0


def group_notes(recipe: Recipe) -> list[str]:
    """For each quantized scheme whose group size does not divide a projection width of this model (config only):
    what that means, as export warns."""
    config = local_config(recipe) if _quantizes(recipe) and recipe.model != IN_MEMORY else None
    if config is None:
        return []
    widths = input_widths(config)
    notes = []
    for name, sc in recipe.quantization.schemes.items():
        g = sc.weights.group_size
        bad = [w for w in widths if g > 0 and w % g]
        if bad:
            fits = [x for x in (128, 64, 32) if all(w % x == 0 for w in widths)]
            notes.append(f"note     {name}: group_size {g} does not divide this model's input width {bad[0]}: a shorter "
                         "last group, which this toolkit and GPTQModel's torch kernel read and vLLM refuses"
                         + (f"; {fits[0]} divides every width" if fits else ""))
    return notes


def dry_run(recipe: Recipe, source: str | Path | None = None) -> list[str]:
    """--dry-run: everything checkable without weights (the model's config, the device, the data files, the output
    folder, what the export format can hold), then the stages the run would run."""
    protect, keep, need = output_guards(recipe, source)
    check_output_path(recipe.output_dir, recipe.overwrite, protect, keep, need)
    return describe_stages(recipe) + group_notes(recipe)


def describe_stages(recipe: Recipe) -> list[str]:
    """What --dry-run prints: one or more lines per stage the run would run, in order (after check())."""
    check(recipe)
    lines = [line for s in stages(recipe) for line in s.describe(recipe)]
    x = recipe.export
    if x.push_to_hub:
        lines.append(f"push     {'quantized/' if 'quantized' in exports(recipe, _ran(recipe)) else 'model/'} to the "
                     f"Hub repo {x.push_to_hub} ({'private' if x.private else 'public'})")
    if recipe.stage != "full":
        lines.append(f"(stage: {recipe.stage}: later stages are skipped)")
    return lines


def _local(spec: str) -> Path | None:
    try:
        p = Path(spec).expanduser()
        return p if p.exists() else None
    except (RuntimeError, OSError, ValueError):
        return None


def output_guards(recipe: Recipe, source: str | Path | None = None) -> tuple[list[Path], list[Path], int]:
    """What output_dir must leave alone -> (protect: the model folder, keep: the recipe's and the data files'
    folders, the bytes the outputs need: about the checkpoint's size per exported model, when it is local)."""
    model = _local(recipe.model)
    protect = [model if model.is_dir() else model.parent] if model is not None else []
    data = [_local(d) for d in [recipe.calibration.data, *(split_dataset(d)[0] for d in recipe.evaluation.datasets)]]
    keep = [d.parent if d.is_file() else d for d in data if d is not None]
    if source is not None:
        keep.append(Path(source).resolve().parent)
    size = 0
    if model is not None:
        files = [model] if model.is_file() else [*model.glob("*.safetensors"), *model.glob("*.gguf")]
        size = sum(f.stat().st_size for f in files)
    return protect, keep, size * len(exports(recipe, _ran(recipe))) + 64 * 2**20


def _run_stages(state: Run, todo: list) -> None:
    """Every stage in order; under torchrun, then a barrier: rank 0 keeps its output only once every rank is done."""
    try:
        for stage in todo:
            log.debug("stage %s", stage.name)
            dist.STAGE[0] = stage.name
            t0 = time.perf_counter()
            stage.run(state)
            state.timing.setdefault("stage_seconds", {})[stage.name] = round(time.perf_counter() - t0, 1)
        dist.barrier()
    except RuntimeError as e:
        if dist.active() and dist.is_peer_failure(e):
            raise SmoothQuantError(dist.stopped_message()) from None
        raise
    finally:  # the streamed model's scratch (in the partial folder unless load.offload_dir) goes first
        if state.loaded is not None and state.loaded.scratch is not None:
            state.loaded.scratch.cleanup()


def _run_rank(recipe: Recipe, todo: list, model, data, tokenizer) -> dict:
    """A rank other than 0: the same stages on its share of the windows, in a private folder removed after."""
    folder = Scratch(recipe.resources.offload_dir, prefix=f"smooth-then-quant-rank{dist.rank()}-")
    try:
        state = Run(recipe, folder.path, given_model=model, given_data=data, given_tokenizer=tokenizer, writes=False)
        _run_stages(state, todo)
    finally:
        folder.cleanup()
    return {"output_dir": str(recipe.output_dir), "rank": dist.rank(), "stages": [s.name for s in todo]}


def run(recipe: Recipe, source: str | Path | None = None, model: LoadedModel | None = None, data=None,
        tokenizer=None) -> dict:
    """Run the recipe into output_dir (written whole or not at all); returns where things went.
    `source`: the recipe file, whose folder output_dir may not replace. `model`: a model the caller holds (its
    recipe.model is in-memory); `data`: calibration data in memory (calibration.data in-memory); `tokenizer`: the
    tokenizer to use with a model the run loads by name (default: the model's own)."""
    protect, keep, need = output_guards(recipe, source)
    held = _local(model.provenance["name"]) if model is not None else None
    protect += [held if held.is_dir() else held.parent] if held is not None else []  # the folder it came from
    target = check_output_path(recipe.output_dir, recipe.overwrite, protect, keep, need)  # before any work
    check(recipe, None if model is None else model.model.config, given_data=data is not None)
    if recipe.export.quantized and not _quantizes(recipe):
        log.warning("stage %s stops before quantization: export.quantized is skipped", recipe.stage)
    todo = stages(recipe)
    dist.init(recipe.load.device, recipe.resources.distributed)  # under torchrun: join its process group
    if not dist.is_main():  # the other ranks compute their share and write nothing, silently (oneshot too)
        progress.set_enabled(False)
        return _run_rank(recipe, todo, model, data, tokenizer)
    with OutputDir(target, recipe.overwrite) as out:
        for line in out.recovered:
            log.warning("%s", line)
        state = Run(recipe, out.tmp, given_model=model, given_data=data, given_tokenizer=tokenizer, output_bytes=need)
        state.report["stages"] = [s.name for s in todo]
        _run_stages(state, todo)
    final = out.final
    if out.kept_beside:
        log.warning("output_dir %s was filled by something else during the run: it was left as it was, and the "
                    "outputs are beside it in %s", target, final)
    else:
        log.info("outputs written to %s", final)
    summary = {"output_dir": str(final), "report": str(final / "report.md"), "stages": [s.name for s in todo],
               "plots": [str(final / p) for p in state.plots], **{k: str(final / v) for k, v in state.exported.items()},
               "kept_beside": str(target) if out.kept_beside else None}
    if "quantized" in summary:
        summary["quantized_format"] = recipe.export.quantized.format
    if recipe.export.push_to_hub:
        try:
            summary["hub"] = push(recipe, final, state.exported)
        except Interrupted as e:
            e.detail = f"the run had completed (outputs in {final}); the push to the Hub was interrupted"
            raise
    return summary
