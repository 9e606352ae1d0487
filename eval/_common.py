"""Shared command line of the ablation scripts: load, calibrate, analyze, write a markdown table."""
from __future__ import annotations

import argparse
import logging
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from smooth_then_quant import AnalysisConfig, ChannelRule, __version__, analyze, calibration_windows, load_model
from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.evaluate import EvalConfig
from smooth_then_quant import progress


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="default", help="default (embedded SmolLM2) | hub id | folder | .gguf")
    p.add_argument("--calibration", default="offline", help="calibration text: offline | wikitext2 | c4 | file")
    p.add_argument("--datasets", nargs="+", default=["offline"], help="evaluation datasets (paper: wikitext2 c4)")
    p.add_argument("--samples", type=int, default=32, help="calibration windows for the analysis")
    p.add_argument("--seq-len", type=int, default=512, help="calibration window length")
    p.add_argument("--eval-seq-len", type=int, default=512, help="evaluation window length (paper: 2048)")
    p.add_argument("--max-windows", type=int, default=32, help="evaluation windows per dataset (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--m", type=float, default=4.0, help="channel-outlier rule: |mean_j - mean| > m·σ")
    p.add_argument("--beta", type=float, default=1 / 3, help="channel-outlier rule: std_j < β (paper: 1/3)")
    p.add_argument("--out", type=Path, required=True, help="markdown file to write")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def setup(args) -> dict:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    cal, data = calibration_windows(loaded.tokenizer, args.calibration, args.samples, args.seq_len, args.seed)
    progress.set_enabled(not args.quiet)
    analysis = analyze(loaded.model, cal, AnalysisConfig(channel=ChannelRule(args.m, args.beta)))
    ecfg = EvalConfig(seq_len=args.eval_seq_len, max_windows=args.max_windows or None,
                      batch_size=4 if args.eval_seq_len <= 512 else 1)
    return {"loaded": loaded, "cal": cal, "data": data, "analysis": analysis, "ecfg": ecfg, "t0": t0}


def fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}" if x < 1e4 else f"{x:.4g}"


def header(title: str, args, ctx, perplexity: bool = True) -> list[str]:
    command = "python " + " ".join(map(shlex.quote, sys.argv))
    m = ctx["loaded"].provenance
    e = ctx["ecfg"]
    return [
        f"# {title}", "",
        f"- model: `{m['name']}` ({m['model_type']}, {m['dtype']}" + (f", sha256 `{m['sha256'][:12]}…`" if m.get("sha256") else "") + ")",
        f"- analysis: {args.samples} calibration windows × {args.seq_len} tokens of `{args.calibration}`, seed {args.seed}; "
        f"channel-outlier rule m = {args.m:g}, β = {args.beta:.3g}",
        *([f"- perplexity: {', '.join(args.datasets)}; non-overlapping windows of {e.seq_len} tokens"
           + (f", first {e.max_windows} windows" if e.max_windows else ", all windows")] if perplexity else []),
        f"- smooth-then-quant {__version__}, torch {torch.__version__}, {platform.machine()} CPU",
        f"- command: `{command}`", "",
    ]


def table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def write(args, lines: list[str], ctx) -> None:
    lines += ["", f"Wall time: {time.perf_counter() - ctx['t0']:.0f} s."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".partial")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


def main(run) -> int:
    try:
        run()
        return 0
    except SmoothQuantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
