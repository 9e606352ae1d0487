"""Attention outliers ("Systematic Outliers in Large Language Models", An et al. 2025): attention sinks.

A head has a sink when one key takes a large share of its attention: that study finds the sinks on the tokens that
carry massive activations, and reads the pair as a context-aware scaling mechanism (the sink absorbs attention a
head does not need). Here, from the probe's x7 statistics (probe/attention_stats.py):

- a *sink record*: in one window, a key whose share of a head's attention mass, Σ_q p[q, k] / T, is above
  `SinkRule.share`;
- a *sink head*: a (layer, head) with sink records in at least `SinkRule.windows` of the windows;
- its link to the massive-activation families: the share of its sink records that sit on a (window, token)
  carrying a family's massive activation, and for each family the first layer whose heads sink on its token,
  so the report says whether the MA is born before the sink appears.
"""
from __future__ import annotations

from collections import Counter, defaultdict

from pydantic import Field

from ..errors import SmoothQuantError
from ..probe import ProbeResult
from ..schema import Config
from .massive import MassiveActivation


class SinkRule(Config):
    """An attention sink: a key taking more than `share` of a head's attention in a window, in at least `windows`
    of the windows."""
    share: float = Field(0.3, gt=0, le=1, description="of a head's attention in one window")
    windows: float = Field(0.5, gt=0, le=1, description="fraction of the windows")


def _per_layer(st) -> dict:
    top_share = st.mean_share.amax(1)  # [H]: the largest mean share of any key position, per head
    head = int(st.score_max.argmax())
    return {"max_score": round(float(st.score_max[head]), 4), "max_score_head": head,
            "max_score_at": dict(zip(("sample", "query", "key"), st.score_max_at[head])),
            "sink_mass": round(float(top_share.mean()), 5), "top_sink_share": round(float(top_share.max()), 5),
            "entropy": round(float(st.entropy.mean()), 5)}


def attention_outliers(result: ProbeResult, massive: list[MassiveActivation], rule: SinkRule = SinkRule()) -> dict:
    """report.json's `attention`: per layer the x6/x7 summary, the sink heads, and each MA family's sinks."""
    if not result.attention:
        return {}
    floor = result.config.sink_floor
    if rule.share < floor:
        raise SmoothQuantError(f"analysis.sink.share {rule.share:g} is below what the probe recorded ({floor:g}); "
                               "probe again with a lower sink_floor.")
    families: dict[tuple[int, str, int], set[tuple[int, int]]] = defaultdict(set)
    token_ids: dict[tuple[int, str, int], int | None] = {}
    for a in massive:
        key = (a.origin_layer, a.origin_point, a.token)
        families[key].add((a.sample, a.token))
        token_ids.setdefault(key, a.token_id)
    on_ma = set().union(*families.values()) if families else set()

    layers, heads = [], []
    first_sink: dict[tuple[int, str, int], int] = {}
    hit_heads: Counter = Counter()
    for li in range(result.num_layers):
        st = result.attention[li]
        records = defaultdict(list)
        for r in st.sinks:
            if r.share > rule.share:
                records[r.head].append(r)
        n_sink = 0
        for h, rs in sorted(records.items()):
            windows = len({r.sample for r in rs}) / st.windows
            if windows < rule.windows:
                continue
            n_sink += 1
            at = {(r.sample, r.key) for r in rs}
            heads.append({"layer": li, "head": h, "windows": round(windows, 4),
                          "share": round(sum(r.share for r in rs) / len(rs), 5),
                          "keys": [k for k, _ in Counter(r.key for r in rs).most_common(3)],
                          "token_ids": [t for t, _ in Counter(r.token_id for r in rs).most_common(3)],
                          "on_massive": round(len(at & on_ma) / len(at), 4)})
            for fam, where in families.items():
                if len(at & where) >= 0.5 * len(where):  # this head sinks on the family's token in most windows
                    hit_heads[fam] += 1
                    first_sink.setdefault(fam, li)
        layers.append({"layer": li, "sink_heads": n_sink, **_per_layer(st)})
    fams = [{"origin_layer": ol, "origin_point": op, "token": tok, "token_id": token_ids[(ol, op, tok)],
             "sink_heads": hit_heads[(ol, op, tok)], "first_sink_layer": first_sink.get((ol, op, tok)),
             "born_before_sink": None if (ol, op, tok) not in first_sink else ol < first_sink[(ol, op, tok)]}
            for ol, op, tok in sorted(families)]
    t = result.attention[0].seq_len
    uniform = sum(1 / (q + 1) for q in range(t)) / t  # key 0's share when every query attends uniformly (causal)
    return {"rule": rule.model_dump(), "heads": result.attention[0].heads, "uniform_share": round(uniform, 5),
            "per_layer": layers, "sink_heads": heads,
            "families": fams, "overflow": sum(st.sink_overflow for st in result.attention.values())}
