"""Benchmark: how the quickstart table moves when the windows are what an instruct model sees in use (its chat
template) instead of plain text.

    .venv/bin/python bench/windows.py            # ~20 min on 2 cores: the quickstart twice

recipes/quickstart.yaml (SmolLM2-135M-Instruct, whose tokenizer adds no BOS, so `auto` = `text` for it) run with
calibration.format and evaluation.format both `text`, then both `chat` (each calibration and evaluation window
starts with SmolLM2's chat template up to the user's content: its default system prompt and the user turn's
head; in evaluation that head is context, not scored). Each run is its own process. Writes
bench/results/windows.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run(fmt: str, work: Path) -> dict:
    out = work / f"quickstart-{fmt}"
    cmd = [sys.executable, "-m", "smooth_then_quant.cli", str(ROOT / "recipes" / "quickstart.yaml"), "-q",
           "--set", f"calibration.format={fmt}", "--set", f"evaluation.format={fmt}", "--set", "export.model=false",
           "--set", "export.quantized=null", "--set", f"output_dir={out}", "--set", "overwrite=true"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        return {"error": proc.stderr[-1500:], "wall_s": wall}
    return {"wall_s": wall, "report": json.loads((out / "report.json").read_text())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/stq-bench"))
    ap.add_argument("--text-report", type=Path, help="the report.json of a quickstart run with format text (or auto, "
                    "which is text for SmolLM2) made by this code, used instead of running it again")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = {fmt: run(fmt, args.work) for fmt in (("chat",) if args.text_report else ("text", "chat"))}
    if args.text_report:
        report = json.loads(args.text_report.read_text())
        assert report["quantization"]["evaluation"]["offline"].get("format") in ("text", None) or \
            report["data"].get("format") == "text", "the reused report is not a text-format run"
        runs = {"text": {"report": report, "wall_s": float("nan")}, **runs}
    lines = ["# Windows as the model sees them: plain text against SmolLM2's chat template", "",
             f"_Command: `python bench/windows.py`; {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"{datetime.date.today()}. recipes/quickstart.yaml (16 × 512 calibration windows, 16 evaluation "
             "windows of 512 tokens of the offline text), run once with `calibration.format` and "
             "`evaluation.format` both `text`, once both `chat`._", ""]
    if args.text_report:
        lines += [f"_The text run is an earlier quickstart run's report ({args.text_report.name}, format auto = text for "
                  "SmolLM2, same code, same windows; only its exports differed), passed with --text-report._", ""]
    failed = {f: r for f, r in runs.items() if "error" in r}
    if failed:
        lines += [f"- `{f}` failed: `{r['error'][-600:]}`" for f, r in failed.items()]
    else:
        t, c = runs["text"]["report"], runs["chat"]["report"]
        ev = c["quantization"]["evaluation"]["offline"]
        lines += [f"Chat windows: every window starts with the template's {ev['prefix_tokens']} tokens ({ev['bos']}); "
                  f"{ev['windows']} windows, {ev['tokens_scored']} tokens scored (text: "
                  f"{t['quantization']['evaluation']['offline']['tokens_scored']}).", "",
                  "| scheme | smoothing | text PPL (ΔPPL) | chat PPL (ΔPPL) | degradation reduced: text → chat |",
                  "|---|---|---|---|---|"]
        rows = {(r["scheme"], r["state"]): r for r in t["quantization"]["rows"]}
        for r in c["quantization"]["rows"]:
            a = rows[(r["scheme"], r["state"])]

            def cell(x):
                return f"{x['ppl']['offline']:.4f} ({x['delta_ppl']['offline']:+.4f})"

            def red(x):
                v = (x.get("degradation_reduced") or {}).get("offline")
                return "—" if v is None else f"{100 * v:.0f} %"
            lines.append(f"| {r['scheme']} | {r['state']} | {cell(a)} | {cell(r)} | {red(a)} → {red(r)} |")
        lines += ["", f"Wall time: text {runs['text']['wall_s'] / 60:.1f} min, chat {runs['chat']['wall_s'] / 60:.1f} "
                  "min. The α search, GPTQ and the static A8 ranges were calibrated on each run's own windows, so the "
                  "chat rows are what an instruct deployment of this checkpoint would see.", ""]
    (HERE / "results" / "windows.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
