"""Model cards (README.md) for the exported checkpoints: what was done, how to load it, the
perplexity table it was measured with, and the recipe that made it."""
from __future__ import annotations

import yaml

from ..export import get_format
from ..load import DEFAULT_MODEL, DEFAULT_MODEL_ID
from .markdown import _table
from .quantization import STATE_LABEL, quantization_table


def _base_model(report: dict) -> str | None:
    m = report["model"]
    return DEFAULT_MODEL_ID if m["name"] == DEFAULT_MODEL else m["name"] if m.get("source") == "hub" else None


def _front_matter(report: dict, tags: list[str]) -> list[str]:
    meta = {"library_name": "transformers", "tags": ["smooth-then-quant", *tags]}
    if _base_model(report):
        meta["base_model"] = _base_model(report)
    return ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]


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


def _plan(report: dict) -> list[str]:
    summary = report.get("smoothing", {}).get("plan", {}).get("summary", [])
    if not summary:
        return ["No smoothing was applied."]
    return [_table(["intervention", "edits", "exact", "in the weights"],
                   [[r["kind"], r["count"], "yes" if r["exact"] else "no (lossy)", "yes" if r["foldable"] else
                     "no (run time: load with smooth_then_quant)"] for r in summary])]


def render_model_card(report: dict, kind: str, scheme: str | None = None, state: str | None = None) -> str:
    """kind: 'smoothed' (float checkpoint) or 'quantized' (`scheme` on `state`, GPTQ or compressed-tensors)."""
    name = (_base_model(report) or report["model"]["name"]).rsplit("/", 1)[-1]
    runtime = any(not r["foldable"] for r in report.get("smoothing", {}).get("plan", {}).get("summary", []))
    lines = []
    if kind == "quantized":
        sch = next(s for s in report["quantization"]["schemes"] if s["name"] == scheme)
        w = sch["weights"]
        fmt = report["quantization"].get("export", {}).get("format", "gptq")
        lines += _front_matter(report, [fmt, f"int{w['bits']}"])
        lines += [f"# {name}: {scheme}, {STATE_LABEL.get(state, state)}", "",
                  f"Quantized with smooth-then-quant {report['tool']['version']}: {sch['description']}. Smoothing "
                  f"before quantization: {report['quantization']['states'][state]}.", "",
                  *get_format(fmt).how_to_load(w, bool(sch["activations"]))]
    else:
        lines += _front_matter(report, ["smoothed"])
        lines += [f"# {name}, smoothed for quantization", "",
                  f"Made with smooth-then-quant {report['tool']['version']}. Float weights (safetensors) with the "
                  "activation outliers that hurt low-bit quantization migrated or removed:", "", *_plan(report), "",
                  "```python"]
        lines += (["from smooth_then_quant import load_model  # re-attaches the run-time interventions",
                   "loaded = load_model(\"path/to/this/folder\")"] if runtime else
                  ["from transformers import AutoModelForCausalLM  # everything is folded into the weights",
                   "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")"])
        lines += ["```", ""]
    lines += _perplexity(report, (scheme, state) if kind == "quantized" else ("FP", "smoothed"))
    ev = report.get("quantization", report.get("smoothing", {})).get("evaluation", {})
    if ev:
        lines += ["Evaluation: " + "; ".join(f"{d}: " + ", ".join(f"{k} {x}" for k, x in v.items()
                                                              if not isinstance(x, (dict, list)))
                                          for d, v in ev.items()), ""]
    lines += ["## Recipe", "", "```yaml", yaml.safe_dump(report["recipe"], sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)
