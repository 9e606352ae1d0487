"""The model card of a recipe run's exports: the API card (export/card.py: metadata, scheme, how to load) with
the report's measurements added: the perplexity table (and lm-eval accuracies) in the body and in the
model-index, the plan, the recipe. Every path in it is made portable (no absolute local path)."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..export import get_format
from ..export.card import base_model, card_body, card_data, portable, write_card
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
        fmt = report["quantization"].get("export", {}).get("format", "gptq")
        tags = [fmt, f"int{sch['weights']['bits']}"]
        body = card_body(kind, name, report["tool"]["version"], summary, scheme=sch, fmt=get_format(fmt),
                         title=f", {STATE_LABEL.get(state, state)}", smoothing=report["quantization"]["states"][state])
        results = eval_results(report, scheme, state)
    else:
        tags = ["smoothed"]
        body = card_body(kind, name, report["tool"]["version"], summary)
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
