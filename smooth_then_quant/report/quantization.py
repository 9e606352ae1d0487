"""The quantization part of report.md (the perplexity table) and its bar chart."""
from __future__ import annotations

from pathlib import Path

from ..extras import pyplot
from ..quantize.names import serving
from .markdown import _table

STATE_LABEL = {"baseline": "unsmoothed baseline", "paper": "paper's smoothing", "smoothed": "smoothed (recipe)"}


def _cell(row: dict, d: str) -> str:
    ppl, delta, red = row["ppl"][d], row["delta_ppl"][d], row["degradation_reduced"]
    text = f"{ppl:.4g} ({delta:+.3g})"
    if red is not None and red.get(d) is not None:
        text += f", degradation reduced by **{100 * red[d]:.0f} %**" if red[d] >= 0 else \
            f", degradation **{100 * -red[d]:.0f} % worse**"
    return text


def quantization_table(q: dict, mark: tuple[str, str] | None = None) -> str:
    """The markdown table of report["quantization"]; `mark` (scheme, state) flags one row."""
    tasks = q.get("tasks", [])
    return _table(["scheme", "smoothing", *[f"{d} PPL (ΔPPL)" for d in q["datasets"]], *[f"{t} acc" for t in tasks]],
                  [[r["scheme"], STATE_LABEL.get(r["state"], r["state"])
                    + (" **← this checkpoint**" if (r["scheme"], r["state"]) == mark else ""),
                    *[_cell(r, d) for d in q["datasets"]],
                    *[f"{100 * r['accuracy'][t]:.1f} %" if t in r.get("accuracy", {}) else "" for t in tasks]]
                   for r in q["rows"]])


def render_quantization(report: dict) -> str:
    q = report["quantization"]
    lines = ["## Quantization", "",
             "Perplexity (ΔPPL to the float, unsmoothed model). \"Degradation reduced\" compares a smoothed "
             "row's ΔPPL with the unsmoothed row of the same scheme: 1 − ΔPPL(smoothed) / ΔPPL(baseline), shown where "
             "the unsmoothed row loses more than 0.1 % of the float perplexity. "
             "The paper's smoothing counts its own float cost, since ΔPPL is taken against the original model.", ""]
    lines.append(quantization_table(q))
    ev = q.get("evaluation") or {}
    if ev:
        lines += ["", "Windows: " + "; ".join(
            f"{d}: {v.get('windows')} × {v.get('seq_len')} tokens, format {v.get('format', 'gptq')} ({v.get('bos')})"
            for d, v in ev.items()) + "."]
    lines += ["", "Schemes:", ""]
    lines += [f"- **{s['name']}**: {s['description']}. Served by {serving(s, 'compressed-tensors')}." for s in q["schemes"]]
    lines += ["", "Smoothing states:", ""]
    lines += [f"- **{STATE_LABEL.get(k, k)}**: {v}" for k, v in q["states"].items()]
    notes = sorted({n for w in q["weights"].values() for n in [w.get("uneven_groups")] if n})
    lines += [f"- Uneven groups: {n}" for n in notes]
    lines += ["", "Weight quantization cost: " + "; ".join(
        f"{k}: {w['seconds']} s" for k, w in q["weights"].items()) + ".", ""]
    if "quantization.png" in report.get("plots", []):
        lines += ["![perplexity by scheme and smoothing](quantization.png)", ""]
    return "\n".join(lines)


def plot_quantization(q: dict, path: Path) -> Path:
    """One panel per dataset: grouped bars (scheme x smoothing state), log perplexity, FP line."""
    datasets, rows = q["datasets"], q["rows"]
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    states = list(dict.fromkeys(r["state"] for r in rows))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(2.2 + 1.6 * len(schemes), 4.2), squeeze=False)
    width = 0.8 / len(states)
    for ax, d in zip(axes[0], datasets):
        for si, state in enumerate(states):
            vals = [next((r["ppl"][d] for r in rows if r["scheme"] == s and r["state"] == state), float("nan"))
                    for s in schemes]
            xs = [i + (si - (len(states) - 1) / 2) * width for i in range(len(schemes))]
            bars = ax.bar(xs, vals, width, label=STATE_LABEL.get(state, state))
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=7, rotation=90, padding=2)
        fp = next(r["ppl"][d] for r in rows if r["scheme"] == "FP" and r["state"] == "baseline")
        ax.axhline(fp, color="k", lw=0.8, ls="--", label=f"FP {fp:.3g}")
        ax.set_yscale("log")
        ax.set_xticks(range(len(schemes)), schemes)
        ax.set_title(f"perplexity on {d} (lower is better)")
        ax.margins(y=0.25)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
