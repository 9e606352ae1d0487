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
        "- Points follow the paper's Figure 2: x1 layer input, x2 attention-norm output, x3/x4/x5 q/k/v, x6 attention "
        "scores q·kᵀ, x7 softmax, x8/x9 o-proj input/output, y1 MLP input, y2 MLP-norm output, y3..y7 inside the MLP "
        "(y6 = down-projection input).",
        "- **Weight outliers** (the same study's weight kind): per projection, the rows and columns whose max |w| "
        "stands k·σ above the rest, and the largest |w| over the median |w|. A projection is named by the point it "
        "computes (x3 = W_q, x9 = W_o, y7 = W_down, ...).",
        "- **Attention outliers** (\"Systematic Outliers in Large Language Models\"): an **attention sink** is a key that "
        "takes a large share of a head's attention (x7) in most windows. That study finds the sinks on the tokens that "
        "carry massive activations; the attention section says, per sink head, how many of its sink keys carry one, "
        "and per family whether the massive activation is born before the first sink on its token.",
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
    lines += render_weights(a.get("weight_outliers"), rules.get("weights"), a["num_layers"])
    lines += render_attention(a.get("attention"), rules.get("sink"))
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def render_attention(att: dict | None, rule: dict | None) -> list[str]:
    """The attention section: x6/x7 per layer, the sink heads, and the sinks' link to the massive activations."""
    lines = ["", "## Attention: scores (x6), softmax (x7), sinks", ""]
    if not att:
        return lines + ["Not measured (analysis.attention: false)."]
    lines += [f"Sink rule: one key takes more than {rule['share']:g} of a head's attention in a window, in at least "
              f"{100 * rule['windows']:g} % of the windows. Sink share: the largest mean share of any key position, "
              f"averaged over the heads (a head attending uniformly gives the first key {att['uniform_share']:.4f} at "
              "this window length); entropy in nats (mean over queries and heads).", ""]
    lines.append(_table(["layer", "max score (head: query→key)", "sink heads", "sink share", "largest head share",
                         "entropy"],
                        [[x["layer"], f"{x['max_score']:.4g} (h{x['max_score_head']}: {x['max_score_at']['query']}→"
                          f"{x['max_score_at']['key']})", f"{x['sink_heads']}/{att['heads']}", f"{x['sink_mass']:.4f}",
                          f"{x['top_sink_share']:.4f}", f"{x['entropy']:.3f}"] for x in att["per_layer"]]))
    heads = att["sink_heads"]
    if heads:
        top = sorted(heads, key=lambda h: -h["share"])[:12]
        lines += ["", f"{len(heads)} sink heads; the {len(top)} strongest:", ""]
        lines.append(_table(["layer", "head", "windows", "mean share", "key positions", "token ids",
                             "sink keys carrying an MA"],
                            [[h["layer"], h["head"], f"{100 * h['windows']:.0f} %", f"{h['share']:.3f}",
                              _short(h["keys"]), _short(h["token_ids"]), f"{100 * h['on_massive']:.0f} %"]
                             for h in top]))
    else:
        lines += ["", "No sink heads under this rule."]
    fams = sorted((f for f in att["families"] if f["sink_heads"]), key=lambda f: (-f["sink_heads"], f["origin_layer"]))
    if fams:
        lines += ["", "Massive-activation families with sinks on their token (most sink heads first):", ""]
        lines.append(_table(["family (origin, token)", "token id", "sink heads on it", "first sink layer",
                             "MA born before the sink"],
                            [[f"L{f['origin_layer']} {f['origin_point']}, token {f['token']}", f["token_id"],
                              f["sink_heads"], f["first_sink_layer"], "yes" if f["born_before_sink"] else "no"]
                             for f in fams[:12]]))
    rest = len(att["families"]) - len(fams)
    if rest:
        lines += ["", f"{rest} massive-activation families have no sink head on their token in most windows."]
    return lines


def render_weights(w: dict | None, rule: dict | None, n: int) -> list[str]:
    """Weight outliers: per layer and projection, max |w| / median |w| and the outlier rows / columns."""
    if not w:
        return []
    pts = list(w)
    lines = ["", "## Weight outliers (per projection: max |w| / median |w|, outlier rows / columns)", "",
             f"A projection is named by the point it computes. Rows / columns: max |w| above the mean by "
             f"{rule['k']:g}σ.", ""]
    lines.append(_table(["layer", *pts], [[li, *[_weight_cell(w[p][str(li)] if str(li) in w[p] else w[p][li])
                                                 for p in pts]] for li in range(n)]))
    return lines


def _weight_cell(e: dict) -> str:
    ratio = "–" if e["ratio"] is None else f"{e['ratio']:.3g}"
    return f"{ratio} ({len(e['rows'])}/{len(e['cols'])})"
