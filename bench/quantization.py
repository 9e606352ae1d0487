"""Benchmark: the full quantization table on the embedded SmolLM2, from a shipped recipe.

    .venv/bin/python bench/quantization.py                                # recipes/quantize.yaml
    .venv/bin/python bench/quantization.py --recipe recipes/quantize.yaml --set quantization.gptq_backend=gptqmodel

Runs the recipe through the same pipeline as `smooth-quant` (32 x 512 calibration windows,
evaluation seq_len 512 for speed, every offline evaluation window) and writes
bench/results/quantization.md: the {FP, W4A16, W8A8, W4A8-static} x {baseline, paper, smoothed} table,
the stage times, and the issue's quality target: for W4A8 with static per-tensor activations,
a shipped recipe cuts the perplexity degradation (quantized - FP) by at least 40 % against the
unsmoothed baseline. The GPTQ cost against GPTQModel is bench/gptq_backends.py.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from smooth_then_quant.evaluate.table import best_reduction
from smooth_then_quant.pipeline import run
from smooth_then_quant.recipe import load_recipe
from smooth_then_quant.report.quantization import render_quantization

HERE = Path(__file__).resolve().parent
TARGET = 0.40


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(HERE.parent / "recipes" / "quantize.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=str(HERE / "results" / "quantization.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="stq-bench-q-") as tmp:
        recipe = load_recipe(args.recipe, [*args.overrides, f"output_dir={tmp}/run", "overwrite=true",
                                           "export.model=false", "export.quantized=null"])
        t0 = time.perf_counter()
        out = Path(run(recipe)["output_dir"])
        wall = time.perf_counter() - t0
        import json

        report = json.loads((out / "report.json").read_text())
        if (out / "quantization.png").exists():  # the chart beside the committed table
            shutil.copy(out / "quantization.png", Path(args.out).with_suffix(".png"))
    q = report["quantization"]
    lines = [
        "# Quantization table on the embedded SmolLM2-135M-Instruct", "",
        f"Command: `python bench/quantization.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}` "
        f"(recipe `{Path(args.recipe).relative_to(HERE.parent) if Path(args.recipe).is_relative_to(HERE.parent) else args.recipe}`)  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; whole run {wall / 60:.1f} min.  ",
        f"Calibration: {recipe.calibration.samples} x {recipe.calibration.seq_len} offline windows (seed "
        f"{recipe.calibration.seed}). Evaluation: " + "; ".join(
            f"{d}: {p['windows']} windows of {p['seq_len']} tokens ({p['bos']})" for d, p in q["evaluation"].items())
        + ". seq_len 512 instead of the paper's 2048, for speed.", "",
        "SmolLM2's GGUF weights were stored as 4-bit Q4_1 (groups of 32), so they already sit near a 4-bit "
        "grid: these figures compare methods with each other; they are not publishable model-quality numbers.", "",
    ]
    lines += [ln.replace("(quantization.png)", f"({Path(args.out).with_suffix('.png').name})")
              for ln in render_quantization(report).split("\n")[2:]]
    lines += ["## Quality target (issue 4)", ""]
    for d in q["datasets"]:
        best = best_reduction(q["rows"], "W4A8-static", d)
        if best is None:
            lines.append(f"- {d}: no smoothed W4A8-static row with a measurable baseline degradation.")
            continue
        state, red = best
        verdict = "**met**" if red >= TARGET else "**not met**"
        lines.append(f"- {d}: W4A8-static (per-tensor static A8): best degradation cut {100 * red:.1f} % by "
                     f"'{state}' (target ≥ {100 * TARGET:.0f} %): {verdict}.")
    lines += ["", "Stage times (s): " + ", ".join(f"{k.removesuffix('_seconds')} {v}"
                                                 for k, v in report["timing"].items()), ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
