"""Benchmark: our GPTQ step against calling GPTQModel directly, same model, data and config.

    .venv/bin/python bench/gptq_backends.py                       # W4 g128 and g64, act-order off
    .venv/bin/python bench/gptq_backends.py --configs 128:off 128:desc 64:group_aware

The embedded SmolLM2 is written once as a float32 safetensors folder; both tools load it from
there. Each run is a fresh subprocess (so peak RSS is its own): load, quantize (timed), read the
peak RSS (ru_maxrss), then evaluate perplexity on the offline text (GPTQModel: its checkpoint
saved and reloaded with the torch kernel, since its model cannot run right after quantize()).
Same 32 x 512 calibration windows (seed 0), same W4 symmetric config, damping 0.05,
true-sequential, same calibration batch; every pair is repeated for each batch size in --batches
(the batch only changes float summation order: the spread shows GPTQ's sensitivity to rounding). Targets (issue 4): our time / GPTQModel's <= 1.0, our peak RSS
<= 2x the float32 model, our perplexity within 2 % of GPTQModel's (means over the batch sizes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def rss_gb() -> float:
    """Peak resident memory of this process (VmHWM). Not ru_maxrss: Linux carries that over from
    the parent across fork + exec, so a worker would inherit the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2  # KiB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def worker(args) -> dict:
    from smooth_then_quant.evaluate import perplexity

    data = torch.load(Path(args.work) / "data.pt")
    cal, ev = data["cal"], data["ev"]
    folder = str(Path(args.work) / "float")
    g, order = args.group_size, args.act_order
    t0 = time.perf_counter()
    if args.tool == "gptqmodel":
        from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

        qcfg = QuantizeConfig(bits=4, group_size=g, sym=True, desc_act=order == "desc",
                              act_group_aware=order == "group_aware", damp_percent=0.05, true_sequential=True)
        qmodel = GPTQModel.load(folder, qcfg, device="cpu")
        t_load = time.perf_counter() - t0
        t1 = time.perf_counter()
        qmodel.quantize([{"input_ids": r[None], "attention_mask": torch.ones(1, r.numel(), dtype=torch.long)}
                         for r in cal], batch_size=args.batch_size)
        t_q = time.perf_counter() - t1
        peak = rss_gb()
        out = Path(args.work) / f"gptqmodel-{g}-{order}"
        qmodel.save(str(out))
        del qmodel
        model = GPTQModel.load(str(out), backend=BACKEND.TORCH, device="cpu").model
    else:
        from smooth_then_quant import load_model
        from smooth_then_quant.quantize.gptq import GPTQWeights, gptq_

        model = load_model(folder).model
        t_load = time.perf_counter() - t0
        t1 = time.perf_counter()
        gptq_(model, cal, GPTQWeights(bits=4, group_size=g, act_order=order, damp=0.05, true_sequential=True),
              batch_size=args.batch_size)
        t_q = time.perf_counter() - t1
        peak = rss_gb()
    ppl = perplexity(model, ev, 4, False)
    return {"tool": args.tool, "group_size": g, "act_order": order,
            "batch": args.batch_size, "load_s": round(t_load, 1),
            "quantize_s": round(t_q, 1), "peak_rss_gb": round(peak, 3), "ppl": round(ppl, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["128:off", "64:off", "128:desc"], help="group_size:act_order")
    ap.add_argument("--out", default=str(HERE / "results" / "gptq_backends.md"))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="calibration batch sizes (both tools; "
                    "put 1 first: the memory column reads the smallest)")
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["gptqmodel", "builtin"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--group-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--act-order", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.tool = args.worker
        print(json.dumps(worker(args)))
        return

    from smooth_then_quant import calibration_windows, load_model
    from smooth_then_quant.evaluate import evaluation_windows, perplexity

    env = dict(os.environ, GPTQMODEL_CPU_WORKERS=os.environ.get("GPTQMODEL_CPU_WORKERS", "2"))
    with tempfile.TemporaryDirectory(prefix="stq-gptq-bench-") as work:
        env.setdefault("HF_HOME", str(Path(work) / "hf"))
        loaded = load_model("default")
        loaded.model.save_pretrained(Path(work) / "float", safe_serialization=True)
        loaded.tokenizer.save_pretrained(Path(work) / "float")
        cal, _ = calibration_windows(loaded.tokenizer, "offline", 32, 512, seed=0)
        ev, prot = evaluation_windows(loaded.tokenizer, "offline", 512)
        fp_ppl = perplexity(loaded.model, ev, 4, False)
        size_gb = sum(p.numel() * 4 for p in loaded.model.parameters()) / 1024**3
        del loaded
        torch.save({"cal": cal, "ev": ev}, Path(work) / "data.pt")
        rows = []
        for spec in args.configs:
            g, order = spec.split(":")
            for batch in args.batches:
                for tool in ("gptqmodel", "builtin"):
                    cmd = [sys.executable, __file__, "--worker", tool, "--work", work, "--group-size", g,
                           "--act-order", order, "--batch-size", str(batch)]
                    print("running", tool, spec, "batch", batch, flush=True)
                    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if res.returncode:
                        sys.exit(f"{tool} {spec} failed:\n{res.stderr[-3000:]}")
                    rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                    print(rows[-1], flush=True)
    write(args, rows, fp_ppl, size_gb, prot)


def _tool(r: dict) -> str:
    return "**smooth-then-quant (built-in)**" if r["tool"] == "builtin" else "GPTQModel 7.7.0"


def write(args, rows, fp_ppl, size_gb, prot) -> None:
    cmd = "python bench/gptq_backends.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# GPTQ step: smooth-then-quant's built-in GPTQ vs GPTQModel called directly", "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}  ",
        f"Model: embedded SmolLM2-135M-Instruct, float32 ({size_gb:.3f} GiB of parameters), loaded by both "
        "tools from the same safetensors folder. Calibration: 32 x 512 offline windows, seed 0. "
        "W4 symmetric, damping 0.05, true-sequential. Evaluation: offline text, "
        f"{prot['windows']} windows of {prot['seq_len']} tokens; float PPL {fp_ppl:.4f}.", "",
        "Each pair runs both tools with the same calibration batch size (windows per forward). The batch "
        "changes nothing in the mathematics, only the order of float summations, so the spread over "
        "batches shows how much GPTQ's result moves with rounding alone; compare the tools on the mean.", "",
        "Quantize time is the GPTQ call alone (model already loaded); peak RSS is the process's maximum "
        "resident memory (VmHWM) up to the end of quantization, loading included.", "",
        "| group | act-order | batch | tool | quantize s | peak RSS GiB | RSS / float32 model | PPL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['group_size']} | {r['act_order']} | {r['batch']} | {_tool(r)} | {r['quantize_s']} | "
                     f"{r['peak_rss_gb']} | {r['peak_rss_gb'] / size_gb:.2f}x | {r['ppl']:.4f} |")
    lines += ["", "## Summary (means over the batch sizes)", "",
              "| group | act-order | time ours / GPTQModel | peak RSS ours (batch 1, its default) / float32 model | "
              "PPL GPTQModel | PPL ours | PPL ours vs GPTQModel |", "|---|---|---|---|---|---|---|"]
    for spec in dict.fromkeys((r["group_size"], r["act_order"]) for r in rows):
        sel = [r for r in rows if (r["group_size"], r["act_order"]) == spec]
        ours, ref = ([r for r in sel if r["tool"] == t] for t in ("builtin", "gptqmodel"))

        def mean(rs, k):
            return sum(r[k] for r in rs) / len(rs)
        lines.append(
            f"| {spec[0]} | {spec[1]} | **{mean(ours, 'quantize_s') / mean(ref, 'quantize_s'):.2f}** | "
            f"**{max(r['peak_rss_gb'] for r in ours if r['batch'] == min(args.batches)) / size_gb:.2f}x** | "
            + " / ".join(f"{r['ppl']:.3f}" for r in ref) + f" (mean {mean(ref, 'ppl'):.3f}) | "
            + " / ".join(f"{r['ppl']:.3f}" for r in ours) + f" (mean {mean(ours, 'ppl'):.3f}) | "
            f"**{100 * (mean(ours, 'ppl') / mean(ref, 'ppl') - 1):+.2f} %** |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
