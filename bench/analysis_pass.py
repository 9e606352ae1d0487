"""Benchmark: the analysis pass against plain forward passes over the same batches, same run.

    .venv/bin/python bench/analysis_pass.py            # SmolLM2 (embedded), offline corpus, 32 x 512
    .venv/bin/python bench/analysis_pass.py --samples 8 --seq-len 256

Times the probe + detectors (what `smooth-quant recipes/analyze.yaml` runs after loading) and the
model's decoder body (model.base_model, no LM head: the probe runs the same body) on identical
batches, alternating plain / analysis / plain so drift on a shared machine hits both. Peak RSS is
the whole process's high-water mark (ru_maxrss), model loading included. Writes a markdown table.
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import psutil
import torch

from smooth_then_quant import AnalysisConfig, analyze, calibration_windows, load_model


def plain_pass(model, ids, batch_size):
    with torch.inference_mode():
        for s in range(0, ids.shape[0], batch_size):
            model.base_model(input_ids=ids[s: s + batch_size], use_cache=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "analysis_pass.md"))
    args = ap.parse_args()

    loaded = load_model(args.model)
    model = loaded.model
    ids, _ = calibration_windows(loaded.tokenizer, "offline", args.samples, args.seq_len, seed=0)
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    rss_loaded = psutil.Process().memory_info().rss
    peak_loading = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    plain_pass(model, ids[: args.batch_size], args.batch_size)  # warm-up

    times = {"plain": [], "analysis": [], "no-attention": []}
    configs = {"analysis": AnalysisConfig(), "no-attention": AnalysisConfig(attention=False)}
    for step in ("plain", "analysis", "no-attention", "plain", "analysis", "no-attention", "plain"):
        t = time.perf_counter()
        if step == "plain":
            plain_pass(model, ids, args.batch_size)
        else:
            result = analyze(model, ids, configs[step], batch_size=args.batch_size)
            if step == "analysis":
                analysis = result
        times[step].append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def mean(xs):
        return sum(xs) / len(xs)
    plain, ana, bare = mean(times["plain"]), mean(times["analysis"]), mean(times["no-attention"])
    n_ma = len(analysis.massive)
    att = analysis.result.attention
    att_bytes = sum(a.mean_share.numel() * 8 + a.entropy.numel() * 8 + a.score_max.numel() * 8 for a in att.values())
    sinks = sum(len(a.sinks) for a in att.values())
    rows = [
        ("plain forward (decoder body), mean of 3", f"{plain:.1f} s", ""),
        ("analysis pass with the attention taps x6/x7 (probe + detectors), mean of 2", f"{ana:.1f} s", ""),
        ("analysis pass without them (analysis.attention: false), mean of 2", f"{bare:.1f} s", ""),
        ("**analysis / plain**", f"**{ana / plain:.2f}**", "target ≤ 2 (with the attention taps)"),
        ("analysis without the attention taps / plain", f"{bare / plain:.2f}", "target ≤ 1.5 (before x6/x7)"),
        ("the attention taps' share of the analysis", f"{(ana - bare) / ana:.0%}", ""),
        ("attention statistics kept (all layers; per head: one float64 per key position, no [T, T])",
         f"{att_bytes / 2**10:.0f} KiB", "independent of the number of windows"),
        ("attention sink records (window, head, key above the floor)", str(sinks),
         "grows with the windows, capped at max_records per layer"),
        ("float32 model size", f"{model_bytes / 2**30:.2f} GiB", ""),
        ("RSS after loading", f"{rss_loaded / 2**30:.2f} GiB", ""),
        ("peak RSS while loading (GGUF dequantization)", f"{peak_loading / 2**30:.2f} GiB", ""),
        ("**peak RSS (whole process)**", f"**{peak / 2**30:.2f} GiB = {peak / model_bytes:.2f}× model**", "target ≤ 2×"),
        ("massive activations found", str(n_ma), ""),
    ]
    text = "\n".join([
        "# Analysis pass: cost against a plain forward pass",
        "",
        f"Command: `.venv/bin/python bench/analysis_pass.py --samples {args.samples} --seq-len {args.seq_len}`",
        "",
        f"Model `{args.model}` ({loaded.provenance.get('file', args.model)}), offline corpus, {args.samples} × "
        f"{args.seq_len} tokens, batch {args.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, Python {sys.version.split()[0]}.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "The whole-process peak includes Python, torch and transformers (about 0.4 GiB) and the GGUF",
        "dequantization at load time; the passes themselves raise it by the difference of the two peak rows.",
        "",
        f"Individual runs (s): plain {', '.join(f'{t:.1f}' for t in times['plain'])}; "
        f"analysis {', '.join(f'{t:.1f}' for t in times['analysis'])}; "
        f"without the attention taps {', '.join(f'{t:.1f}' for t in times['no-attention'])}. Sink records are the "
        "(window, head, key) above the sink floor (bounded by max_records; every window adds at most a few per head).",
        "",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
