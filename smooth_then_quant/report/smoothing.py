"""The smoothing part of report.md and its plot: what the plan does, and the evidence."""
from __future__ import annotations

from pathlib import Path

from ..extras import pyplot
from .markdown import _table


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:+.1f} %"


def render_smoothing(report: dict) -> str:
    sm = report["smoothing"]
    plan, states = sm["plan"], sm["states"]
    datasets = list(states[0]["ppl"])
    lines = ["## Smoothing", "", "### Plan (`smoothing_plan.json`)", ""]
    if plan["summary"]:
        lines.append(_table(["intervention", "edits", "layers", "exact", "kind", "what"],
                            [[r["kind"], r["count"], _layers(r["layers"]), "yes" if r["exact"] else "**no (lossy)**",
                              "weight-folded" if r["foldable"] else "runtime hook (re-attached by our loader)",
                              r["doc"]] for r in plan["summary"]]))
    else:
        lines.append("The plan is empty: nothing to smooth under these settings.")
    lines += [f"- {n}" for n in plan["notes"]]
    repairs = [i for i in plan["interventions"] if i["kind"] == "repair"]
    for r in repairs:
        res = r["result"]
        lines += ["", f"Repair: LoRA rank {r['config']['rank']} on {len(r['modules'])} modules, {res['steps']} steps; "
                      f"KL to the unmodified model on {res['heldout_windows']} held-out windows "
                      f"{res['kl_before']:.4g} → {res['kl_after']:.4g}."]
    lines += ["", "### Evidence", "",
              "Float perplexity and outlier counts for the unmodified model, each intervention alone and the "
              "combination. Massive activations (MA) are counted in the residual stream (x1, y1) and at "
              "projection inputs (x2, x8, y2, y6: what activation quantization sees); an exact migration leaves "
              "the residual stream as it is by construction and shrinks what the projections read. The sink "
              "columns are x7 and x6: the largest share of a head's attention one key takes (mean over heads, the "
              "largest layer) and the largest attention score; an exact migration leaves both as they were. The "
              "weight columns are the largest max |w| / median |w| of any projection and the outlier rows and columns "
              "of all projections (k·σ rule): the range a migration moves from the activations into the weights, "
              "which W4 pays for.", ""]
    sinks = "sink_mass" in states[0]
    wts = "weight_ratio" in states[0]
    header = ["state", *[f"PPL {d}" for d in datasets], "ΔPPL", "MA residual", "MA at proj. inputs",
              "max \\|a\\| proj. inputs", "channel outliers", "CO at proj. inputs",
              *(["sink share (x7)", "max score (x6)"] if sinks else []),
              *(["max \\|w\\|/median", "weight outlier rows+cols"] if wts else [])]
    rows = []
    for s in states:
        ch = s.get("ppl_change")
        rows.append([s["name"], *[f"{s['ppl'][d]:.4f}" for d in datasets],
                     "–" if ch is None else ", ".join(_pct(v) for v in ch.values()),
                     _count(s, "massive_residual"), _count(s, "massive_linear_inputs"),
                     f"{max(s['max_abs_linear_inputs']):.4g}", _count(s, "channel_outliers"),
                     _count(s, "channel_outliers_linear_inputs"),
                     *([f"{max(s['sink_mass']):.4f}", f"{max(s['max_score']):.4g}"] if sinks else []),
                     *([f"{max(s['weight_ratio']):.4g}", _count(s, "weight_outliers")] if wts else [])])
    lines.append(_table(header, rows))
    lines += ["", "Counts are summed over layers, with the share removed against the baseline in brackets. "
                  "Per-layer values are in `report.json` → `smoothing.states`.", ""]
    lines += ["### Top-3 |x1| per layer (paper Figure 4, right)", ""]
    names = [s["name"] for s in states]
    n = len(states[0]["top3_abs_x1"])
    lines.append(_table(["layer", *names], [[li, *[" / ".join(f"{v:.4g}" for v in s["top3_abs_x1"][li])
                                                   for s in states]] for li in range(n)]))
    if "smoothing_effect.png" in report.get("plots", []):
        lines += ["", "![smoothing effect](smoothing_effect.png)"]
    return "\n".join(lines) + "\n"


def _count(state: dict, key: str) -> str:
    total = sum(state[key])
    share = state.get("removed", {}).get(key if key != "channel_outliers" else "channel_outliers_total")
    return f"{total}" + ("" if share is None else f" ({_pct(-share) if share < 0 else f'−{100 * share:.0f} %'})")


def _layers(layers: list[int]) -> str:
    if not layers:
        return "–"
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}–{layers[-1]}"
    return ", ".join(map(str, layers))


def plot_smoothing(states: list[dict], path: Path) -> Path:
    """Per layer, for each state: top-1 |x1|, the largest |a| at projection inputs, channel outliers, and the
    attention sink's share (when the attention was tapped)."""
    plt = pyplot()
    panels = (("top3_abs_x1", "largest |x1| (residual stream)", True),
              ("max_abs_linear_inputs", "largest |a| at projection inputs", True),
              ("channel_outliers", "channel-wise outliers (all points)", False),
              *((("sink_mass", "attention sink share (x7, mean over heads)", False),) if "sink_mass" in states[0]
                else ()))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.3 * len(panels), 4.2))
    for ax, (key, title, log) in zip(axes, panels):
        for s, marker in zip(states, "os^vD<>p*h"):
            ys = [v[0] if v else 0 for v in s[key]] if key == "top3_abs_x1" else s[key]
            ax.plot(range(len(ys)), ys, marker=marker, ms=3.5, lw=1.2, label=s["name"])
        if log:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Before and after smoothing")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
