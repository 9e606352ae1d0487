"""The table users come for: perplexity of {FP, each scheme} x {baseline, paper, smoothed}.

Reference for every row is the float, unsmoothed model (FP / baseline): ΔPPL = PPL - PPL_FP.
A quantized row's "degradation reduced" compares its ΔPPL with the baseline row of the same
scheme: 1 - ΔPPL(state) / ΔPPL(baseline), shown only where the baseline's ΔPPL exceeds 0.1 % of
the FP perplexity (below that the ratio is noise). A smoothing that costs float accuracy pays for it
here too, since its ΔPPL is measured against the original model.
"""
from __future__ import annotations

FP = "FP"
MIN_DEGRADATION = 1e-3  # a baseline ΔPPL below 0.1 % of FP is noise: no reduction is computed from it


def degradation_rows(ppl: dict[tuple[str, str], dict[str, float]], schemes: list[str], states: list[str],
                     datasets: list[str]) -> list[dict]:
    """ppl[(scheme or FP, state)][dataset] -> one row per (scheme, state), FP first."""
    ref = ppl[(FP, "baseline")]
    rows = []
    for scheme in [FP, *schemes]:
        for state in states:
            if (scheme, state) not in ppl:
                continue
            vals = ppl[(scheme, state)]
            delta = {d: vals[d] - ref[d] for d in datasets}
            reduced = {}
            if scheme != FP and state != "baseline":
                for d in datasets:
                    base = ppl[(scheme, "baseline")][d] - ref[d]
                    reduced[d] = None if base <= MIN_DEGRADATION * ref[d] else 1 - delta[d] / base
            rows.append({"scheme": scheme, "state": state, "ppl": vals, "delta_ppl": delta,
                         "degradation_reduced": reduced or None})
    return rows


def best_reduction(rows: list[dict], scheme: str, dataset: str) -> tuple[str, float] | None:
    """(state, reduction) with the largest degradation cut for one scheme and dataset."""
    cands = [(r["state"], r["degradation_reduced"][dataset]) for r in rows
             if r["scheme"] == scheme and r["degradation_reduced"] and r["degradation_reduced"][dataset] is not None]
    return max(cands, key=lambda c: c[1]) if cands else None
