"""Benchmark: the quickstart on torch.distributed at world size 1 and 2 (torchrun, gloo, one thread per rank).

    .venv/bin/python bench/distributed.py          # ~30 min on 2 cores -> bench/results/distributed.md

World size 1 is `smooth-quant quickstart` in one process with OMP_NUM_THREADS=1; world size 2 is
`torchrun --standalone --nproc-per-node 2 -m smooth_then_quant quickstart` (torchrun gives each rank one thread).
Each run in its own process(es), one after the other. Reports wall time per stage (report.json timing), payload bytes
each rank sent or received in collectives per stage and per decoder layer, peak RSS per rank (VmHWM), and whether
the perplexity table is the same. The 4- and 8-GPU lines are a projection from the measured split, labelled so.
"""
from __future__ import annotations

import argparse
import datetime
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
STAGES = ["load", "analyze", "smooth", "paper", "quantize", "export", "report"]


def run(world: int, work: Path) -> dict:
    out = work / f"ws{world}"
    # the quickstart's 4 evidence windows are one batch of 4: not shardable over 2 processes (refused up front);
    # 8 at both world sizes
    sets = [f"output_dir={out}", "overwrite=true", "evaluation.evidence_samples=8"]
    args = ["quickstart", "-q", *[a for s in sets for a in ("--set", s)]]
    launch = [sys.executable, "-m", "smooth_then_quant"] if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", "-m",
         "smooth_then_quant"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(launch + args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        return {"error": proc.stderr[-2000:], "wall": wall}
    (work / f"ws{world}.wall").write_text(f"{wall:.1f}\n")  # kept for --reuse
    return load(world, work)


def load(world: int, work: Path) -> dict:
    """A finished run's report and wall time (what --reuse reads: WORK/wsN/report.json and WORK/wsN.wall)."""
    return {"wall": float((work / f"ws{world}.wall").read_text()),
            "report": json.loads((work / f"ws{world}" / "report.json").read_text())}


def speedup(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if a > 0 and b > 0 else "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results" / "distributed.md"))
    ap.add_argument("--reuse", type=Path, help="a WORK folder of an earlier run of this script: its reports, no new run")
    ap.add_argument("--note", default="", help="a sentence added under the command line (how the runs went)")
    args = ap.parse_args()
    work = args.reuse or Path(tempfile.mkdtemp(prefix="stq-dist-"))
    runs = {w: load(w, work) if args.reuse else run(w, work) for w in (1, 2)}
    lines = ["# Data-parallel runs on torch.distributed: the quickstart at world size 1 and 2", "",
             f"_Command: `python bench/distributed.py`; {platform.machine()}, {os.cpu_count()} CPU cores, torch "
             f"{torch.__version__}, {datetime.datetime.now():%Y-%m-%d %H:%M}. World size 1: one process, "
             "OMP_NUM_THREADS=1; world size 2: `torchrun --standalone --nproc-per-node 2 -m smooth_then_quant "
             "quickstart` (gloo), one thread per rank; both with `--set evaluation.evidence_samples=8` (the preset's 4 "
             "evidence windows are one batch, which two processes cannot share). One after the other on the same "
             "machine._", *([args.note] if args.note else []), ""]
    bad = {w: r for w, r in runs.items() if "error" in r}
    if bad:
        lines += [f"- world size {w} failed: `{r['error'][-800:]}`" for w, r in bad.items()]
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print("\n".join(lines))
        return
    r1, r2 = runs[1]["report"], runs[2]["report"]
    s1, s2 = r1["timing"]["stage_seconds"], r2["timing"]["stage_seconds"]
    layers = r1["analysis"]["num_layers"]
    lines += ["## Wall time per stage", "", "| stage | world size 1 | world size 2 | speed-up |", "|---|---|---|---|"]
    for st in [s for s in STAGES if s in s1]:
        lines.append(f"| {st} | {s1[st]:.1f} s | {s2.get(st, float('nan')):.1f} s | {speedup(s1[st], s2.get(st, 0))} |")
    t1, t2 = runs[1]["wall"], runs[2]["wall"]
    lines += [f"| whole process(es) | {t1 / 60:.1f} min | {t2 / 60:.1f} min | {speedup(t1, t2)} |", ""]
    ranks = r2["distributed"]["ranks"]
    lines += ["## Collective traffic and memory per rank (world size 2)", "",
              f"Payload bytes each rank sent or received in collectives (all-reduce, reduce, broadcast, gathers: the "
              f"tensor or pickled object size, not the wire bytes of the algorithm), per stage and per decoder layer "
              f"({layers} layers).", "", "| rank | peak RSS | " + " | ".join(f"{s} (per layer)" for s in STAGES
                                                                         if s in s2) + " |",
              "|---|---|" + "---|" * len([s for s in STAGES if s in s2])]
    for i, rk in enumerate(ranks):
        cells = []
        for st in [s for s in STAGES if s in s2]:
            b = rk["traffic_bytes"].get(st, 0)
            cells.append(f"{b / 2**20:.2f} MiB ({b / layers / 2**10:.1f} KiB)")
        lines.append(f"| {i} | {rk['peak_rss_bytes'] / 2**30:.2f} GiB | " + " | ".join(cells) + " |")
    p1 = r1["distributed"]["ranks"][0]["peak_rss_bytes"]
    lines += ["", f"World size 1 peak RSS: {p1 / 2**30:.2f} GiB.", ""]
    rows1 = {(r["scheme"], r["state"]): r["ppl"] for r in r1["quantization"]["rows"]}
    worst = max(abs(r["ppl"][d] / rows1[(r["scheme"], r["state"])][d] - 1)
                for r in r2["quantization"]["rows"] for d in r["ppl"])
    same_plan = r1["smoothing"]["plan"] == r2["smoothing"]["plan"]
    lines += ["## Same results", "", f"- smoothing plan identical: {'yes' if same_plan else 'NO'}",
              f"- largest relative perplexity difference over the table: {worst:.2e}", "",
              "| scheme | state | world size 1 | world size 2 |", "|---|---|---|---|"]
    for r in r2["quantization"]["rows"]:
        a = rows1[(r["scheme"], r["state"])]["offline"]
        lines.append(f"| {r['scheme']} | {r['state']} | {a:.6f} | {r['ppl']['offline']:.6f} |")
    # projection: T(N) = serial + parallel / N (+ communication); serial and parallel from the two measurements
    par = 2 * max(t1 - t2, 0.0)
    ser = max(t1 - par, 0.0)
    total = sum(sum(rk["traffic_bytes"].values()) for rk in ranks) / len(ranks)
    lines += ["", "## Projected (not measured): 4 and 8 GPUs", "",
              f"From the two runs: T(N) ≈ S + P/N with P = 2·(T1 − T2) = {par / 60:.1f} min and S = T1 − P = "
              f"{ser / 60:.1f} min (imports, tokenization, the GGUF conversion, exports, the per-layer work every rank "
              f"repeats, and the communication at world size 2). Each rank moved {total / 2**20:.0f} MiB in "
              "collectives; that volume does not grow with the number of windows (statistics, Hessians and weights "
              "are per layer), and at NVLink/PCIe bandwidths (≥ 10 GB/s) it is under a second.", "",
              "| world size | projected wall time | projected speed-up |", "|---|---|---|"]
    for n in (1, 2, 4, 8):
        t = ser + par / n
        lines.append(f"| {n} | {t / 60:.1f} min{' (measured)' if n <= 2 else ''} | {t1 / t:.2f}× |")
    lines += ["", "This projection assumes CPU-like per-rank speed and this model's split; on GPUs the per-layer "
              "compute is far smaller, so the serial part (loading, the GGUF conversion, exports) weighs more and "
              "the speed-up is lower. llm-compressor reports 2.9–3.2× on 4 GPUs for its distributed GPTQ."]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
