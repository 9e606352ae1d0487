"""Massive activations (paper §3): find them, then tell true (TMA) from fake (FMA).

Rule (Sun et al. 2024, used by the paper): |a| > 100 and |a| > 1000 × median |a| of the tensor.

Origin, read from the data rather than assumed at y6: walking the points in dataflow order,
an MA at (sample, token) is *created* at a point when none of the points it is computed
from (adapter.flow: y6 <- y5, y4; x1 <- previous y1 + previous MLP output; ...) has an MA
at that (sample, token). Otherwise it inherits the earliest origin among its parents.

Kind: TMA where it is created, and at later points of the same block of the same layer
(y6 -> y7: still inside the layer). FMA everywhere the residual stream carries it: the
residual points x1/y1 and whatever a later block computes from them.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ..arch import RESIDUAL_POINTS
from ..errors import SmoothQuantError
from ..probe import MassiveRule, ProbeResult


@dataclass(frozen=True)
class MassiveActivation:
    layer: int
    point: str
    sample: int
    token: int
    channel: int
    value: float
    kind: str  # "TMA" or "FMA"
    origin_layer: int
    origin_point: str
    token_id: int | None = None


def find_massive(result: ProbeResult, rule: MassiveRule = MassiveRule()) -> list[MassiveActivation]:
    """Every massive activation seen in the calibration pass, with its kind and origin."""
    cfg = result.config
    if rule.abs_threshold < cfg.massive.abs_threshold or rule.ratio < cfg.massive.ratio:
        raise SmoothQuantError(
            f"massive-activation thresholds ({rule.abs_threshold}, {rule.ratio}x median) are below what the "
            f"probe recorded ({cfg.massive.abs_threshold}, {cfg.massive.ratio}x); probe again with lower floors.")
    adapter = result.adapter
    order = {p: i for i, p in enumerate(adapter.point_names)}
    present: dict[tuple[int, str], set[tuple[int, int]]] = {}
    origin: dict[tuple[int, str, int, int], tuple[int, str]] = {}
    found: list[MassiveActivation] = []
    for layer, point in result.points():
        records = [r for r in result.at(layer, point).massive if rule.holds(r.value, r.median)]
        here = present[(layer, point)] = {(r.sample, r.token) for r in records}
        parents = [(layer + off, p) for off, p in adapter.parents(point) if layer + off >= 0]
        for st in here:
            inherited = [origin[(pl, pp, *st)] for pl, pp in parents if st in present.get((pl, pp), ())]
            origin[(layer, point, *st)] = min(inherited, key=lambda o: (o[0], order[o[1]])) if inherited \
                else (layer, point)
        for r in records:
            ol, op = origin[(layer, point, r.sample, r.token)]
            created = (ol, op) == (layer, point)
            same_block = ol == layer and adapter.block_of(op) == adapter.block_of(point)
            kind = "TMA" if created or (same_block and point not in RESIDUAL_POINTS) else "FMA"
            found.append(MassiveActivation(layer, point, r.sample, r.token, r.channel, r.value, kind, ol, op,
                                           r.token_id))
    return found


def summarize_massive(mas: list[MassiveActivation]) -> list[dict]:
    """One entry per (layer, point, token, channel) over the samples: the largest |value| seen."""
    groups: dict[tuple, list[MassiveActivation]] = defaultdict(list)
    for a in mas:
        groups[(a.layer, a.point, a.token, a.channel)].append(a)
    out = []
    for (layer, point, token, channel), items in groups.items():
        top = max(items, key=lambda a: abs(a.value))
        out.append({
            "layer": layer, "point": point, "token": token, "channel": channel, "value": round(top.value, 4),
            "kind": top.kind, "samples": len({a.sample for a in items}),
            "origin": {"layer": top.origin_layer, "point": top.origin_point}, "token_id": top.token_id,
        })
    return out


def massive_families(mas: list[MassiveActivation]) -> list[dict]:
    """Group MAs by where they were created and at which token: one family per (origin, token).

    For each family: the channels at its origin, the residual-stream channels that carry it
    (at x1), the layers it spans and its largest value.
    """
    fams: dict[tuple[int, str, int], list[MassiveActivation]] = defaultdict(list)
    for a in mas:
        fams[(a.origin_layer, a.origin_point, a.token)].append(a)
    out = []
    for (ol, op, token), items in sorted(fams.items()):
        at_origin = [a for a in items if (a.layer, a.point) == (ol, op)]
        carried = [a for a in items if a.point == RESIDUAL_POINTS[0]]
        peak = max(items, key=lambda a: abs(a.value))
        out.append({
            "origin_layer": ol, "origin_point": op, "token": token,
            "origin_channels": sorted({a.channel for a in at_origin}),
            "origin_value": round(max(at_origin, key=lambda a: abs(a.value)).value, 4) if at_origin else None,
            "residual_channels": sorted({a.channel for a in carried}),
            "layers": [min(a.layer for a in items), max(a.layer for a in items)],
            "samples": len({a.sample for a in at_origin}),
            "peak": {"layer": peak.layer, "point": peak.point, "channel": peak.channel,
                     "value": round(peak.value, 4)},
            "token_id": at_origin[0].token_id if at_origin else None,
        })
    return out


def cancellations(mas: list[MassiveActivation], residual_in: str, branch_out: str) -> list[dict]:
    """TMAs written into the residual stream against the FMA it carries (the paper's late layers).

    residual_in: the residual point a branch output is added to (y1 for the MLP), branch_out: the
    branch output point (y7 / y5). A TMA at branch_out of layer L, channel c, cancels when the
    stream at residual_in of layer L holds an FMA of opposite sign at the same (sample, token, c)
    and the sum is smaller than the FMA. One entry per (layer, token, channel).
    """
    carried = {(a.layer, a.sample, a.token, a.channel): a for a in mas if a.point == residual_in and a.kind == "FMA"}
    out: dict[tuple, dict] = {}
    for a in mas:
        if a.point != branch_out or a.kind != "TMA":
            continue
        f = carried.get((a.layer, a.sample, a.token, a.channel))
        if f is None or f.value * a.value >= 0 or abs(f.value + a.value) >= abs(f.value):
            continue
        key = (a.layer, a.token, a.channel)
        if key not in out or abs(a.value) > abs(out[key]["written"]):
            out[key] = {"layer": a.layer, "origin_point": a.origin_point, "token": a.token, "channel": a.channel,
                        "carried": round(f.value, 2), "written": round(a.value, 2),
                        "after": round(f.value + a.value, 2),
                        "cancels": {"layer": f.origin_layer, "point": f.origin_point}}
    return sorted(out.values(), key=lambda e: (e["layer"], e["token"], e["channel"]))


def tma_table(mas: list[MassiveActivation], branch_out: str, num_layers: int, top: int = 2) -> dict:
    """The paper's Table 1: the TMAs a layer's MLP writes into the residual stream (at `branch_out`, y7 / GPT-2's y5),
    mean over the samples per (token, channel), in the initial layer and the last two layers.

    Initial: the layer whose written TMA the stream carries on the furthest (FMAs at x1 of the following layers,
    same token and channel): where the stream's massive activation is born. -> {"initial": layer, "rows": {name: [(value, token, channel, samples)]}, "track": {"token",
    "channel", "written": [mean or None per layer], "carried": [mean at x1 or None per layer]}}: the track follows
    the initial top-1 (token, channel) through every layer (the paper's Figure 6)."""
    written: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    stream: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    for a in mas:
        if a.point == branch_out and a.kind == "TMA":
            written[(a.layer, a.token, a.channel)].append(a.value)
        elif a.point == RESIDUAL_POINTS[0]:
            stream[(a.layer, a.token, a.channel)].append(a.value)
    mean = {k: sum(v) / len(v) for k, v in written.items()}

    def tops(layer: int | None) -> list[tuple[float, int, int, int]]:
        here = [(v, t, c, len(written[(li, t, c)])) for (li, t, c), v in mean.items() if li == layer]
        return sorted(here, key=lambda r: (-abs(r[0]), r[1], r[2]))[:top]

    def carried_for(li: int, t: int, c: int) -> int:  # consecutive layers whose input x1 carries it on
        n = 0
        while (li + 1 + n, t, c) in stream:
            n += 1
        return n

    spans = {k: carried_for(*k) for k in mean}
    initial = min((k for k in spans if spans[k]), key=lambda k: (-spans[k], k), default=(None,))[0]
    rows = {"Initial": tops(initial), "Last-2": tops(num_layers - 2), "Last-1": tops(num_layers - 1)}
    track = None
    if rows["Initial"]:
        _, t, c, _ = rows["Initial"][0]
        avg = {k: sum(v) / len(v) for k, v in stream.items()}
        track = {"token": t, "channel": c, "written": [mean.get((li, t, c)) for li in range(num_layers)],
                 "carried": [avg.get((li, t, c)) for li in range(num_layers)]}
    return {"initial": initial, "rows": rows, "track": track}
