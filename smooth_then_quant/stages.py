"""The stages of a recipe run, each a `describe` (what --dry-run prints) and a `run` (what it does).

pipeline.py lists them once; the run and --dry-run walk that one list. Stages share a `Run` (results.py); what
a stage produces is typed (SmoothingResult, QuantizationResult), and report.json is built from it.
"""
from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from pathlib import Path

from .arch import is_streamed
from .errors import SmoothQuantError
from .detect import analyze
from .evaluate import FP, degradation_rows
from .evaluate.lmeval import accuracies
from .evaluate.evidence import ppl_change, removed_share, state_evidence
from .export import PLAN_FILE, save_quantized, save_smoothed
from .export.card import portable
from .export.hub import push_folder
from . import dist
from .io import write_json
from .load import calibration_windows, load_model, size_bytes
from .quantize import Scheme, detach_act_quant_, quantize_
from .quantize.keep import kept_bytes
from .quantize.scheme import weight_key
from .recipe import Recipe
from .results import Compared, QuantizationResult, Run, SmoothingResult
from .report import render_analysis, write_plots
from .report.card import write_model_card
from .report.quantization import plot_quantization, render_quantization
from .report.smoothing import plot_smoothing, render_smoothing
from .smooth import SmoothingConfig, SmoothingPlan, clone_model, plan_smoothing, smooth_
from .version import __version__

log = logging.getLogger(__name__)


def _smoothing_parts(sm: SmoothingConfig) -> list[str]:
    return [p for iv in sm.active() for p in iv.describe(sm.section(iv.name))] or \
        ["nothing (every intervention is off)"]


def _evaluation_line(recipe: Recipe, what: str) -> str:
    ev = recipe.evaluation
    return (f"evaluate {what} perplexity on {', '.join(ev.datasets)} (seq_len {ev.seq_len}"
            + (f", at most {ev.max_windows} windows" if ev.max_windows else "") + ")")


# ---- load ----------------------------------------------------------------------------------------
def describe_load(r: Recipe) -> list[str]:
    return [f"load     {r.model} ({r.load.dtype}, {r.load.device}" + (", trust_remote_code" if r.load.trust_remote_code
                                                                       else "") + ")"]


def whole_model_needed(r: Recipe) -> str | None:
    """Why this recipe needs the model whole in memory (None: every step streams it layer by layer)."""
    if r.stage != "analyze" and r.smoothing.enabled and any(iv.train is not None for iv in r.smoothing.active()):
        return "the repair trains LoRA through the whole model"
    if r.stage == "full" and r.quantization.enabled and r.evaluation.tasks:
        return "lm-eval runs the whole model"
    if r.stage == "full" and r.quantization.enabled and r.quantization.gptq_backend != "builtin" and any(
            sc.method == "gptq" for sc in r.quantization.schemes.values()):
        return f"the {r.quantization.gptq_backend} GPTQ backend quantizes a whole model"
    return None


def check_positions(config, r: Recipe) -> None:
    """A model with learned positions (GPT-2's n_positions) cannot take longer windows: say so before any work."""
    limit = getattr(config, "n_positions", None) if config.model_type == "gpt2" else None
    for key, n in (("calibration.seq_len", r.calibration.seq_len), ("evaluation.seq_len", r.evaluation.seq_len)):
        if limit is not None and n > limit:
            raise SmoothQuantError(f"{key} {n} is longer than this {config.model_type} model's {limit} learned positions; "
                                   f"set {key} to at most {limit}.")


def run_load(run: Run) -> None:
    """The model, streamed one decoder layer at a time unless load.stream is off or a step needs it whole.
    Its scratch (a dequantized GGUF, GPTQ'd layers, spilled hidden states) goes inside the run's partial folder
    unless resources.offload_dir
    says otherwise, and is removed when the run ends, however it ends."""
    r, t0 = run.recipe, time.perf_counter()
    if run.given_model is not None:  # a model the caller holds: used as it is, whole, on its own device
        run.loaded = run.given_model
        check_positions(run.loaded.model.config, r)
        run.timing["load_seconds"] = 0.0
        return
    why = whole_model_needed(r) if r.load.stream else None
    if why:
        log.info("loading the model whole: %s", why)
    run.loaded = load_model(r.model, dtype=r.load.dtype, device=dist.local_device(r.load.device),
                            trust_remote_code=r.load.trust_remote_code,
                            revision=r.load.revision, stream=r.load.stream and why is None,
                            offload_dir=r.resources.offload_dir or str(run.out),
                            max_memory=None if r.resources.max_memory is None else size_bytes(r.resources.max_memory),
                            tokenizer=run.given_tokenizer)
    if why:
        run.loaded.provenance["weights"] = f"loaded whole: {why}"
    check_positions(run.loaded.model.config, r)
    check_scratch(run)
    run.timing["load_seconds"] = round(time.perf_counter() - t0, 2)


def check_scratch(run: Run) -> None:
    """A streamed run keeps one quantized state's layers at a time in its scratch folder (as codes): the room for
    them (and for the outputs, on the same disk) is checked right after loading, before any work, so a disk too
    small fails now and not hours into GPTQ (as the Llama-3.2-3B-shaped benchmark once did)."""
    r, loaded = run.recipe, run.loaded
    if loaded.scratch is None or not is_streamed(loaded.model) or r.stage != "full" or not r.quantization.enabled:
        return
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's ranks on this machine each keep their own
    need = ranks * kept_bytes(loaded.model, max(sc.weights.bits for sc in r.quantization.schemes.values()))
    where = loaded.scratch.path
    if os.stat(where).st_dev == os.stat(run.out).st_dev:
        need += run.output_bytes
    free = shutil.disk_usage(where).free
    if free < need:
        raise SmoothQuantError(f"not enough free space for the run's scratch folder {where.parent}: a quantized "
                               f"state's layers{' and the outputs' if run.output_bytes else ''} need about "
                               f"{need / 2**30:.2f} GiB and it has {free / 2**30:.2f} GiB free; free space there or "
                               "set resources.offload_dir to a folder with room.")


# ---- analyze: probe -> detect --------------------------------------------------------------------
def describe_analyze(r: Recipe) -> list[str]:
    cal, a = r.calibration, r.analysis
    return [f"probe    {cal.samples} x {cal.seq_len} calibration windows of '{cal.data}' (seed {cal.seed}, format "
            f"{cal.format})",
            f"detect   MA (|a| > {a.massive.abs_threshold:g} and > {a.massive.ratio:g} x median), CO (m = "
            f"{a.channel.m:g}, beta = {a.channel.beta:.3g}), gamma outliers, OTC"]


def run_analyze(run: Run) -> None:
    r, loaded = run.recipe, run.loaded
    cal = r.calibration
    source = run.given_data if run.given_data is not None else cal.data
    run.ids, data = calibration_windows(loaded.tokenizer, source, cal.samples, cal.seq_len, cal.seed, cal.format,
                                        split=cal.split, text_column=cal.text_column)
    t0 = time.perf_counter()
    run.analysis = analyze(loaded.model, run.ids, r.analysis, batch_size=cal.batch_size)
    run.timing["probe_seconds"] = round(time.perf_counter() - t0, 2)
    run.report.update({"tool": {"name": "smooth-then-quant", "version": __version__},
                       "recipe": r.model_dump(mode="json"), "model": loaded.provenance, "data": data,
                       "timing": run.timing, "analysis": run.analysis.to_dict()})
    run.plots += write_plots(run.analysis, run.out) if run.draws else []
    report = run.report
    report["plots"] = run.plots
    for key in ("massive_activations", "channel_outliers", "gamma_outliers", "otc"):
        report[key] = report["analysis"][key]
    run.markdown.append(render_analysis(report))


# ---- smooth: plan -> apply (-> repair) -> evidence -----------------------------------------------
def describe_smooth(r: Recipe) -> list[str]:
    return ["smooth   " + ", ".join(_smoothing_parts(r.smoothing)), _evaluation_line(r, "float (evidence)")]


def _smoothed(run: Run, cfg: SmoothingConfig, timing: dict) -> tuple[SmoothingPlan, object]:
    """Plan `cfg` on the loaded model, apply it to a copy, run its trained steps (the repair)."""
    model = run.loaded.model
    t0 = time.perf_counter()
    plan = plan_smoothing(model, run.analysis, cfg, run.ids, batch_size=run.recipe.calibration.batch_size)
    timing["plan_seconds"] = round(time.perf_counter() - t0, 1)
    smoothed = smooth_(clone_model(model), plan)
    for iv in cfg.active():
        if iv.train is not None:
            t1 = time.perf_counter()
            iv.train(smoothed, model, run.ids, plan, cfg.section(iv.name))
            timing[f"{iv.name}_seconds"] = round(time.perf_counter() - t1, 1)
    return plan, smoothed


def _trained_kinds(cfg: SmoothingConfig) -> set[str]:
    """Plan kinds made by a training step: not replayable alone from the plan."""
    return {item.kind for iv in cfg.active() if iv.train is not None for item in iv.items}


def _evidence(run: Run, name: str, model) -> dict:
    """One state's evidence (perplexity, outliers, x6/x7, weights) on the evidence windows."""
    r = run.recipe
    return state_evidence(name, model, run.loaded.tokenizer, run.ids[: r.evaluation.evidence_samples],
                          r.evaluation.datasets, r.evaluation, run.cache, r.analysis, r.calibration.batch_size)


def _render_smoothing(run: Run) -> None:
    """report.json's smoothing section, its plot and its report.md part (replaced when the paper's state joins)."""
    states = run.smoothing.states
    for s in states[1:]:
        s["ppl_change"] = ppl_change(states[0], s)
        s["removed"] = removed_share(states[0], s)
    run.report["smoothing"] = run.smoothing.to_dict()
    if run.draws:
        name = plot_smoothing(states, run.out / "smoothing_effect.png").name
        if name not in run.plots:
            run.plots.append(name)
    text = render_smoothing(run.report)
    if run.smoothing.markdown_at is None:
        run.smoothing.markdown_at = len(run.markdown)
        run.markdown.append(text)
    else:
        run.markdown[run.smoothing.markdown_at] = text


def run_smooth(run: Run) -> None:
    r, tok, model = run.recipe, run.loaded.tokenizer, run.loaded.model
    plan, smoothed = _smoothed(run, r.smoothing, run.timing)
    ev, cache = r.evaluation, run.cache

    def evidence(name, m):
        return _evidence(run, name, m)

    states = [evidence("baseline", model)]
    trained = _trained_kinds(r.smoothing) & set(plan.kinds())
    kinds = [k for k in plan.kinds() if k not in trained]
    if ev.per_intervention and len(plan.kinds()) > 1:
        for kind in kinds:
            twin = smooth_(clone_model(model), plan.subset({kind}))
            states.append(evidence(kind, twin))
            del twin
            gc.collect()
        if trained:
            twin = smooth_(clone_model(model), plan.subset(set(kinds)))
            states.append(evidence("combined without " + "/".join(sorted(trained)), twin))
            del twin
    states.append(evidence("combined", smoothed))
    run.smoothing = SmoothingResult(plan, smoothed, states, {d: cache.windows(tok, d, ev)[1] for d in ev.datasets})
    plan.save(run.out / PLAN_FILE)
    _render_smoothing(run)


# ---- paper: the paper's own smoothing, a compared state of the table -----------------------------
def describe_paper(r: Recipe) -> list[str]:
    return ["paper    " + ", ".join(_smoothing_parts(r.quantization.paper))]


def run_paper(run: Run) -> None:
    plan, model = _smoothed(run, run.recipe.quantization.paper, {})
    what = "; ".join(f"{r['kind']} ({r['count']} edits, {'exact' if r['exact'] else 'lossy'})"
                     for r in plan.summary()) or "empty plan"
    run.compared["paper"] = Compared(model, what, plan)
    if run.smoothing is not None:  # the evidence table gains the paper's state: what its lossy edits do to x6/x7
        run.smoothing.states.append(_evidence(run, "paper (quantization.paper)", model))
        _render_smoothing(run)


# ---- quantize: {FP, every scheme} x every compared state -----------------------------------------
def compared_states(r: Recipe) -> list[str]:
    q = r.quantization
    return [s for s in q.compare if s != "smoothed" or r.smoothing.enabled]


def describe_quantize(r: Recipe) -> list[str]:
    q, states = r.quantization, compared_states(r)
    lines = []
    for name, s in q.schemes.items():
        w, a = s.weights, s.activations
        lines.append(f"quantize {name}: {w.method} int{w.bits} "
                     + ("per-channel" if w.group_size == -1 else f"g{w.group_size}")
                     + (f" act-order {w.act_order}" if getattr(w, "act_order", "off") != "off" else "")
                     + ("" if a is None else f" + A{a.bits} {a.granularity}")
                     + (f" ({q.gptq_backend})" if w.method == "gptq" else "") + f" on {', '.join(states)}")
    if r.evaluation.tasks:
        lines.append(f"evaluate lm-eval {', '.join(r.evaluation.tasks)} accuracy on every cell"
                     + (f" (at most {r.evaluation.task_limit} documents per task)" if r.evaluation.task_limit else ""))
    return [*lines, _evaluation_line(r, "FP and quantized")]


def run_quantize(run: Run) -> None:
    r, tok, cache = run.recipe, run.loaded.tokenizer, run.cache
    q, ev, target = r.quantization, r.evaluation, r.export.quantized
    t0 = time.perf_counter()
    states = {"baseline": Compared(run.loaded.model, "the model as loaded", None)}
    if "paper" in run.compared:
        states["paper"] = run.compared["paper"]
    if "smoothed" in q.compare:
        if run.smoothing:
            states["smoothed"] = Compared(run.smoothing.model, "the recipe's smoothing: " + "; ".join(
                s["kind"] for s in run.smoothing.plan.summary()), run.smoothing.plan)
        else:
            log.warning("quantization.compare lists 'smoothed' but smoothing.enabled is false: row skipped")
    schemes: list[Scheme] = list(q.schemes.values())
    by_weights: dict[tuple, list[Scheme]] = {}  # schemes sharing a weight config share one quantization
    for sc in schemes:
        by_weights.setdefault(weight_key(sc), []).append(sc)
    ppl, acc, weights, written = {}, {}, {}, False

    def score(model, key: tuple[str, str]) -> None:  # lm-eval accuracies of one cell (evaluation.tasks)
        if ev.tasks:
            log.info("lm-eval %s on %s %s", ", ".join(ev.tasks), *key)
            acc[key] = accuracies(model, tok, ev.tasks, run.out / ".lm-eval", limit=ev.task_limit,
                                  num_fewshot=ev.num_fewshot, batch_size=ev.task_batch_size, task_path=ev.task_path)

    for state, c in states.items():
        ppl[(FP, state)] = {d: cache.perplexity(c.model, tok, d, ev, desc=f"FP {state}: {d}") for d in ev.datasets}
        score(c.model, (FP, state))
        for group in by_weights.values():
            qm = clone_model(c.model)
            log.info("quantizing weights of the %s model: %s", state, group[0].describe())
            rep = quantize_(qm, group[0], run.ids, tokenizer=tok, batch_size=q.batch_size, backend=q.gptq_backend)
            weights[f"{state} / {'+'.join(sc.name for sc in group)}"] = rep["weights"]
            for sc in group:
                if sc.activations is not None:
                    quantize_(qm, sc, run.ids, weights_done=True, batch_size=q.batch_size)
                ppl[(sc.name, state)] = {d: cache.perplexity(qm, tok, d, ev, state=repr(sc.activations),
                                                             desc=f"{sc.name} {state}: {d}") for d in ev.datasets}
                score(qm, (sc.name, state))
                if target is not None and (target.scheme, target.state) == (sc.name, state) and run.writes:
                    log.info("writing the %s / %s checkpoint (%s format)", sc.name, state, target.format)
                    save_quantized(qm, tok, run.out / "quantized", c.plan, target.format,
                                   size_bytes(r.export.max_shard_size))
                    written = True
                detach_act_quant_(qm)
            del qm
            gc.collect()
    run.quantization = QuantizationResult(
        list(ev.datasets), degradation_rows(ppl, [sc.name for sc in schemes], list(states), ev.datasets, acc),
        [_scheme_dict(sc, q.gptq_backend) for sc in schemes], {k: v.description for k, v in states.items()}, weights,
        {d: cache.windows(tok, d, ev)[1] for d in ev.datasets},
        {"scheme": target.scheme, "state": target.state, "format": target.format} if target else None, written,
        list(ev.tasks))
    shutil.rmtree(run.out / ".lm-eval", ignore_errors=True)  # the built task data
    run.report["quantization"] = run.quantization.to_dict()
    run.timing["quantization_seconds"] = round(time.perf_counter() - t0, 1)
    if run.draws:
        run.plots.append(plot_quantization(run.report["quantization"], run.out / "quantization.png").name)
    run.markdown.append(render_quantization(run.report))


def _scheme_dict(sc: Scheme, backend: str) -> dict:
    d = sc.to_dict()
    if sc.method == "gptq":
        d["weights"]["backend"] = backend
        if backend != "builtin":
            d["description"] = d["description"].replace(", A", f" ({backend}), A", 1)
    return d


# ---- export: checkpoints and their model cards ---------------------------------------------------
def exports(r: Recipe, stages: set[str]) -> dict[str, str]:
    """What the export stage writes: 'model' (smoothed float) and/or 'quantized' -> its description."""
    x, out = r.export, {}
    if x.model and "smooth" in stages:
        out["model"] = "model/ (smoothed float)"
    if x.quantized and "quantize" in stages:
        out["quantized"] = f"quantized/ ({x.quantized.scheme} on {x.quantized.state}, {x.quantized.format} format)"
    return out


def run_export(run: Run) -> None:
    r, tok = run.recipe, run.loaded.tokenizer
    if not run.writes:
        return
    if r.export.model and run.smoothing:
        save_smoothed(run.smoothing.model, tok, run.smoothing.plan, run.out / "model", size_bytes(r.export.max_shard_size))
        run.exported["model"] = "model/"
    if r.export.quantized and run.quantization and run.quantization.written:
        run.exported["quantized"] = "quantized/"


# ---- report: report.md, report.json (in the output folder and in every export) ---------------------
def run_report(run: Run) -> None:
    report, target = run.report, run.recipe.export.quantized
    report["distributed"] = {"world_size": dist.world_size(), "backend": dist.backend()}
    # every rank's peak memory and collective traffic (bytes per stage), in rank order (a gather: every rank takes part)
    report["distributed"]["ranks"] = dist.gather({"peak_rss_bytes": dist.peak_rss(), "traffic_bytes": dict(dist.TRAFFIC)})
    if not run.writes:
        return
    report["export"] = dict(run.exported)
    lic = run.recipe.export.license
    if "model" in run.exported:
        write_model_card(run.out / "model", report, "smoothed", license=lic)
    if "quantized" in run.exported:
        write_model_card(run.out / "quantized", report, "quantized", target.scheme, target.state, license=lic)
    for folder in run.exported.values():  # each export carries the report it was measured in, with no local path
        write_json(run.out / folder / "report.json", portable(report))
    write_json(run.out / "report.json", report)
    (run.out / "report.md").write_text("\n".join(run.markdown), encoding="utf-8")


# ---- push: after the output folder is complete ---------------------------------------------------
def push(recipe: Recipe, out: Path, exported: dict[str, str]) -> str:
    folder = out / exported.get("quantized", exported.get("model"))
    return push_folder(folder, recipe.export.push_to_hub, recipe.export.private)
