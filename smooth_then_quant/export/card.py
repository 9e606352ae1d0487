"""Model cards (README.md) of every export, built with huggingface_hub's ModelCard / ModelCardData: the Hub's
metadata (license, base_model with base_model_relation: quantized, pipeline_tag, library_name, tags, datasets,
a model-index of the measured perplexities and accuracies) and the body in prose.

The API exports (export_quantized, export_smoothed) write a card from what the model carries (its scheme, its
plan); a recipe run writes the same card with the report's sections (the table, the recipe) added. No absolute
local path is written: `portable()` makes paths relative to the working folder or keeps their last name.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..load import DEFAULT_MODEL, DEFAULT_MODEL_ID
from ..quantize.names import serving
from ..version import __version__

# hub ids of the named data sources, for the card's `datasets` and model-index
DATASET_IDS = {"wikitext2": "Salesforce/wikitext", "c4": "allenai/c4"}
DEFAULT_LICENSE = {DEFAULT_MODEL: "apache-2.0"}  # SmolLM2-135M-Instruct is Apache-2.0


def portable(obj, cwd: Path | None = None):
    """`obj` (a report, nested dicts / lists / strings) with every absolute local path made relative to the
    working folder when inside it, else replaced by `<local>/NAME`: nothing of the user's file system leaks
    into an exported or pushed folder."""
    cwd = Path(os.path.realpath(cwd or Path.cwd()))
    if isinstance(obj, dict):  # keys too: a dataset given by its path names its table column
        return {portable(k, cwd): portable(v, cwd) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable(v, cwd) for v in obj]
    if isinstance(obj, str) and (obj.startswith("/") or obj.startswith("~")) and "\n" not in obj and len(obj) < 4096:
        p = Path(os.path.realpath(Path(obj).expanduser()))
        try:
            return str(p.relative_to(cwd)) or "."
        except ValueError:
            return f"<local>/{p.name}"
    return obj


def base_model(provenance: dict) -> str | None:
    """The Hub id the checkpoint derives from, when there is one (the default model's, a hub id's, or a held
    model's name_or_path that is a hub id)."""
    name = provenance.get("name", "")
    if name == DEFAULT_MODEL:
        return DEFAULT_MODEL_ID
    if provenance.get("source") == "hub" or (provenance.get("source") == "in-memory" and name.count("/") == 1
                                              and not Path(name).exists() and not name.startswith((".", "/", "~"))):
        return name
    return None


def card_data(provenance: dict, *, quantized: bool, tags: list[str], license: str | None = None,
              datasets: list[str] = (), eval_results: list[dict] = ()):
    """ModelCardData for an export. eval_results: {dataset, metric, value, task} rows (perplexity, accuracy)."""
    from huggingface_hub import EvalResult, ModelCardData

    base = base_model(provenance)
    lic = license or source_license(provenance)
    data = ModelCardData(
        license=lic or "other", library_name="transformers", pipeline_tag="text-generation",
        base_model=base, tags=["smooth-then-quant", *tags],
        datasets=sorted({DATASET_IDS.get(d, d) for d in datasets if d in DATASET_IDS or d.count("/") == 1}) or None,
        model_name=(base or provenance.get("name", "model")).rsplit("/", 1)[-1] + (" (quantized)" if quantized else
                                                                                     " (smoothed)"),
        eval_results=[EvalResult(task_type=r.get("task", "text-generation"), dataset_type=DATASET_IDS.get(r["dataset"],
                                 r["dataset"]), dataset_name=r["dataset"], metric_type=r["metric"],
                                 metric_value=r["value"], metric_name=r.get("name")) for r in eval_results] or None,
        **({"base_model_relation": "quantized"} if base and quantized else {}))
    if lic is None:  # unknown here (offline, no card beside the weights): the base model's terms apply
        data.license_name = "same-as-base-model"
        if base:
            data.license_link = f"https://huggingface.co/{base}"
    return data


def source_license(provenance: dict) -> str | None:
    """The license in the source model's own card: README.md beside local weights, or the Hub card of a hub id
    (None offline or without one)."""
    from huggingface_hub import ModelCard

    name, src = provenance.get("name", ""), provenance.get("source")
    if name in DEFAULT_LICENSE:
        return DEFAULT_LICENSE[name]
    try:
        if src == "folder" and (Path(provenance.get("path", name)) / "README.md").is_file():
            return ModelCard.load(Path(provenance.get("path", name)) / "README.md").data.license
        if src == "hub" and not os.environ.get("HF_HUB_OFFLINE"):
            return ModelCard.load(name).data.license
    except Exception:  # noqa: BLE001 - no card, offline, a malformed header: the license is then unknown
        return None
    return None


def write_card(folder: Path, data, body: list[str]) -> Path:
    """README.md = the metadata block + `body` (markdown lines), validated by huggingface_hub's ModelCard."""
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body).rstrip() + "\n")
    path = Path(folder) / "README.md"
    path.write_text(str(card), encoding="utf-8")
    return path


def provenance_of(model) -> dict:
    """Where a model came from: what load_model recorded on it, else its config's name_or_path."""
    prov = getattr(model, "stq_provenance", None)
    if prov:
        return dict(prov)
    return {"name": getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__,
            "source": "in-memory"}


def plan_lines(summary: list[dict]) -> list[str]:
    """The smoothing plan's summary rows as a markdown table."""
    if not summary:
        return ["No smoothing was applied."]
    rows = ["| intervention | edits | exact | in the weights |", "|---|---|---|---|"]
    rows += [f"| {r['kind']} | {r['count']} | {'yes' if r['exact'] else 'no (lossy)'} | "
             f"{'yes' if r['foldable'] else 'no (run time: load with smooth_then_quant)'} |" for r in summary]
    return rows


def how_to_load_smoothed(runtime: bool) -> list[str]:
    return ["```python", *(["from smooth_then_quant import load_model  # re-attaches the run-time interventions",
                            "loaded = load_model(\"path/to/this/folder\")"] if runtime else
                           ["from transformers import AutoModelForCausalLM  # everything is folded into the weights",
                            "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")"]), "```", ""]


def card_body(kind: str, name: str, version: str, summary: list[dict], *, scheme: dict | None = None, fmt=None,
              title: str = "", smoothing: str | None = None) -> list[str]:
    """The prose of a card, API or recipe: kind 'quantized' (`scheme` in format `fmt`; `smoothing` says what was
    done before) or 'smoothed'. `title`: what follows the scheme in the heading (the recipe's state)."""
    if kind == "quantized":
        w, a = scheme["weights"], scheme["activations"]
        before = f" Smoothing before quantization: {smoothing}." if smoothing else ""
        return [f"# {name}: {scheme['name']}{title}", "",
                f"Quantized with smooth-then-quant {version}: {scheme['description']}.{before}", "",
                f"**Serving:** {serving(scheme, fmt.name)}.", "", *fmt.how_to_load(w, a is not None),
                "## Smoothing plan", "", *plan_lines(summary), ""]
    return [f"# {name}, smoothed for quantization", "",
            f"Made with smooth-then-quant {version}: float weights (safetensors) with the activation outliers that "
            "hurt low-bit quantization migrated or removed:", "", *plan_lines(summary), "",
            *how_to_load_smoothed(any(not r["foldable"] for r in summary))]


def api_card(folder: Path, model, *, kind: str, plan=None, scheme: dict | None = None, fmt=None) -> Path:
    """The card of an export made through the Python API (no report): what the model carries, how to load it."""
    prov = provenance_of(model)
    name = (base_model(prov) or prov["name"]).rsplit("/", 1)[-1] or "model"
    body = card_body(kind, name, __version__, plan.summary() if plan is not None else [], scheme=scheme, fmt=fmt)
    tags = [fmt.name, f"int{scheme['weights']['bits']}"] if kind == "quantized" else ["smoothed"]
    return write_card(folder, card_data(prov, quantized=kind == "quantized", tags=tags), body)
