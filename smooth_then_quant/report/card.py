"""The model card of a recipe run's exports: the API card (export/card.py: metadata, scheme, how to load) with
the report's measurements added: the perplexity table (and lm-eval accuracies) in the body and in the
model-index, the plan, the recipe. Every path in it is made portable (no absolute local path)."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..export import get_format
from ..export.card import base_model, card_data, how_to_load_smoothed, plan_lines, portable, write_card
from ..quantize.names import serving
from .markdown import _table
from .quantization import STATE_LABEL, quantization_table


def _perplexity(report: dict, this: tuple | None = None) -> list[str]:
    q = report.get("quantization")
    if q:
        return ["## Perplexity", "", "ΔPPL is taken against the float, unsmoothed model; "
                "\"degradation reduced\" against the unsmoothed row of the same scheme.", "",
                quantization_table(q, this),
                "", *[f"- **{s['name']}**: {s['description']}" for s in q["schemes"]], ""]
    states = report.get("smoothing", {}).get("states", [])
    rows = [[s["name"], *[f"{v:.4g}" for v in s.get("ppl", {}).values()]] for s in states]
    if not rows:
        return []
    return ["## Perplexity (float)", "", _table(["state", *states[0].get("ppl", {})], rows), ""]


def eval_results(report: dict, scheme: str, state: str) -> list[dict]:
    """The model-index rows of one table cell: perplexity per dataset (and accuracy per lm-eval task)."""
    q = report.get("quantization") or {}
    row = next((r for r in q.get("rows", []) if (r["scheme"], r["state"]) == (scheme, state)), None)
    if row is None and scheme == "FP":  # no table: the float states of the smoothing evidence
        s = next((s for s in report.get("smoothing", {}).get("states", []) if s.get("name") == "combined"), None)
        row = {"ppl": s.get("ppl", {})} if s else None
    if row is None:
        return []
    out = [{"dataset": d, "metric": "perplexity", "value": round(v, 4), "name": f"perplexity ({d})"}
           for d, v in row.get("ppl", {}).items()]
    out += [{"dataset": t, "metric": "accuracy", "value": round(v, 4), "name": f"accuracy ({t})",
             "task": "text-generation"} for t, v in row.get("accuracy", {}).items()]
    return out


def write_model_card(folder: Path, report: dict, kind: str, scheme: str | None = None, state: str | None = None,
                     license: str | None = None) -> Path:
    """README.md of `folder` for kind 'smoothed' (float checkpoint) or 'quantized' (`scheme` on `state`)."""
    report = portable(report)
    prov = report["model"]
    name = (base_model(prov) or prov["name"]).rsplit("/", 1)[-1]
    summary = report.get("smoothing", {}).get("plan", {}).get("summary", [])
    datasets = [report.get("recipe", {}).get("calibration", {}).get("data", ""),
                *report.get("recipe", {}).get("evaluation", {}).get("datasets", [])]
    if kind == "quantized":
        sch = next(s for s in report["quantization"]["schemes"] if s["name"] == scheme)
        w = sch["weights"]
        fmt = report["quantization"].get("export", {}).get("format", "gptq")
        tags = [fmt, f"int{w['bits']}"]
        body = [f"# {name}: {scheme}, {STATE_LABEL.get(state, state)}", "",
                f"Quantized with smooth-then-quant {report['tool']['version']}: {sch['description']}. Smoothing "
                f"before quantization: {report['quantization']['states'][state]}.", "",
                f"**Serving:** {serving(sch, fmt)}.", "",
                *get_format(fmt).how_to_load(w, bool(sch["activations"])),
                "## Smoothing plan", "", *plan_lines(summary), ""]
        results = eval_results(report, scheme, state)
    else:
        tags = ["smoothed"]
        body = [f"# {name}, smoothed for quantization", "",
                f"Made with smooth-then-quant {report['tool']['version']}. Float weights (safetensors) with the "
                "activation outliers that hurt low-bit quantization migrated or removed:", "", *plan_lines(summary), "",
                *how_to_load_smoothed(any(not r["foldable"] for r in summary))]
        results = eval_results(report, "FP", "smoothed")
    body += _perplexity(report, (scheme, state) if kind == "quantized" else ("FP", "smoothed"))
    ev = report.get("quantization", report.get("smoothing", {})).get("evaluation", {})
    if ev:
        body += ["Evaluation: " + "; ".join(f"{d}: " + ", ".join(f"{k} {x}" for k, x in v.items()
                                                              if not isinstance(x, dict | list))
                                         for d, v in ev.items()), ""]
    body += ["## Recipe", "", "```yaml", yaml.safe_dump(report["recipe"], sort_keys=False).strip(), "```", ""]
    data = card_data(prov, quantized=kind == "quantized", tags=tags, license=license, datasets=datasets,
                     eval_results=results)
    return write_card(folder, data, body)
