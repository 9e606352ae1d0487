"""Paper Table 6 (appendix B): channels beyond 6/4/2 SD in QKV, norm γ and MLP set to the mean vs random.

    python eval/table6_sd.py --out eval/results/table6_smollm2.md
"""
import sys

import _common as c
from smooth_then_quant.evaluate.ablation import table6_sd

KS = (6.0, 4.0, 2.0)


def run():
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    ctx = c.setup(args)
    base, rows = table6_sd(ctx["loaded"].model, ctx["loaded"].tokenizer, args.datasets, ctx["ecfg"], KS, args.seed)
    lines = c.header("Table 6: outlier vs random channel replacement at 6 / 4 / 2 SD (perplexity)", args, ctx)
    for d in args.datasets:
        lines += [f"## {d} (base model {c.fmt(base[d])})", ""]
        lines += c.table(["intervention (set to mean)", *[f"{k:g} SD" for k in KS], "channels hit (6 / 4 / 2 SD)"],
                         [[name, *[c.fmt(r[d]) for r in res], " / ".join(det)] for name, res, det in rows])
        lines.append("")
    lines += ["A channel is a row (output channel) of a q/k/v or MLP weight, with its row mean as statistic, or an "
              "entry of a norm's rescaling factor γ; it is an outlier when it lies beyond k standard deviations of "
              "the mean over its matrix (or γ vector). Rows are set to their own mean, γ entries to the γ mean. "
              "Random rows: as many per matrix, seeded, excluding the outliers."]
    c.write(args, lines, ctx)


if __name__ == "__main__":
    sys.exit(c.main(run))
