"""Benchmark: our quantized exports in three loaders, scored on the same windows.

    bash scripts/setup_vllm.sh                      # once: .venv-vllm with vLLM's CPU build (~3.5 GB)
    .venv/bin/python bench/vllm_reload.py           # runs the recipes below, then scores their exports
    .venv/bin/python bench/vllm_reload.py --run runs/quickstart   # existing run folders instead

Runs: recipes/quickstart.yaml (W4A16 smoothed, GPTQ format); recipes/w8a8.yaml made quicker (W8A8
smoothed: int8 weights and per-token int8 activations, compressed-tensors format); recipes/w4a8.yaml
made quicker, exporting its W4A8 (per-token dynamic int8; vLLM has no kernel for W4A8-static).
Loaders: smooth_then_quant.load_model (integers unpacked to float32, our A8 quantizer), transformers
(GPTQ: GPTQModel's torch kernel via GPTQConfig(backend="torch"); compressed-tensors: that library's
decompression and activation quantization), and vLLM's CPU engine (bench/vllm_score.py inside
.venv-vllm; prompt logprobs). Every loader gets the run's own evaluation windows; the table compares
each to the perplexity the run reported for the exported cell. Writes bench/results/vllm.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"


RUNS = {  # name -> (recipe, overrides)
    "quickstart": ("quickstart", []),
    "w8a8-compressed-tensors": ("w8a8", ["quantization.compare=[baseline,smoothed]", "calibration.samples=16",
                                         "evaluation.max_windows=16", "export.quantized.format=compressed-tensors"]),
    "w4a8-per-token-compressed-tensors": ("w4a8", [  # W4A8: per-token dynamic activations, vLLM's W4A8 kernel
        "quantization.compare=[baseline,smoothed]", "calibration.samples=16", "evaluation.max_windows=16"]),
}
# vLLM's CPU int8 GEMM takes only 16-bit activations ("int8_scaled_mm_with_quant: expect A to be bfloat16
# or half", measured 2026-12-04 with float32): compressed-tensors runs in bfloat16 only
VLLM_DTYPES = {"gptq": ["bfloat16", "float16"], "compressed-tensors": ["bfloat16"]}


def run_recipe(name: str, out: Path) -> str:
    recipe, overrides = RUNS[name]
    cmd = [sys.executable, "-m", "smooth_then_quant", str(ROOT / "recipes" / f"{recipe}.yaml"), "-q",
           "--set", f"output_dir={out}", *[a for o in overrides for a in ("--set", o)]]
    subprocess.run(cmd, check=True)
    return " ".join(["smooth-quant", f"recipes/{recipe}.yaml", *[f"--set '{o}'" for o in overrides]])


def reported_cell(report: dict) -> tuple[str, str, float]:
    """The exported (scheme, state) and the perplexity the run reported for it."""
    q = report["recipe"]["export"]["quantized"]
    row = next(r for r in report["quantization"]["rows"] if (r["scheme"], r["state"]) == (q["scheme"], q["state"]))
    return q["scheme"], q["state"], row["ppl"][report["recipe"]["evaluation"]["datasets"][0]]


def ours(folder: Path, ids: torch.Tensor) -> dict:
    from smooth_then_quant.evaluate import window_nll
    from smooth_then_quant.load import load_model
    t0 = time.perf_counter()
    loaded = load_model(str(folder))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    nll = window_nll(loaded.model, ids, 1, False)
    return {"window_nll": nll.tolist(), "load_s": load_s, "score_s": time.perf_counter() - t0,
            "dtype": "float32 (unpacked integers)"}


def transformers_load(folder: Path, ids: torch.Tensor, qc: dict) -> dict:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from transformers import AutoModelForCausalLM, GPTQWeights

    from smooth_then_quant.evaluate import window_nll
    t0 = time.perf_counter()
    kw = {"quantization_config": GPTQWeights(bits=qc["bits"], backend="torch")} if qc["quant_method"] == "gptq" else {}
    model = AutoModelForCausalLM.from_pretrained(folder, **kw)
    load_s = time.perf_counter() - t0
    kernel = "compressed-tensors" if kw == {} else type(model.model.layers[0].mlp.down_proj).__name__
    t0 = time.perf_counter()
    nll = window_nll(model.eval(), ids, 1, False)
    return {"window_nll": nll.tolist(), "load_s": load_s, "score_s": time.perf_counter() - t0,
            "dtype": f"{str(model.dtype).removeprefix('torch.')} ({kernel})"}


def vllm(folder: Path, windows_json: Path, dtype: str) -> dict:
    if not VLLM_PY.exists():
        raise SystemExit(f"{VLLM_PY} not found: run `bash scripts/setup_vllm.sh` first")
    proc = subprocess.run([str(VLLM_PY), str(HERE / "vllm_score.py"), str(folder), str(windows_json), dtype],
                          capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VLLM_RESULT ")), None)
    log = proc.stdout + "\n" + proc.stderr  # vLLM logs to stdout, Python to stderr
    if line is None:
        return {"error": _cause(log), "dtype": dtype}
    res = json.loads(line.removeprefix("VLLM_RESULT "))
    res["dtype"] = f"{dtype} (quantization: {res.pop('quantization')})"
    if proc.returncode != 0:  # scored, then crashed while shutting down: the numbers stand, the crash is reported
        res["note"] = f"vLLM exited with code {proc.returncode} after printing its result: {_cause(log)}"
    return res


def _cause(log: str) -> str:
    """The line of a failed vLLM process's output that says what went wrong (not its last warning)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()] or ["no output"]
    root = [ln for ln in lines if re.search(r"(Runtime|Value|Type|NotImplemented|Assertion)Error: ", ln)]
    if root:  # the worker's own exception, not the EngineDeadError the front end raises after it
        return re.sub(r"^.*?\] ", "", root[0])[:300]
    hits = [ln for ln in lines if re.search(r"Error|Exception|terminate called|Aborted|No compressed-tensors", ln)]
    return (hits or lines)[-1][:300]


def vllm_version() -> str:
    if not VLLM_PY.exists():
        return "not installed"
    return subprocess.run([str(VLLM_PY), "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]


def header(args_line: str, vllm_ver: str) -> list[str]:
    return ["# Our quantized exports in smooth_then_quant, transformers and vLLM", "",
            f"Command: `{args_line}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, vLLM {vllm_ver} "
            f"(CPU build, .venv-vllm), {time.strftime('%Y-%m-%d')}.", "",
            "All loaders read the same integers and scales. Ours and transformers compute in float32; vLLM "
            "computes the whole model (embeddings, norms, attention, not only the quantized projections) in the "
            "dtype shown, so a difference of that precision's size is expected there. vLLM's CPU int8 GEMM "
            "(compressed-tensors) takes only 16-bit activations (float32 fails with \"int8_scaled_mm_with_quant: "
            "expect A to be bfloat16 or half\"), so those runs are in bfloat16 alone.", ""]


def section(title: str, made_by: str, fmt: str, cell, reported: float, results: list[tuple[str, dict]],
            n_windows: int, seq_len: int) -> list[str]:
    scheme, state, _ = cell
    lines = [
        f"## {title}", "",
        f"Made by `{made_by}`. Exported cell: {scheme} {state}, {fmt} format; the run reported perplexity "
        f"{reported:.6f} on {n_windows} windows of {seq_len} tokens. Each loader reads the same `quantized/` "
        "folder and scores the same windows.",
        "",
        "| loader | arithmetic | perplexity | vs reported | max abs Δ window NLL vs ours | load (s) | score (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    base = next(r for name, r in results if name == "smooth_then_quant")["window_nll"]
    for name, r in results:
        if "error" in r:
            lines.append(f"| {name} | {r['dtype']} | failed: {r['error']} | | | | |")
            continue
        ppl = math.exp(sum(r["window_nll"]) / len(r["window_nll"]))
        dmax = max(abs(a - b) for a, b in zip(r["window_nll"], base))
        lines.append(f"| {name} | {r['dtype']} | {ppl:.4f} | {100 * (ppl / reported - 1):+.3f} % | {dmax:.4f} | "
                     f"{r['load_s']:.0f} | {r['score_s']:.0f} |")
    notes = [f"- {name} {r['dtype']}: {r['note']}" for name, r in results if "note" in r]
    return lines + [""] + (notes + [""] if notes else [])


def score_run(run: Path, tmp: Path, dtypes: list[str] | None) -> tuple:
    from transformers import AutoTokenizer

    from smooth_then_quant.evaluate import evaluation_windows
    report = json.loads((run / "report.json").read_text())
    cell = reported_cell(report)
    ev = report["recipe"]["evaluation"]
    folder = run / "quantized"
    ids, _ = evaluation_windows(AutoTokenizer.from_pretrained(folder), ev["datasets"][0], ev["seq_len"],
                                ev["max_windows"])
    windows_json = tmp / f"{run.name}-windows.json"
    windows_json.write_text(json.dumps(ids.tolist()))
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    fmt = qc["quant_method"]
    results = [("smooth_then_quant", ours(folder, ids)), ("transformers", transformers_load(folder, ids, qc))]
    results += [("vLLM", vllm(folder, windows_json, d)) for d in (dtypes or VLLM_DTYPES[fmt])]
    return fmt, cell, results, ids.shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, nargs="+", help="existing run folders (report.json + quantized/); default: "
                                                        f"run {', '.join(RUNS)} into a temporary folder")
    ap.add_argument("--dtypes", nargs="+", help="vLLM dtypes to try (default: per format)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vllm.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(r.name, r, f"an existing run ({r})") for r in args.run] if args.run else []
        for name in ([] if args.run else RUNS):
            out = Path(tmp) / name
            runs.append((name, out, run_recipe(name, out)))
        lines = header("python bench/vllm_reload.py" + (" --run " + " ".join(map(str, args.run)) if args.run else ""),
                       vllm_version())
        for name, run, made_by in runs:
            fmt, cell, results, (n, t) = score_run(run, Path(tmp), args.dtypes)
            lines += section(name, made_by, fmt, cell, cell[2], results, n, t)
        text = "\n".join(lines)
        args.out.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
