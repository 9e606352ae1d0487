"""Streaming statistics of one activation point, in memory that does not grow with the data.

Per channel: count, shifted first and second moments (float64), min and max.
Per tensor: the median |a| of each batch, the top-k |a| with (sample, token, channel),
and every element that passes the massive-activation floor (bounded list; the moments of
the other elements are summed apart per channel, so statistics *without* the massive activations
are exact whatever the cap, with no cancellation against the massive values).

Under torchrun each rank accumulates its own batches with the same shift and `merge` adds the
parts: float64 sums, so the result does not depend on the world size (tests/test_dist.py).

Median |a|: exact (`kthvalue`) for batches of at most 2**18 elements; above that, the median
of a fixed random subsample of 2**14 elements (rank error about ±0.4 % of the distribution,
far inside the paper's factor of 1000). The point's median is the median of its batch medians.

Why hand-written and not torch.aminmax / var_mean: reductions over dim 0 of a row-major
[tokens, channels] matrix are far slower in those kernels on CPU than sum(0)/amax(0) (measured
here on a [2048, 1536] float32 batch: var_mean(dim=0) 8.4 ms vs sum(0) 0.15 ms + (d*d).sum(0) 0.4 ms;
aminmax(dim=0) 5.3 ms vs amax(0) + amin(0) 0.3 ms); the probe must stay within 1.5x a plain forward
pass (bench/results/analysis_pass.md).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

EXACT_MEDIAN_MAX = 2**18
MEDIAN_SUBSAMPLE = 2**14
_SUBSAMPLE_CACHE: dict[int, torch.Tensor] = {}


def median_abs(x: torch.Tensor) -> float:
    """Median of |x| over all elements (exact for small tensors, else estimated)."""
    flat = x.reshape(-1)
    n = flat.numel()
    if n <= EXACT_MEDIAN_MAX:
        return flat.abs().kthvalue((n + 1) // 2).values.item()
    idx = _SUBSAMPLE_CACHE.get(n)
    if idx is None:
        g = torch.Generator().manual_seed(n)
        idx = _SUBSAMPLE_CACHE[n] = torch.randint(0, n, (MEDIAN_SUBSAMPLE,), generator=g)
    sample = flat[idx].abs()
    return sample.kthvalue((MEDIAN_SUBSAMPLE + 1) // 2).values.item()


def topk_abs(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k largest |x| of x: [N, C] -> (signed values [k], rows [k], channels [k]).

    Exact and cheap: an element in the global top-k lies in one of the k channels with
    the largest max|x| (otherwise k other channels would each hold a larger element).
    """
    n, c = x.shape
    col_absmax = torch.maximum(x.amax(0), -x.amin(0))  # [C]
    k_ch = min(k, c)
    channels = col_absmax.topk(k_ch).indices  # [k]
    sub = x[:, channels]  # [N, k]
    k_el = min(k, sub.numel())
    flat = sub.abs().reshape(-1).topk(k_el).indices
    rows, cols = flat // k_ch, flat % k_ch
    return sub[rows, cols], rows, channels[cols]


_WORKSPACE: dict[tuple[int, ...], torch.Tensor] = {}


def _workspace(shape: torch.Size) -> torch.Tensor:
    """One scratch buffer per activation shape. Allocating and freeing an activation-sized
    temporary at each of the hundreds of hooks per batch made glibc keep the freed blocks
    resident (RSS +2-3 GiB over a SmolLM2 pass with no live reference); reusing a buffer does not."""
    key = tuple(shape)
    buf = _WORKSPACE.get(key)
    if buf is None:
        buf = _WORKSPACE[key] = torch.empty(key)
    return buf


def release_workspace() -> None:
    _WORKSPACE.clear()


@dataclass
class MassiveRecord:
    sample: int
    token: int
    channel: int
    value: float
    median: float  # median |a| of the batch the element was seen in
    token_id: int | None = None


@dataclass
class PointStats:
    """Finished statistics of one (layer, point). Tensors are float64, shape [C]."""

    channels: int
    count: int  # elements per channel
    mean: torch.Tensor
    std: torch.Tensor
    mean_ex: torch.Tensor  # without the massive activations
    std_ex: torch.Tensor
    count_ex: torch.Tensor  # elements per channel without the massive activations
    absmax: torch.Tensor
    tensor_mean: float
    tensor_std: float
    tensor_mean_ex: float
    tensor_std_ex: float
    median_abs: float
    top: list[tuple[float, int, int, int]]  # (value, sample, token, channel), largest |value| first
    massive: list[MassiveRecord]
    massive_overflow: int  # records past the cap (counted, not kept)
    calls: int
    shape: tuple[int, ...]  # shape of the last tensor seen, e.g. (batch, tokens, channels)


@dataclass
class PointAccumulator:
    channels: int
    top_k: int = 10
    massive_abs: float = 100.0
    massive_ratio: float = 1000.0
    max_records: int = 20000
    # running state
    count: int = 0
    calls: int = 0
    shape: tuple[int, ...] = ()
    shift: torch.Tensor | None = None  # [C] reference per channel, keeps moments well conditioned
    s1: torch.Tensor | None = None
    s2: torch.Tensor | None = None
    cmax: torch.Tensor | None = None
    cmin: torch.Tensor | None = None
    ex_n: torch.Tensor | None = None
    ex_s1: torch.Tensor | None = None  # shifted sums over the elements that are *not* massive activations
    ex_s2: torch.Tensor | None = None
    medians: list[float] = field(default_factory=list)
    top_vals: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    top_pos: torch.Tensor = field(default_factory=lambda: torch.empty(0, 3, dtype=torch.long))
    records: list[MassiveRecord] = field(default_factory=list)
    overflow: int = 0
    last_offset: int = -1  # sample offset of the latest batch (whose shape `shape` is)

    def update(self, x: torch.Tensor, seq_len: int, sample_offset: int,
               token_ids: torch.Tensor | None = None, shape: tuple[int, ...] = ()) -> None:
        """Fold one batch in. x: [N, C] float32 with N = batch * seq_len, token-major. The first batch sets the
        shift (`first_shift`), unless the caller set one (under torchrun: the first window's, from rank 0)."""
        n, c = x.shape
        if self.s1 is None:
            if self.shift is None:
                self.shift = first_shift(x)
            z = torch.zeros(c, dtype=torch.float64)
            self.s1, self.s2, self.ex_s1, self.ex_s2 = z.clone(), z.clone(), z.clone(), z.clone()
            self.ex_n = torch.zeros(c, dtype=torch.long)
            self.cmax = torch.full((c,), -float("inf"))
            self.cmin = torch.full((c,), float("inf"))
        self.calls += 1
        self.count += n
        if sample_offset >= self.last_offset:
            self.shape, self.last_offset = shape or tuple(x.shape), sample_offset

        bmax, bmin = x.amax(0), x.amin(0)
        self.cmax = torch.maximum(self.cmax, bmax)
        self.cmin = torch.minimum(self.cmin, bmin)

        med = median_abs(x)
        self.medians.append(med)

        vals, rows, chans = topk_abs(x, self.top_k)
        pos = torch.stack([sample_offset + rows // seq_len, rows % seq_len, chans], 1)
        self.top_vals, self.top_pos = top_of(torch.cat([self.top_vals, vals]), torch.cat([self.top_pos, pos]), self.top_k)

        # Moments: float32 sums of shifted values per batch, except in channels holding massive
        # activations, where float32 would lose the small values next to a huge one (float64 there).
        threshold = max(self.massive_abs, self.massive_ratio * med)
        hot = (torch.maximum(bmax, -bmin) > threshold).nonzero().squeeze(1)  # [h] channels
        d = torch.sub(x, self.shift, out=_workspace(x.shape))  # [N, C], reused: no allocator churn
        b1 = d.sum(0).double()
        b2 = d.square_().sum(0).double()
        e1, e2 = b1.clone(), b2.clone()  # without the massive activations: the same, except in hot channels
        if hot.numel():
            sub = x[:, hot]  # [N, h]
            dh = (sub - self.shift[hot]).double()
            b1[hot], b2[hot] = dh.sum(0), (dh * dh).sum(0)
            dh[sub.abs() > threshold] = 0  # summed apart, not subtracted from the totals: no cancellation
            e1[hot], e2[hot] = dh.sum(0), (dh * dh).sum(0)
            self._record_massive(sub, hot, threshold, med, seq_len, sample_offset, token_ids)
        self.s1 += b1
        self.s2 += b2
        self.ex_s1 += e1
        self.ex_s2 += e2

    def _record_massive(self, sub, hot, threshold, med, seq_len, sample_offset, token_ids) -> None:
        r, j = (sub.abs() > threshold).nonzero(as_tuple=True)
        v = sub[r, j]
        ch = hot[j]
        self.ex_n.index_add_(0, ch, torch.ones_like(ch))
        room = self.max_records - len(self.records)
        self.overflow += max(0, v.numel() - room)
        for rr, cc, vv in zip(r[:room].tolist(), ch[:room].tolist(), v[:room].tolist()):
            s, t = divmod(rr, seq_len)
            tid = None if token_ids is None else int(token_ids[s, t])
            self.records.append(MassiveRecord(sample_offset + s, t, cc, vv, med, tid))

    def finalize(self) -> PointStats:
        if self.shift is None:
            raise RuntimeError("no activations were recorded at this point")
        n = float(self.count)
        shift = self.shift.double()
        mean, std = _moments(self.s1, self.s2, n, shift)
        n_ex = (self.count - self.ex_n).double().clamp(min=1)
        mean_ex, std_ex = _moments(self.ex_s1, self.ex_s2, n_ex, shift)
        tm, ts = tensor_moments(mean, std, torch.full_like(mean, n))
        tm_ex, ts_ex = tensor_moments(mean_ex, std_ex, n_ex)
        top = [(float(v), *map(int, p)) for v, p in zip(self.top_vals, self.top_pos)]  # top_of's order
        return PointStats(
            channels=self.shift.numel(), count=self.count, mean=mean, std=std, mean_ex=mean_ex,
            std_ex=std_ex, count_ex=n_ex, absmax=torch.maximum(self.cmax, -self.cmin).double(),
            tensor_mean=tm, tensor_std=ts, tensor_mean_ex=tm_ex, tensor_std_ex=ts_ex,
            median_abs=float(torch.tensor(self.medians).median()), top=top,
            massive=self.records, massive_overflow=self.overflow, calls=self.calls, shape=self.shape,
        )


def top_order(score: torch.Tensor, pos: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest score [n], ties by pos [n, m] (lexicographic): one total order, so equal values
    (common in embeddings) keep the same elements in the same order whichever way the batches were split
    (torchrun's ranks) or merged."""
    order = torch.arange(score.numel())
    for col in reversed(range(pos.shape[1])):  # stable sorts, least significant key first
        order = order[torch.sort(pos[order, col], stable=True).indices]
    return order[torch.sort(score[order], descending=True, stable=True).indices][:k]


def top_of(vals: torch.Tensor, pos: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k first of candidates vals [n] at pos [n, 3] (sample, token, channel): larger |value| first, ties by
    position (top_order)."""
    order = top_order(vals.abs(), pos, k)
    return vals[order], pos[order]


def first_shift(x: torch.Tensor) -> torch.Tensor:
    """The moments' per-channel reference: the median of the first 256 rows of the first batch, [N, C] -> [C]
    (robust to a massive activation in those rows)."""
    return x[: min(x.shape[0], 256)].median(0).values


def merge(parts: list[PointAccumulator]) -> PointAccumulator:
    """One accumulator from several that saw disjoint batches with the same shift (torchrun's ranks): sums and
    counts added (float64), extremes and top-k merged, batch medians pooled, massive records merged in
    (sample, token, channel) order and capped as one accumulator would have capped them."""
    seen = [p for p in parts if p.s1 is not None]
    if len(seen) <= 1:
        return seen[0] if seen else parts[0]
    out = copy.copy(seen[0])
    for p in seen[1:]:
        if not torch.equal(p.shift, out.shift):
            raise RuntimeError("merged accumulators have different shifts")
    out.count, out.calls = sum(p.count for p in seen), sum(p.calls for p in seen)
    last = max(seen, key=lambda p: p.last_offset)
    out.shape, out.last_offset = last.shape, last.last_offset
    for name in ("s1", "s2", "ex_s1", "ex_s2", "ex_n"):
        setattr(out, name, sum((getattr(p, name) for p in seen[1:]), getattr(seen[0], name).clone()))
    out.cmax = torch.stack([p.cmax for p in seen]).amax(0)
    out.cmin = torch.stack([p.cmin for p in seen]).amin(0)
    out.medians = [m for p in seen for m in p.medians]  # a median of them all: order does not matter
    out.top_vals, out.top_pos = top_of(torch.cat([p.top_vals for p in seen]), torch.cat([p.top_pos for p in seen]),
                                       out.top_k)
    records = sorted((r for p in seen for r in p.records), key=lambda r: (r.sample, r.token, r.channel))
    total = sum(len(p.records) + p.overflow for p in seen)
    out.records = records[: out.max_records]
    out.overflow = total - len(out.records)
    return out


def _moments(s1: torch.Tensor, s2: torch.Tensor, n, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std from shifted sums."""
    m1 = s1 / n
    var = (s2 / n - m1 * m1).clamp(min=0)
    return shift + m1, var.sqrt()


def tensor_moments(mean: torch.Tensor, std: torch.Tensor, n: torch.Tensor) -> tuple[float, float]:
    """Mean and std of all elements of a tensor from its per-channel mean/std/count: [C] -> scalars."""
    total = n.sum()
    mu = (n * mean).sum() / total
    var = (n * (std * std + (mean - mu) ** 2)).sum() / total
    return float(mu), float(var.sqrt())
