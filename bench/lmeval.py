"""Benchmark: lm-eval accuracy beside perplexity on the quickstart table (the local task, offline).

    .venv/bin/python bench/lmeval.py                    # ~15 min on 2 cores -> bench/results/lmeval.md
    .venv/bin/python bench/lmeval.py --limit 400 --tasks offline_cloze

Runs `smooth-quant quickstart --set evaluation.tasks=[...]` in its own process and writes every cell's
perplexity and accuracy, with lm-eval's harness (HFLM on the model object each cell measured).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["offline_cloze"])
    ap.add_argument("--limit", type=int, default=400, help="documents per task")
    ap.add_argument("--out", default=str(HERE / "results" / "lmeval.md"))
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="stq-lmeval-")) / "run"
    sets = [f"evaluation.tasks=[{','.join(args.tasks)}]", f"evaluation.task_limit={args.limit}",
            f"output_dir={out}", "export.model=false"]
    cmd = [sys.executable, "-m", "smooth_then_quant", "quickstart", "-q", *[a for s in sets for a in ("--set", s)]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"the run failed: {proc.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    q = report["quantization"]
    lines = ["# lm-eval accuracy beside perplexity: the quickstart table", "",
             f"Command: `python bench/lmeval.py --limit {args.limit} --tasks {' '.join(args.tasks)}` (runs "
             f"`smooth-quant quickstart --set {' --set '.join(sets[:2])}`); {platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}; "
             f"whole run {wall / 60:.1f} min (quantization stage {report['timing'].get('quantization_seconds')} s).",
             "", "`offline_cloze`: finish a sentence of the offline evaluation text with its true ending among four "
             "of equal length (chance: 25 %); lm-eval's `acc` over "
             f"{args.limit} documents, so one document is {100 / args.limit:.2f} points.", "",
             "| scheme | state | " + " | ".join(f"{d} PPL" for d in q["datasets"]) + " | "
             + " | ".join(f"{t} acc" for t in args.tasks) + " |",
             "|---|---|" + "---|" * (len(q["datasets"]) + len(args.tasks))]
    for r in q["rows"]:
        lines.append(f"| {r['scheme']} | {r['state']} | " + " | ".join(f"{r['ppl'][d]:.4f}" for d in q["datasets"])
                     + " | " + " | ".join(f"{100 * r['accuracy'][t]:.2f} %" for t in args.tasks) + " |")
    lines += ["", "Schemes: " + "; ".join(f"{s['name']}: {s['description']}" for s in q["schemes"]) + ".", ""]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
