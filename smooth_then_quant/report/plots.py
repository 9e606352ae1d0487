"""PNG plots of an analysis (matplotlib, Agg backend: no screen needed)."""
from __future__ import annotations

from pathlib import Path

from ..extras import pyplot
from ..detect import channel_outliers
from ..detect.channels import channel_moments


def plot_top_activations(analysis, path: Path) -> Path:
    """Paper Figures 4/5: the three largest |a| at each layer's input x1 (left) and at the
    down-projection input where TMAs are born (right), across layers."""
    adapter = analysis.result.adapter
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, point, title in ((axes[0], "x1", "layer input x1 (residual stream)"),
                             (axes[1], adapter.massive_point, f"down-projection input {adapter.massive_point}")):
        tops = analysis.top_abs(point, 3)
        layers = range(len(tops))
        for rank, marker in zip(range(3), "o^s"):
            ax.plot(layers, [t[rank] if len(t) > rank else 0 for t in tops], marker=marker, ms=4,
                    label=f"top-{rank + 1} |a|")
        for kind, color in (("TMA", "tab:red"), ("FMA", "tab:gray")):
            hit = sorted({a.layer for a in analysis.massive if a.point == point and a.kind == kind})
            if hit:
                ax.scatter(hit, [tops[li][0] for li in hit], s=80, facecolors="none", edgecolors=color, lw=1.5,
                           label=f"{kind} at this layer", zorder=3)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_ylabel("|activation|")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Massive activations: TMA = created in this layer, FMA = carried by the residual stream")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_channel_means(analysis, path: Path) -> Path:
    """Paper Figures 7/8: channel means at x1 and x2 (massive activations excluded), outliers in red,
    for the first layer and for the layer with the most outliers at x2."""
    r, rule = analysis.result, analysis.config.channel
    counts = analysis.outlier_counts()["x2"]
    worst = max(range(len(counts)), key=lambda i: counts[i])
    layers = [0] if worst == 0 else [0, worst]
    plt = pyplot()
    fig, axes = plt.subplots(len(layers), 2, figsize=(12, 3.2 * len(layers)), squeeze=False)
    for row, li in enumerate(layers):
        for col, point in enumerate(("x1", "x2")):
            st = r.at(li, point)
            mean = channel_moments(st, rule)[0].numpy()
            out = channel_outliers(st, rule)
            ax = axes[row][col]
            ax.scatter(range(len(mean)), mean, s=3, color="tab:blue")
            ax.scatter(out, mean[out], s=18, color="tab:red", label=f"{len(out)} outlier channels")
            ax.set_title(f"layer {li}, {point}: channel means (m={rule.m:g}, β={rule.beta:.3g})")
            ax.set_xlabel("channel")
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_outlier_counts(analysis, path: Path) -> Path:
    """Paper Figure 9: number of channel-wise outliers per layer at the norm inputs and outputs."""
    counts = analysis.outlier_counts()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for point in ("x1", "x2", "y1", "y2"):
        ax.plot(counts[point], marker="o", ms=3, label=point)
    ax.set_xlabel("layer")
    ax.set_ylabel("channel-wise outliers")
    ax.set_title("Channel-wise outliers per layer (norm inputs x1/y1, norm outputs x2/y2)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_attention(analysis, path: Path) -> Path:
    """x6/x7 across layers: the sink share (mean over heads and the largest head) and the number of sink heads
    (left), the largest attention score (right); the layers where massive-activation families are born marked."""
    att = analysis.attention
    per = att["per_layer"]
    layers = [x["layer"] for x in per]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ax = axes[0]
    ax.plot(layers, [x["sink_mass"] for x in per], marker="o", ms=3, label="sink share, mean over heads")
    ax.plot(layers, [x["top_sink_share"] for x in per], marker="^", ms=3, label="sink share, largest head")
    ax.plot(layers, [x["sink_heads"] / att["heads"] for x in per], marker="s", ms=3, label="share of heads that sink")
    ax.set_ylim(0, 1.02)
    ax.set_title("x7: attention taken by one key")
    axes[1].plot(layers, [x["max_score"] for x in per], marker="o", ms=3, color="tab:purple", label="largest score")
    axes[1].set_title("x6: largest attention score q·kᵀ")
    born = sorted({f["origin_layer"] for f in att["families"]})
    for a in axes:
        for i, li in enumerate(born):
            a.axvline(li, color="tab:red", ls=":", lw=1, label="MA family born" if i == 0 else None)
        a.set_xlabel("layer")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle("Attention outliers: sinks and scores per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(analysis, path: Path) -> Path:
    """Weight outliers across layers: max |w| / median |w| per projection (left), outlier rows + columns (right)."""
    w = analysis.weights
    n = analysis.result.num_layers
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for p, marker in zip(w, "os^vD<>p*h"):
        axes[0].plot(range(n), [w[p][li]["ratio"] or 0 for li in range(n)], marker=marker, ms=3, label=f"W → {p}")
        axes[1].plot(range(n), [len(w[p][li]["rows"]) + len(w[p][li]["cols"]) for li in range(n)], marker=marker,
                     ms=3, label=f"W → {p}")
    axes[0].set_yscale("log")
    axes[0].set_title("largest |w| / median |w|")
    axes[1].set_title(f"outlier rows + columns ({analysis.config.weights.k:g}σ)")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Weight outliers per projection (named by the point it computes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(analysis, folder: Path) -> list[str]:
    plots = [plot_top_activations(analysis, folder / "top_activations.png"),
             plot_channel_means(analysis, folder / "channel_means.png"),
             plot_outlier_counts(analysis, folder / "channel_outliers.png")]
    if analysis.weights:
        plots.append(plot_weights(analysis, folder / "weight_outliers.png"))
    if analysis.attention:
        plots.append(plot_attention(analysis, folder / "attention.png"))
    return [p.name for p in plots]
