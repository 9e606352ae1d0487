"""Benchmark: the quickstart's GPTQ export in three loaders, scored on the same windows.

    bash scripts/setup_vllm.sh                      # once: .venv-vllm with vLLM's CPU build (~3.5 GB)
    .venv/bin/python bench/vllm_reload.py           # runs recipes/quickstart.yaml, then scores its export
    .venv/bin/python bench/vllm_reload.py --run runs/quickstart   # an existing run folder instead

Loaders: smooth_then_quant.load_model (unpacks the integers to float32), transformers with GPTQModel's
torch kernel (GPTQConfig(backend="torch"); it dequantizes the packed integers on the fly), and vLLM's CPU
engine
(bench/vllm_score.py inside .venv-vllm; prompt logprobs). Every loader gets the run's own
evaluation windows; the table compares each to the perplexity the run reported for the exported
cell. Writes bench/results/vllm.md.
"""
from __future__ import annotations

import argparse
import json
import math
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
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"


def run_quickstart(out: Path) -> None:
    cmd = [sys.executable, "-m", "smooth_then_quant", str(ROOT / "recipes" / "quickstart.yaml"), "-q",
           "--set", f"output_dir={out}"]
    subprocess.run(cmd, check=True)


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


def transformers_gptq(folder: Path, ids: torch.Tensor, bits: int) -> dict:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from transformers import AutoModelForCausalLM, GPTQConfig

    from smooth_then_quant.evaluate import window_nll
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=GPTQConfig(bits=bits, backend="torch"))
    load_s = time.perf_counter() - t0
    kernel = type(model.model.layers[0].mlp.down_proj).__name__
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
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300], "dtype": dtype}
    res = json.loads(line.removeprefix("VLLM_RESULT "))
    res["dtype"] = f"{dtype} (quantization: {res.pop('quantization')})"
    return res


def vllm_version() -> str:
    if not VLLM_PY.exists():
        return "not installed"
    return subprocess.run([str(VLLM_PY), "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]


def write_table(path: Path, args_line: str, cell, reported: float, results: list[tuple[str, dict]],
                n_windows: int, seq_len: int, vllm_ver: str) -> str:
    scheme, state, _ = cell
    lines = [
        "# The quickstart's GPTQ export in smooth_then_quant, transformers and vLLM",
        "",
        f"Command: `{args_line}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, vLLM {vllm_ver} "
        f"(CPU build, .venv-vllm), {time.strftime('%Y-%m-%d')}.",
        "",
        f"Exported cell: {scheme} {state}; the run reported perplexity {reported:.6f} on {n_windows} windows of "
        f"{seq_len} tokens. Each loader reads the same `quantized/` folder and scores the same windows.",
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
    lines += ["", "All loaders read the same integers and scales. The first two compute in float32; vLLM computes "
              "the whole model (embeddings, norms, attention, not only the quantized projections) in the dtype "
              "shown, so a difference of that precision's size is expected there."]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="an existing run folder (report.json + quantized/); default: "
                                             "run recipes/quickstart.yaml into a temporary folder")
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"], help="vLLM dtypes to try")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "vllm.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or Path(tmp) / "quickstart"
        if args.run is None:
            run_quickstart(run)
        report = json.loads((run / "report.json").read_text())
        cell = reported_cell(report)
        from transformers import AutoTokenizer

        from smooth_then_quant.evaluate import evaluation_windows
        ev = report["recipe"]["evaluation"]
        folder = run / "quantized"
        ids, _ = evaluation_windows(AutoTokenizer.from_pretrained(folder), ev["datasets"][0], ev["seq_len"],
                                    ev["max_windows"])
        windows_json = Path(tmp) / "windows.json"
        windows_json.write_text(json.dumps(ids.tolist()))
        bits = json.loads((folder / "config.json").read_text())["quantization_config"]["bits"]
        results = [("smooth_then_quant", ours(folder, ids)), ("transformers", transformers_gptq(folder, ids, bits))]
        results += [("vLLM", vllm(folder, windows_json, d)) for d in args.dtypes]
        line = "python bench/vllm_reload.py" + (f" --run {args.run}" if args.run else "")
        print(write_table(args.out, line, cell, cell[2], results, ids.shape[0], ids.shape[1], vllm_version()))


if __name__ == "__main__":
    main()
