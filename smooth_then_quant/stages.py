"""What a recipe will do, stage by stage, without loading any weights (`smooth-quant --dry-run`)."""
from __future__ import annotations

from .recipe import Recipe


def describe_stages(recipe: Recipe) -> list[str]:
    """One line per stage the pipeline would run, in order."""
    cal, ev, sm, q = recipe.calibration, recipe.evaluation, recipe.smoothing, recipe.quantization
    lines = [f"load     {recipe.model} ({recipe.load.dtype}, {recipe.load.device}"
             + (", trust_remote_code" if recipe.load.trust_remote_code else "") + ")",
             f"probe    {cal.samples} x {cal.seq_len} calibration windows of '{cal.data}' (seed {cal.seed})",
             f"detect   MA (|a| > {recipe.analysis.massive.abs_threshold:g} and > {recipe.analysis.massive.ratio:g} x "
             f"median), CO (m = {recipe.analysis.channel.m:g}, beta = {recipe.analysis.channel.beta:.3g}), "
             "gamma outliers, OTC"]
    smooth_on, quant_on = sm.enabled and recipe.stage != "analyze", q.enabled and recipe.stage == "full"
    if smooth_on:
        lines.append("smooth   " + ", ".join(_smoothing_parts(sm)))
    if quant_on:
        states = [s for s in q.compare if s != "smoothed" or sm.enabled]
        lines.append(f"paper    {', '.join(_smoothing_parts(q.paper))}" if "paper" in states else "")
        for name, s in q.schemes.items():
            w, a = s.weights, s.activations
            lines.append(f"quantize {name}: {w.method} int{w.bits} "
                         + ("per-channel" if w.group_size == -1 else f"g{w.group_size}")
                         + (f" act-order {w.act_order}" if w.method == "gptq" and w.act_order != "off" else "")
                         + ("" if a is None else f" + A{a.bits} {a.granularity}")
                         + (f" ({q.gptq_backend})" if w.method == "gptq" else "") + f" on {', '.join(states)}")
    lines.append(f"evaluate perplexity on {', '.join(ev.datasets)} (seq_len {ev.seq_len}"
                 + (f", at most {ev.max_windows} windows" if ev.max_windows else "") + ")")
    x = recipe.export
    lines.append(f"export   {recipe.output_dir}/ (report.md, report.json, plots"
                 + (", smoothing_plan.json" if smooth_on else "")
                 + (", model/ (smoothed float)" if smooth_on and x.model else "")
                 + (f", quantized/ ({x.quantized.scheme} on {x.quantized.state}, {x.quantized.format} format)"
                    if quant_on and x.quantized else "") + ")")
    if x.push_to_hub:
        lines.append(f"push     {'quantized/' if quant_on and x.quantized else 'model/'} to the Hub repo "
                     f"{x.push_to_hub} ({'private' if x.private else 'public'})")
    if recipe.stage != "full":
        lines.append(f"(stage: {recipe.stage}: later stages are skipped)")
    return [ln for ln in lines if ln]


def _smoothing_parts(sm) -> list[str]:
    parts = []
    if sm.remove_massive.enabled:
        parts.append(f"remove TMAs at {sm.remove_massive.at} -> {sm.remove_massive.replace_with} (lossy)")
    if sm.flatten_gamma.enabled:
        parts.append(f"flatten gamma outliers -> {sm.flatten_gamma.replace_with} (lossy)")
    if sm.flatten_otc.enabled:
        parts.append("flatten OTC rows (lossy)")
    if sm.migrate.norm != "none":
        parts.append(f"migrate at the norms ({sm.migrate.norm}, alpha {sm.migrate.alpha}, exact)")
    if sm.migrate.down:
        parts.append(f"migrate at y6 (alpha {sm.migrate.alpha}, exact)")
    if sm.repair.enabled:
        parts.append(f"LoRA repair of {'/'.join(sm.repair.roles)} ({sm.repair.steps} steps)")
    return parts or ["nothing (every intervention is off)"]
