"""Benchmark: the shipped recipes as users run them, end to end on 2 CPU cores.

    .venv/bin/python bench/recipes.py                                   # quickstart, w4a16, w8a8, w4a8
    .venv/bin/python bench/recipes.py --recipes quickstart

Each recipe runs in its own process (`python -m smooth_then_quant RECIPE -q`), one after the other,
into a temporary folder. Recorded: wall time, peak RSS (VmHWM of that process), the stage times from
report.json, and the headline: for every scheme, the unsmoothed / paper / smoothed perplexity and the
degradation each smoothing removes. The quantized export is reloaded with smooth_then_quant.load_model
and scored on the same windows: the table's perplexity must come back. Writes
bench/results/recipes.md. Recipes are meant to finish in minutes; the quickstart's target is 10.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUICKSTART_MINUTES = 10
RUN = """
import sys
from smooth_then_quant.cli import main
code = main([sys.argv[1], "-q", "--set", "output_dir=" + sys.argv[2]])
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("VMHWM_KB", int(hwm.split()[1]))
sys.exit(code)
"""
RELOAD = """
import json, sys
from smooth_then_quant.evaluate import evaluation_windows, perplexity
from smooth_then_quant.load import load_model
out = sys.argv[1]
report = json.load(open(out + "/report.json"))
ev = report["recipe"]["evaluation"]
loaded = load_model(out + "/quantized")
ids, _ = evaluation_windows(loaded.tokenizer, ev["datasets"][0], ev["seq_len"], ev["max_windows"])
print("PARAMS", sum(p.numel() for p in loaded.model.parameters()))
print("RELOADED", perplexity(loaded.model, ids, 1, False))
"""


def run_one(name: str, tmp: Path) -> dict:
    out = tmp / name
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN, str(ROOT / "recipes" / f"{name}.yaml"), str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    hwm = int(proc.stdout.split("VMHWM_KB")[1].split()[0]) * 1024
    report = json.loads((out / "report.json").read_text())
    res = {"name": name, "wall": wall, "rss": hwm, "report": report}
    if (out / "quantized").is_dir():
        rel = subprocess.run([sys.executable, "-c", RELOAD, str(out)], capture_output=True, text=True)
        res["reloaded"] = float(rel.stdout.split("RELOADED")[1]) if "RELOADED" in rel.stdout else rel.stderr[-500:]
        res["params"] = int(rel.stdout.split("PARAMS")[1].split()[0]) if "PARAMS" in rel.stdout else None
    return res


def exported_row(report: dict) -> dict | None:
    ex = report["recipe"]["export"]["quantized"]
    return next((x for x in report["quantization"]["rows"] if ex and (x["scheme"], x["state"]) ==
                 (ex["scheme"], ex["state"])), None)


def headline(res: dict) -> list[str]:
    q = res["report"]["quantization"]
    d = q["datasets"][0]
    ppl = {(r["scheme"], r["state"]): r for r in q["rows"]}
    lines = []
    for s in [s["name"] for s in q["schemes"]]:
        cells = [f"{ppl[(s, st)]['ppl'][d]:.2f}" for st in ("baseline", "paper", "smoothed") if (s, st) in ppl]
        red = [ppl[(s, st)]["degradation_reduced"] for st in ("paper", "smoothed") if (s, st) in ppl]
        red = [f"{100 * r[d]:+.0f} %" if r and r.get(d) is not None else "–" for r in red]
        lines.append(f"{s}: {' / '.join(cells)} (removed: paper {red[0]}, smoothed {red[1]})")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["quickstart", "w4a16", "w8a8", "w4a8"])
    ap.add_argument("--out", default=str(HERE / "results" / "recipes.md"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="stq-bench-recipes-") as tmp:
        for name in args.recipes:
            print(f"running {name} ...", flush=True)
            results.append(run_one(name, Path(tmp)))
            r = results[-1]
            print(f"  {r['wall'] / 60:.1f} min, {r['rss'] / 2**30:.2f} GiB, reloaded {r.get('reloaded')}", flush=True)
    fp32 = 4 * next((r["params"] for r in results if r.get("params")), 0)  # bytes of the float32 model
    lines = ["# Shipped recipes, end to end on the embedded SmolLM2-135M-Instruct", "",
             f"Command: `python bench/recipes.py --recipes {' '.join(args.recipes)}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}. One recipe at a time, each in its own process; peak RSS is its VmHWM.", "",
             "Perplexity on the offline corpus (seq_len 512) as unsmoothed / paper's smoothing / smoothed; "
             "\"removed\" is the share of the unsmoothed degradation (quantized − FP) a smoothing removes "
             "(negative: it adds degradation). \"Reloaded\" is the exported quantized checkpoint loaded with "
             "`smooth_then_quant.load_model` and scored on the same windows.", "",
             "| recipe | wall time | peak RSS | stage times (s) | perplexity: unsmoothed / paper / smoothed | "
             "exported | reloaded PPL |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rep = r["report"]
        t = rep["timing"]
        stages = ", ".join(f"{k.removesuffix('_seconds')} {v:.0f}" for k, v in t.items())
        ex, row = rep["recipe"]["export"]["quantized"], exported_row(rep)
        d = rep["quantization"]["datasets"][0]
        exported = f"{ex['scheme']} {ex['state']}: {row['ppl'][d]:.6f}" if row else "–"
        reloaded = f"{r['reloaded']:.6f}" if isinstance(r.get("reloaded"), float) else str(r.get("reloaded", "–"))
        ratio = f" ({r['rss'] / fp32:.1f}× the float32 model)" if fp32 else ""
        lines.append(f"| {r['name']} | {r['wall'] / 60:.1f} min | {r['rss'] / 2**30:.2f} GiB{ratio} | {stages} | {'<br>'.join(headline(r))} | "
                     f"{exported} | {reloaded} |")
    qs = next((r for r in results if r["name"] == "quickstart"), None)
    if qs:
        ok = qs["wall"] / 60 <= QUICKSTART_MINUTES
        lines += ["", f"Quickstart target: ≤ {QUICKSTART_MINUTES} min on 2 cores: "
                  f"{'met' if ok else 'MISSED'} ({qs['wall'] / 60:.1f} min)."]
    bad = []
    for r in results:
        row = exported_row(r["report"])
        if row is None:
            continue
        reported = row["ppl"][r["report"]["quantization"]["datasets"][0]]
        if not isinstance(r.get("reloaded"), float) or abs(r["reloaded"] / reported - 1) > 1e-6:
            bad.append(r["name"])
    lines += ["", "Reload reproduces the reported perplexity (relative difference ≤ 1e-6): "
              + ("yes, for every exported checkpoint." if not bad else f"NO for {', '.join(bad)}."), ""]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
