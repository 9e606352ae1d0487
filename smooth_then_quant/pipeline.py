"""What `smooth-quant RECIPE.yaml` runs: load -> probe -> detect -> report."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from . import __version__
from .analyze import AnalysisConfig, analyze
from .detect import ChannelRule, MassiveRule
from .load import calibration_windows, load_model
from .probe import ProbeConfig
from .recipe import Recipe
from .report import atomic_output_dir, check_output_dir, render_analysis, write_json, write_plots

log = logging.getLogger(__name__)


def analysis_config(recipe: Recipe, progress: bool = True) -> AnalysisConfig:
    a = recipe.analysis
    return AnalysisConfig(
        massive=MassiveRule(a.massive.abs_threshold, a.massive.ratio),
        channel=ChannelRule(a.channel.m, a.channel.beta, a.channel.exclude_massive),
        probe=ProbeConfig(batch_size=recipe.calibration.batch_size, top_k=a.top_k, progress=progress),
    )


def run(recipe: Recipe, progress: bool = True) -> Path:
    """Run the recipe; returns the output folder."""
    out = Path(recipe.output_dir)
    check_output_dir(out, recipe.overwrite)  # fail before minutes of work, not after
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
    }
    with atomic_output_dir(out, recipe.overwrite) as tmp:
        report["plots"] = write_plots(analysis, tmp) if recipe.analysis.plots else []
        report["massive_activations"] = report["analysis"]["massive_activations"]
        for key in ("channel_outliers", "gamma_outliers", "otc"):
            report[key] = report["analysis"][key]
        write_json(tmp / "report.json", report)
        (tmp / "report.md").write_text(render_analysis(report), encoding="utf-8")
    log.info("analysis written to %s", out)
    return out
