"""report.md: the analysis as a person reads it."""
from __future__ import annotations

from collections import defaultdict


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _short(xs: list, n: int = 8) -> str:
    return ", ".join(map(str, xs[:n])) + (f" … (+{len(xs) - n})" if len(xs) > n else "")


def render_analysis(report: dict) -> str:
    a, m, d = report["analysis"], report["model"], report["data"]
    rules = a["rules"]
    lines = [
        f"# Outlier analysis: {m['name']}",
        "",
        f"- model: `{m['name']}` ({m['source']}, {m['model_type']}, {m['dtype']})"
        + (f", sha256 `{m['sha256'][:12]}…`" if m.get("sha256") else ""),
        f"- calibration: `{d['name']}`, {d['samples']} × {d['seq_len']} tokens, seed {d['seed']} (text sha256 `{d['sha256'][:12]}…`)",
        f"- rules: massive |a| > {rules['massive']['abs_threshold']:g} and > {rules['massive']['ratio']:g} × median |a|; "
        f"channel outlier |mean_j − mean| > {rules['channel']['m']:g}σ with std_j < {rules['channel']['beta']:.3g}"
        + (" (massive activations excluded)" if rules["channel"]["exclude_massive"] else ""),
        f"- probe: {report['timing']['probe_seconds']:.1f} s",
        "",
        "## How to read this report",
        "",
        "- **Massive activations (MA)** are single huge values at one token and channel. A **TMA** is created inside a "
        "layer (no input of that sublayer has an MA at that token); an **FMA** is the same value carried forward by the "
        "residual stream. Removing a family at its origin removes all of its FMAs downstream.",
        "- **Channel-wise outliers (CO)** are channels whose mean stands far from the rest with little spread: they set the "
        "quantization range of a whole tensor. **γ outliers** are norm rescaling entries that create COs at x2/y2 "
        "(the standardized input has none there). **OTCs** are rows of W_q/W_k/W_v that create COs at x3/x4/x5 that the "
        "input does not explain.",
        "- Points follow the paper's Figure 2: x1 layer input, x2 attention-norm output, x3/x4/x5 q/k/v, x8/x9 o-proj "
        "input/output, y1 MLP input, y2 MLP-norm output, y3..y7 inside the MLP (y6 = down-projection input).",
        "",
        "## Massive-activation families",
        "",
    ]
    fams = a["massive_families"]
    if fams:
        grouped = defaultdict(list)
        for f in fams:
            grouped[(f["origin_layer"], f["origin_point"])].append(f)
        rows = []
        for (ol, op), fs in sorted(grouped.items()):
            peak = max(fs, key=lambda f: abs(f["peak"]["value"]))
            rows.append([ol, op, _short(sorted({f["token"] for f in fs})), _short(sorted({c for f in fs for c in f["origin_channels"]})),
                         _short(sorted({c for f in fs for c in f["residual_channels"]})) or "–",
                         f"{min(f['layers'][0] for f in fs)}–{max(f['layers'][1] for f in fs)}",
                         f"{peak['peak']['value']:.1f} at L{peak['peak']['layer']} {peak['peak']['point']}"])
        lines.append(_table(["origin layer", "origin point", "token positions", "channels at origin",
                             "residual channels (x1)", "layers", "peak"], rows))
    else:
        lines.append("No massive activations found.")
    cancel = a.get("cancellations", [])
    if cancel:
        lines += ["", "Late layers that write an opposite-sign TMA against the family the stream carries (the paper's "
                      "cancelling TMAs). Removing a family must remove its cancellers too, or they write the MA back "
                      "with the opposite sign; the smoothing planner does so.", ""]
        lines.append(_table(["layer", "created at", "token", "channel", "carried", "written", "after", "cancels family of"],
                            [[c["layer"], c["origin_point"], c["token"], c["channel"], c["carried"], c["written"],
                              c["after"], f"L{c['cancels']['layer']} {c['cancels']['point']}"] for c in cancel]))
    n_tma = sum(1 for x in a["massive_activations"] if x["kind"] == "TMA")
    n_fma = sum(1 for x in a["massive_activations"] if x["kind"] == "FMA")
    lines += ["", f"{n_tma} TMA and {n_fma} FMA positions (layer, point, token, channel) in `report.json` → "
              "`massive_activations`.", "", "## Top-3 |a| at each layer's input x1", ""]
    top = a["top_abs"]["x1"]
    lines.append(_table(["layer", "top-1", "top-2", "top-3", "median |a|"],
                        [[li, *[f"{v:.1f}" for v in t], f"{a['median_abs']['x1'][li]:.3g}"] for li, t in enumerate(top)]))
    counts = a["channel_outlier_counts"]
    lines += ["", "## Channel-wise outliers per layer", ""]
    pts = [p for p in a["points"] if any(counts[p])] or ["x1", "x2"]
    lines.append(_table(["layer", *pts], [[li, *[counts[p][li] for p in pts]] for li in range(a["num_layers"])]))
    lines += ["", "## γ outlier channels (norm rescaling factors that create channel outliers)", ""]
    rows = [[li, p, g["norm"], _short(g["channels"]), _short(g["gamma"]), g["gamma_mean"]]
            for p, by in a["gamma_outliers"].items() for li, g in sorted(by.items(), key=lambda kv: int(kv[0]))]
    lines.append(_table(["layer", "point", "norm", "channels", "γ", "γ mean"], rows) if rows else "None found.")
    lines += ["", "## Outlier-triggering channels (rows of W_q / W_k / W_v)", ""]
    rows = [[li, p, _short(r)] for p, by in a["otc"].items() for li, r in sorted(by.items(), key=lambda kv: int(kv[0]))]
    lines.append(_table(["layer", "point", "rows"], rows) if rows else "None found.")
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"
