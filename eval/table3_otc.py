"""Paper Table 3: set the OTC rows of W_q / W_k / W_v to their mean vs as many random rows.

    python eval/table3_otc.py --out eval/results/table3_smollm2.md
"""
import sys

import _common as c
from smooth_then_quant.evaluate.ablation import table3_otc


def run():
    args = c.parser(__doc__.splitlines()[0]).parse_args()
    ctx = c.setup(args)
    rows = table3_otc(ctx["loaded"].model, ctx["loaded"].tokenizer, ctx["analysis"], args.datasets, ctx["ecfg"],
                      args.seed)
    lines = c.header("Table 3: importance of the outlier-triggering channels (perplexity)", args, ctx)
    lines += c.table(["intervention", *args.datasets, "rows changed"],
                     [[r.name, *[c.fmt(r.ppl[d]) for d in args.datasets], r.detail] for r in rows])
    lines += ["", "OTCs: rows of the projection whose output channel is a channel-wise outlier (the rule above) that "
                  "the input's own outlier channels do not explain (smooth_then_quant.detect.otc). Each changed row "
                  "is set to the mean of its entries; random rows are drawn (seeded) from the same matrices, "
                  "excluding the OTCs."]
    c.write(args, lines, ctx)


if __name__ == "__main__":
    sys.exit(c.main(run))
