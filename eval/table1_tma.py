"""Paper Table 1 and Figure 6: the TMAs written into the residual stream where it is born and in the last two
layers, whose opposite signs cancel it.

    python eval/table1_tma.py --out eval/results/table1_smollm2.md       # + table1_smollm2.png beside it
    python eval/table1_tma.py --model meta-llama/Llama-3.2-3B --calibration wikitext2 --out table1.md
"""
import sys

import _common as c
from smooth_then_quant.detect.massive import tma_table
from smooth_then_quant.extras import available, pyplot

ROWS = (("Initial", "Initial Top"), ("Last-2", "Last-2 Top"), ("Last-1", "Last-1 Top"))


def plot(track: dict, num_layers: int, initial: int, path) -> None:
    """Figure 6: at the initial top-1 (token, channel), the TMA each layer's MLP writes and what the stream carries."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    layers = range(num_layers)
    written = [v or 0.0 for v in track["written"]]
    ax.bar(layers, written, color=["tab:red" if v < 0 else "tab:blue" for v in written], alpha=0.8,
           label="TMA written by the layer's MLP (y7)")
    ax.plot(layers, [v if v is not None else float("nan") for v in track["carried"]], "k.-", ms=4,
            label="carried by the stream (x1, massive only)")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_yscale("symlog", linthresh=100)
    ax.set_xlabel("layer")
    ax.set_title(f"token {track['token']}, channel {track['channel']}: born at layer {initial}, cancelled by "
                 "opposite-sign TMAs late")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run():
    p = c.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    ctx = c.setup(args)
    an = ctx["analysis"]
    r = an.result
    t = tma_table(an.massive, r.adapter.mlp_out_point, r.num_layers)
    lines = c.header("Table 1: TMA values where the stream's massive activation is born and in the last two layers",
                     args, ctx, perplexity=False)
    point = r.adapter.mlp_out_point
    layer_of = {"Initial": t["initial"], "Last-2": r.num_layers - 2, "Last-1": r.num_layers - 1}
    rows = []
    for key, name in ROWS:
        found = t["rows"][key]
        for i in range(2):
            if i < len(found):
                v, tok, ch, n = found[i]
                rows.append([f"{name}-{i + 1}", layer_of[key], f"{v:.2f}", f"({tok}, {ch})", n])
            else:
                rows.append([f"{name}-{i + 1}", "–" if layer_of[key] is None else layer_of[key], "N/A", "N/A", 0])
    lines += c.table(["massive activation", "layer", "value (mean over samples)", "position (token, channel)",
                      "samples"], rows)
    lines += ["", f"Values are the TMAs each layer's MLP writes into the residual stream ({point}, the down "
                  "projection's output), mean over the calibration windows that hold them at that (token, channel). "
                  "Initial: the layer whose written TMA the stream carries on the furthest (the paper's initial "
                  "layers). N/A: no TMA at that layer (the paper's N/A for the smaller models: only the last layer "
                  "cancels)."]
    track = t["track"]
    if track:
        late = [(li, v) for li, v in enumerate(track["written"]) if v is not None and li > t["initial"]]
        opposite = [(li, v) for li, v in late if v * track["written"][t["initial"]] < 0]
        lines += ["", f"Figure 6 on this model: token {track['token']}, channel {track['channel']} is written "
                      f"{track['written'][t['initial']]:.1f} at layer {t['initial']}; later TMAs at the same place: "
                      + (", ".join(f"layer {li}: {v:.1f}" for li, v in late) or "none")
                      + f" ({len(opposite)} of opposite sign)."]
        if available("matplotlib"):
            png = args.out.with_suffix(".png")
            plot(track, r.num_layers, t["initial"], png)
            lines += ["", f"![Figure 6]({png.name})"]
    else:
        lines += ["", "No TMA written by an MLP is carried on by the residual stream here: no Figure 6."]
    c.write(args, lines, ctx)


if __name__ == "__main__":
    sys.exit(c.main(run))
