"""What `smooth-quant RECIPE.yaml` runs: load -> probe -> detect -> smooth -> quantize -> evaluate -> export."""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

from . import __version__
from .analyze import AnalysisConfig, analyze
from .detect import ChannelRule, MassiveRule
from .evaluate import EvalConfig, PerplexityCache
from .evaluate.evidence import ppl_change, removed_share, state_evidence
from .errors import SmoothQuantError
from .export import save_quantized, save_smoothed
from .export.hub import push_folder
from .load import calibration_windows, load_model
from .probe import ProbeConfig
from .evaluate.table import FP, degradation_rows
from .quantize import ActQuant, WeightQuant, detach_act_quant_
from .quantize.gptq import GPTQConfig
from .quantize.scheme import Scheme, quantize_, weight_key
from .recipe import Recipe
from .report import atomic_output_dir, check_output_dir, render_analysis, write_json, write_plots
from .report.card import render_model_card
from .report.quantization import plot_quantization, render_quantization
from .report.smoothing import plot_smoothing, render_smoothing
from .smooth import (FlattenGammaConfig, FlattenOTCConfig, MigrateConfig, RemoveMassiveConfig, RepairConfig,
                     SearchTarget, SmoothingConfig, clone_model, plan_smoothing, repair_, smooth_)

log = logging.getLogger(__name__)


# ---- recipe (strings) -> typed configs -----------------------------------------------------
def analysis_config(recipe: Recipe, progress: bool = True) -> AnalysisConfig:
    a = recipe.analysis
    return AnalysisConfig(
        massive=MassiveRule(a.massive.abs_threshold, a.massive.ratio),
        channel=ChannelRule(a.channel.m, a.channel.beta, a.channel.exclude_massive),
        probe=ProbeConfig(batch_size=recipe.calibration.batch_size, top_k=a.top_k, progress=progress),
    )


def smoothing_config(recipe: Recipe, progress: bool = True, section=None) -> SmoothingConfig:
    """From recipe.smoothing, or from another smoothing section (quantization.paper)."""
    s = recipe.smoothing if section is None else section
    rm, mg, t = s.remove_massive, s.migrate, s.migrate.target
    return SmoothingConfig(
        remove_massive=RemoveMassiveConfig(
            rm.enabled, rm.replace_with, {"down_input": "massive_point", "down_output": "mlp_out_point"}[rm.at],
            rm.channels, None if rm.layers is None else tuple(rm.layers)),
        flatten_gamma=FlattenGammaConfig(s.flatten_gamma.enabled, s.flatten_gamma.replace_with),
        flatten_otc=FlattenOTCConfig(s.flatten_otc.enabled),
        migrate=MigrateConfig(
            norm=mg.norm, down=mg.down, alpha=None if mg.alpha == "search" else float(mg.alpha),
            target=SearchTarget(WeightQuant(t.weight_bits, t.group_size), ActQuant(t.act_bits, t.act_granularity)),
            search_samples=mg.search_samples),
        batch_size=recipe.calibration.batch_size, progress=progress)


def repair_config(recipe: Recipe, progress: bool = True, section=None) -> RepairConfig:
    r = (recipe.smoothing if section is None else section).repair
    return RepairConfig(roles=tuple(r.roles), layers=r.layers, rank=r.rank, steps=r.steps, lr=r.lr,
                        batch_size=r.batch_size, seq_len=r.seq_len, penalty=r.penalty, heldout=r.heldout,
                        progress=progress)


def eval_config(recipe: Recipe, progress: bool = True) -> EvalConfig:
    e = recipe.evaluation
    return EvalConfig(e.seq_len, e.max_windows, e.batch_size, progress)


def schemes(recipe: Recipe, progress: bool = True) -> list[Scheme]:
    q, out = recipe.quantization, []
    for name, sec in q.schemes.items():
        w, a = sec.weights, sec.activations
        weights = (GPTQConfig(w.bits, w.group_size, w.symmetric, w.act_order, w.damp, w.true_sequential,
                              batch_size=q.batch_size, backend=q.gptq_backend, progress=progress)
                   if w.method == "gptq"
                   else WeightQuant(w.bits, w.group_size, w.symmetric))
        out.append(Scheme(name, weights, None if a is None else ActQuant(a.bits, a.granularity, a.symmetric)))
    return out


# ---- stages ------------------------------------------------------------------------------------
def run_smoothing(recipe: Recipe, loaded, cal_ids, analysis, progress: bool = True) -> dict:
    """Plan, apply (and repair) on a copy of the model; evidence for each intervention and combined."""
    model, tok = loaded.model, loaded.tokenizer
    t0 = time.perf_counter()
    plan = plan_smoothing(model, analysis, smoothing_config(recipe, progress), cal_ids)
    t_plan = time.perf_counter() - t0
    smoothed = smooth_(clone_model(model), plan)
    timing = {"plan_seconds": round(t_plan, 1)}
    if recipe.smoothing.repair.enabled:
        t1 = time.perf_counter()
        repair_(smoothed, model, cal_ids, plan, repair_config(recipe, progress))
        timing["repair_seconds"] = round(time.perf_counter() - t1, 1)
    ev = recipe.evaluation
    ecfg, acfg = eval_config(recipe, progress), analysis_config(recipe, progress)
    cache = PerplexityCache()
    ids = cal_ids[: ev.evidence_samples]
    states = [state_evidence("baseline", model, tok, ids, ev.datasets, ecfg, cache, acfg)]
    kinds = [k for k in plan.kinds() if k != "repair"]
    if ev.per_intervention and len(plan.kinds()) > 1:
        for kind in kinds:
            twin = smooth_(clone_model(model), plan.subset({kind}))
            states.append(state_evidence(kind, twin, tok, ids, ev.datasets, ecfg, cache, acfg))
            del twin
            gc.collect()
        if "repair" in plan.kinds():
            twin = smooth_(clone_model(model), plan.subset(set(kinds)))
            states.append(state_evidence("combined without repair", twin, tok, ids, ev.datasets, ecfg, cache, acfg))
            del twin
    states.append(state_evidence("combined", smoothed, tok, ids, ev.datasets, ecfg, cache, acfg))
    base = states[0]
    for s in states[1:]:
        s["ppl_change"] = ppl_change(base, s)
        s["removed"] = removed_share(base, s)
    return {"plan": plan, "model": smoothed, "states": states, "timing": timing, "cache": cache,
            "evaluation": {d: cache.windows(tok, d, ecfg)[1] for d in ev.datasets}}


def paper_state(recipe: Recipe, loaded, cal_ids, analysis, progress: bool = True):
    """The model smoothed the paper's way (recipe.quantization.paper), and what that was."""
    sec = recipe.quantization.paper
    plan = plan_smoothing(loaded.model, analysis, smoothing_config(recipe, progress, sec), cal_ids)
    model = smooth_(clone_model(loaded.model), plan)
    if sec.repair.enabled:
        repair_(model, loaded.model, cal_ids, plan, repair_config(recipe, progress, sec))
    what = "; ".join(f"{r['kind']} ({r['count']} edits, {'exact' if r['exact'] else 'lossy'})"
                     for r in plan.summary()) or "empty plan"
    return model, what, plan


def run_quantization(recipe: Recipe, loaded, cal_ids, states: dict, cache: PerplexityCache,
                     progress: bool = True, export_to: Path | None = None) -> dict:
    """{FP, every scheme} x every state (name -> (model, description, plan)) on every evaluation
    dataset. With `export_to`, the cell recipe.export.quantized names is written there."""
    tok, ev, target = loaded.tokenizer, recipe.evaluation, recipe.export.quantized
    ecfg, scs = eval_config(recipe, progress), schemes(recipe, progress)
    by_weights: dict[tuple, list[Scheme]] = {}  # schemes sharing a weight config share one GPTQ run
    for sc in scs:
        by_weights.setdefault(weight_key(sc), []).append(sc)
    ppl, weights = {}, {}
    for state, (model, _, plan) in states.items():
        ppl[(FP, state)] = {d: cache.perplexity(model, tok, d, ecfg, desc=f"FP {state}: {d}") for d in ev.datasets}
        for group in by_weights.values():
            q = clone_model(model)
            log.info("quantizing weights of the %s model: %s", state, group[0].describe())
            rep = quantize_(q, group[0], cal_ids, tokenizer=tok, progress=progress)
            weights[f"{state} / {'+'.join(sc.name for sc in group)}"] = rep["weights"]
            for sc in group:
                if sc.activations is not None:
                    quantize_(q, sc, cal_ids, weights_done=True, progress=progress)
                ppl[(sc.name, state)] = {d: cache.perplexity(q, tok, d, ecfg, state=repr(sc.activations),
                                                             desc=f"{sc.name} {state}: {d}") for d in ev.datasets}
                if export_to is not None and target is not None and (target.scheme, target.state) == (sc.name, state):
                    log.info("writing the %s / %s checkpoint (%s format)", sc.name, state, target.format)
                    save_quantized(q, tok, export_to, plan=plan, format=target.format)
                detach_act_quant_(q)
            del q
            gc.collect()
    names = list(states)
    return {"datasets": list(ev.datasets), "rows": degradation_rows(ppl, [sc.name for sc in scs], names, ev.datasets),
            "schemes": [sc.to_dict() for sc in scs], "states": {k: v[1] for k, v in states.items()},
            **({"export": {"scheme": target.scheme, "state": target.state, "format": target.format}}
               if export_to and target else {}),
            "weights": weights, "evaluation": {d: cache.windows(tok, d, ecfg)[1] for d in ev.datasets}}


def run(recipe: Recipe, progress: bool = True) -> dict:
    """Run the recipe into output_dir (written whole or not at all); returns where things went."""
    out = Path(recipe.output_dir)
    check_output_dir(out, recipe.overwrite)  # fail before minutes of work, not after
    with atomic_output_dir(out, recipe.overwrite) as tmp:
        report = _run_into(recipe, tmp, progress)
    log.info("outputs written to %s", out)
    summary = {"output_dir": str(out), "report": str(out / "report.md"),
               "plots": [str(out / p) for p in report.get("plots", [])],
               **{k: str(out / v) for k, v in report.get("export", {}).items()}}
    if "quantized" in summary:
        summary["quantized_format"] = recipe.export.quantized.format
    if recipe.export.push_to_hub:
        if not report["export"]:
            raise SmoothQuantError("export.push_to_hub is set but nothing was exported (export.model is false or "
                                   "the stage stops before smoothing): nothing to push. The local report is complete.")
        folder = out / report["export"].get("quantized", report["export"].get("model"))
        summary["hub"] = push_folder(folder, recipe.export.push_to_hub, recipe.export.private)
    return summary


def _run_into(recipe: Recipe, tmp: Path, progress: bool) -> dict:
    t0 = time.perf_counter()
    loaded = load_model(recipe.model, dtype=recipe.load.dtype, device=recipe.load.device,
                        trust_remote_code=recipe.load.trust_remote_code, revision=recipe.load.revision)
    t_load = time.perf_counter() - t0
    cal = recipe.calibration
    input_ids, data_prov = calibration_windows(loaded.tokenizer, cal.data, cal.samples, cal.seq_len, cal.seed)
    t1 = time.perf_counter()
    analysis = analyze(loaded.model, input_ids, analysis_config(recipe, progress))
    t_probe = time.perf_counter() - t1
    report = {
        "tool": {"name": "smooth-then-quant", "version": __version__},
        "recipe": recipe.model_dump(mode="json"),
        "model": loaded.provenance,
        "data": data_prov,
        "timing": {"load_seconds": round(t_load, 2), "probe_seconds": round(t_probe, 2)},
        "analysis": analysis.to_dict(),
        "export": {},
    }
    smoothing = None
    if recipe.smoothing.enabled and recipe.stage != "analyze":
        smoothing = run_smoothing(recipe, loaded, input_ids, analysis, progress)
        report["smoothing"] = {"plan": smoothing["plan"].to_dict(), "states": smoothing["states"],
                               "evaluation": smoothing["evaluation"]}
        report["timing"].update(smoothing["timing"])
    target = recipe.export.quantized
    if target and recipe.stage != "full":
        log.warning("stage %s stops before quantization: export.quantized is skipped", recipe.stage)
    if recipe.quantization.enabled and recipe.stage == "full":
        t2 = time.perf_counter()
        states = {"baseline": (loaded.model, "the model as loaded", None)}
        if "paper" in recipe.quantization.compare:
            states["paper"] = paper_state(recipe, loaded, input_ids, analysis, progress)
        if "smoothed" in recipe.quantization.compare:
            if smoothing:
                states["smoothed"] = (smoothing["model"], "the recipe's smoothing: " + "; ".join(
                    r["kind"] for r in smoothing["plan"].summary()), smoothing["plan"])
            else:
                log.warning("quantization.compare lists 'smoothed' but smoothing.enabled is false: row skipped")
        cache = smoothing["cache"] if smoothing else PerplexityCache()
        report["quantization"] = run_quantization(recipe, loaded, input_ids, states, cache, progress,
                                                  export_to=tmp / "quantized" if target else None)
        report["timing"]["quantization_seconds"] = round(time.perf_counter() - t2, 1)
        if target:
            report["export"]["quantized"] = "quantized/"
    report["plots"] = write_plots(analysis, tmp) if recipe.analysis.plots else []
    report["massive_activations"] = report["analysis"]["massive_activations"]
    for key in ("channel_outliers", "gamma_outliers", "otc"):
        report[key] = report["analysis"][key]
    md = render_analysis(report)
    if smoothing:
        if recipe.analysis.plots:
            report["plots"].append(plot_smoothing(smoothing["states"], tmp / "smoothing_effect.png").name)
        smoothing["plan"].save(tmp / "smoothing_plan.json")
        if recipe.export.model:
            save_smoothed(smoothing["model"], loaded.tokenizer, smoothing["plan"], tmp / "model")
            report["export"]["model"] = "model/"
        md += "\n" + render_smoothing(report)
    if "quantization" in report:
        if recipe.analysis.plots:
            report["plots"].append(plot_quantization(report["quantization"], tmp / "quantization.png").name)
        md += "\n" + render_quantization(report)
    if "model" in report["export"]:
        (tmp / "model" / "README.md").write_text(render_model_card(report, "smoothed"), encoding="utf-8")
    if "quantized" in report["export"]:
        (tmp / "quantized" / "README.md").write_text(
            render_model_card(report, "quantized", target.scheme, target.state), encoding="utf-8")
    for folder in report["export"].values():  # each export carries the report it was measured in
        write_json(tmp / folder / "report.json", report)
    write_json(tmp / "report.json", report)
    (tmp / "report.md").write_text(md, encoding="utf-8")
    return report
