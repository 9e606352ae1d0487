"""Streaming statistics of one layer's attention (x6 scores, x7 probabilities), per head, in memory that does not
grow with the number of windows.

Per head: the largest score with its (sample, query, key), and the top-k queries by their largest score (each with
the key it reads: distinct queries, so one query's neighbouring keys do not fill the list); the share of each window's
attention mass that each key position receives, Σ_q p[q, k] / T (summed over windows in float64: the sink mass);
the mean entropy of a query's distribution, -Σ_k p log p (nats); and every (window, head, key) whose share passes
the sink floor, with the key's token id (bounded list, overflow counted). "Systematic Outliers in Large Language
Models" calls such keys attention outliers: the attention sink, usually on the tokens that carry massive
activations.

Under torchrun each rank accumulates its own batches and `merge_attention` adds the parts (float64 sums, top-k in
one total order, records in (sample, head, key) order), as probe/stats.py does for the module points.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from .attention import head_groups, query_blocks, scores_and_probs
from .stats import top_order


@dataclass
class SinkRecord:
    sample: int
    head: int
    key: int  # position in the window
    share: float  # of the window's attention mass in this head
    token_id: int | None = None


@dataclass
class AttentionStats:
    """Finished statistics of one layer's attention. Tensors are float64."""
    heads: int
    windows: int
    seq_len: int
    score_max: torch.Tensor  # [H] largest x6 score per head
    score_max_at: list[tuple[int, int, int]]  # per head: (sample, query, key)
    top: list[tuple[float, int, int, int, int]]  # the layer's top-k query maxima: (value, head, sample, query, key)
    mean_share: torch.Tensor  # [H, S] mean share of a window's attention mass per key position
    entropy: torch.Tensor  # [H] mean entropy of a query's attention distribution (nats)
    sinks: list[SinkRecord]
    sink_overflow: int
    sink_floor: float


@dataclass
class AttentionAccumulator:
    heads: int
    top_k: int = 10
    sink_floor: float = 0.2
    max_records: int = 20000
    windows: int = 0
    share_sum: torch.Tensor | None = None  # [H, S] float64
    entropy_sum: torch.Tensor | None = None  # [H] float64
    top_vals: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # candidates, all heads: [n]
    top_pos: torch.Tensor = field(default_factory=lambda: torch.empty(0, 4, dtype=torch.long))  # (head, s, q, k)
    sinks: list[SinkRecord] = field(default_factory=list)
    overflow: int = 0

    def update(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, extra: dict,
               sample_offset: int, token_ids: torch.Tensor | None = None) -> None:
        """Fold one batch in: q [B, H, T, D], k [B, KV, S, D] as the kernel received them."""
        b, h, t, _ = q.shape
        s = k.shape[2]
        if self.share_sum is None:
            self.share_sum = torch.zeros(h, s, dtype=torch.float64)
            self.entropy_sum = torch.zeros(h, dtype=torch.float64)
        elif self.share_sum.shape[1] < s:  # a longer window than before: positions past the old ones start at 0
            self.share_sum = torch.nn.functional.pad(self.share_sum, (0, s - self.share_sum.shape[1]))
        self.windows += b
        causal = extra.get("is_causal", True)
        for g in head_groups(b, h, t, s):
            share = torch.zeros(b, g.stop - g.start, s, device=q.device)  # [B, h, S]
            row_max, row_key, entropy = [], [], []
            for qs in query_blocks(t, causal):
                blk = scores_and_probs(q, k, mask, heads=g, queries=qs, **extra)  # [B, h, tq, keys ≤ S]
                share[..., : blk.probs.shape[-1]] += blk.probs.sum(2)
                row_max.append(blk.row_max)
                row_key.append(blk.row_key)
                entropy.append(blk.entropy)
            self._scores(torch.cat(row_max, -1), torch.cat(row_key, -1), g.start, sample_offset)
            share /= t  # each query row sums to 1, so the shares of a window sum to 1
            self.share_sum[g, :s] += share.sum(0).double().cpu()
            self.entropy_sum[g] += torch.cat(entropy, -1).mean(-1).sum(0).double().cpu()
            self._sinks(share, g.start, sample_offset, token_ids)

    def _scores(self, row_max: torch.Tensor, row_key: torch.Tensor, h0: int, sample_offset: int) -> None:
        """x6 from each query's largest score [B, h, T] and its key: per head, the top_k queries."""
        b, h, t = row_max.shape
        flat = row_max.transpose(0, 1).reshape(h, -1)  # [h, B*T]
        k = min(self.top_k, flat.shape[1])
        vals, idx = flat.topk(k, dim=1)  # [h, k]
        bi, qi = idx // t, idx % t
        key = row_key.transpose(0, 1).reshape(h, -1).gather(1, idx)
        pos = torch.stack([torch.arange(h0, h0 + h, device=idx.device)[:, None].expand(h, k), sample_offset + bi, qi,
                           key], -1).reshape(-1, 4).cpu()
        self._merge_top(torch.cat([self.top_vals, vals.reshape(-1).cpu()]), torch.cat([self.top_pos, pos]))

    def _merge_top(self, vals: torch.Tensor, pos: torch.Tensor) -> None:
        """Keep, per head, the top_k candidates (so every head's maximum survives)."""
        keep = []
        for head in pos[:, 0].unique():
            where = (pos[:, 0] == head).nonzero().squeeze(1)
            keep.append(where[top_order(vals[where], pos[where], self.top_k)])
        order = torch.cat(keep) if keep else torch.empty(0, dtype=torch.long)
        self.top_vals, self.top_pos = vals[order], pos[order]

    def _sinks(self, share: torch.Tensor, h0: int, sample_offset: int, token_ids: torch.Tensor | None) -> None:
        bi, hi, ki = (share > self.sink_floor).nonzero(as_tuple=True)
        room = self.max_records - len(self.sinks)
        self.overflow += max(0, bi.numel() - room)
        values = share[bi, hi, ki].tolist()
        for b, hh, kk, v in list(zip(bi.tolist(), hi.tolist(), ki.tolist(), values))[:max(room, 0)]:
            tid = None if token_ids is None or kk >= token_ids.shape[1] else int(token_ids[b, kk])
            self.sinks.append(SinkRecord(sample_offset + b, h0 + hh, kk, v, tid))

    def finalize(self) -> AttentionStats:
        if self.share_sum is None:
            raise RuntimeError("no attention was recorded in this layer")
        h = self.heads
        score_max = torch.full((h,), -float("inf"), dtype=torch.float64)
        at: list[tuple[int, int, int]] = [(-1, -1, -1)] * h
        order = top_order(self.top_vals, self.top_pos, self.top_vals.numel())
        for i in reversed(order.tolist()):  # the largest last, so it wins
            head = int(self.top_pos[i, 0])
            score_max[head] = float(self.top_vals[i])
            at[head] = tuple(int(x) for x in self.top_pos[i, 1:])
        layer_top = order[: self.top_k]
        top = [(float(self.top_vals[i]), *(int(x) for x in self.top_pos[i])) for i in layer_top.tolist()]
        return AttentionStats(
            heads=h, windows=self.windows, seq_len=self.share_sum.shape[1], score_max=score_max, score_max_at=at,
            top=top, mean_share=self.share_sum / max(self.windows, 1), entropy=self.entropy_sum / max(self.windows, 1),
            sinks=sorted(self.sinks, key=lambda r: (r.sample, r.head, r.key)), sink_overflow=self.overflow,
            sink_floor=self.sink_floor)


def merge_attention(parts: list[AttentionAccumulator]) -> AttentionAccumulator:
    """One accumulator from several that saw disjoint batches (torchrun's ranks)."""
    seen = [p for p in parts if p.share_sum is not None]
    if len(seen) <= 1:
        return seen[0] if seen else parts[0]
    out = copy.copy(seen[0])
    width = max(p.share_sum.shape[1] for p in seen)
    out.share_sum = sum(torch.nn.functional.pad(p.share_sum, (0, width - p.share_sum.shape[1])) for p in seen)
    out.entropy_sum = sum((p.entropy_sum for p in seen[1:]), seen[0].entropy_sum.clone())
    out.windows = sum(p.windows for p in seen)
    out._merge_top(torch.cat([p.top_vals for p in seen]), torch.cat([p.top_pos for p in seen]))
    records = sorted((r for p in seen for r in p.sinks), key=lambda r: (r.sample, r.head, r.key))
    total = sum(len(p.sinks) + p.overflow for p in seen)
    out.sinks = records[: out.max_records]
    out.overflow = total - len(out.sinks)
    return out
