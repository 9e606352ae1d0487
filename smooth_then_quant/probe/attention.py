"""The paper's x6 (q·kᵀ, the attention scores) and x7 (softmax), tapped without changing the forward.

x6 and x7 are not module boundaries, so no module hook reads them. Every family here calls its attention kernel
through transformers' attention interface (`ALL_ATTENTION_FUNCTIONS.get_interface(...)(module, q, k, v, mask,
scaling=..., sliding_window=..., ...)`), after RoPE and after Gemma3's q/k norms. `attention_taps` wraps that
call: the model's own kernel (sdpa, eager, ...) computes the output as before, and the wrapper recomputes the
scores from the same q and k, the same mask, scaling, soft-capping and sliding window (GQA: head h reads key head
h // (H / KV)), head group by head group, so [batch, heads, T, T] exists for one batch and a few heads at a time.
tests/probe/test_attention.py checks the recomputed x7 against eager attention's weights on every family.

Hand-written rather than `output_attentions=True` under eager attention: that would switch the model's kernel
(sdpa -> eager changes every later activation in the last bits, so the probe would no longer see the tensors the
rest of the run sees) and would hold every layer's [B, H, T, T] at once.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SmoothQuantError

HEAD_CHUNK_BYTES = 16 * 2**20  # one [B, h, T, S] float32 block of scores per head group
QUERY_BLOCK = 64  # the smallest query block of a causal kernel


@dataclass
class Block:
    """x6 and x7 of one batch for a group of h query heads."""
    logits: torch.Tensor  # [B, h, T, S] x6: q·kᵀ scaled (and soft-capped), plus the mask (hidden keys: very negative)
    probs: torch.Tensor  # [B, h, T, S] x7, float32
    row_max: torch.Tensor  # [B, h, T] each query's largest score over the keys it may read
    row_key: torch.Tensor  # [B, h, T] the key holding it
    entropy: torch.Tensor  # [B, h, T] -Σ_k p log p (nats)


def scores_and_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scaling: float | None,
                     softcap: float | None = None, sliding_window: int | None = None, heads: slice | None = None,
                     queries: slice | None = None, is_causal: bool = True) -> Block:
    """x6 and x7 as the attention kernel computes them, for the query heads `heads` and the queries `queries` (all:
    None). q: [B, H, T, D], k: [B, KV, S, D] (after RoPE), mask: None (causal, or none when not is_causal), [B, S]
    padding, bool [B|1, 1|H, T, S] (True = attend) or additive float [B|1, 1|H, T, S].

    A causal kernel's queries [a, b) read no key past S - T + b: those keys are left out (Block's last dimension is
    that bound), so query blocks skip the masked half of the matrix. Four passes over [B, h, t, s] after the product:
    softmax; the row maxima (x6's statistic); Σ p·logits for the entropy, H = log Z + m − Σ p·logits, where
    log Z = −log p at the row maximum (so no log of every element)."""
    b, h, t, d = q.shape
    s = k.shape[2]
    heads = heads or slice(0, h)
    queries = queries or slice(0, t)
    keys = s - t + queries.stop if is_causal else s
    group = h // k.shape[1]
    kv = torch.arange(h)[heads] // group  # query head i reads key head i // group (GQA)
    q, k = q[:, heads, queries].float(), k.float()[:, kv, :keys]  # [B, h, tq, D], [B, h, keys, D]
    tq = q.shape[2]
    if mask is not None and mask.dim() == 4:
        mask = mask[:, heads if mask.shape[1] > 1 else slice(None), queries, :keys]
    elif mask is not None and mask.dim() == 2:
        mask = mask[:, :keys]
    bias = additive_mask(mask, tq, keys, sliding_window, q.device, is_causal)  # [B|1, 1|h, tq, keys]
    scale = d ** -0.5 if scaling is None else scaling
    if softcap is None:  # one fused kernel: bias + scale · q kᵀ (a [1, 1, ...] bias broadcasts without a copy)
        shared = bias[0] if bias.shape[:2] == (1, 1) else bias.expand(b, q.shape[1], tq, keys).reshape(-1, tq, keys)
        logits = torch.baddbmm(shared, q.reshape(-1, tq, d), k.reshape(-1, keys, d).transpose(-1, -2),
                               alpha=scale).view(b, -1, tq, keys)
    else:
        logits = torch.tanh(q @ k.transpose(-1, -2) * (scale / softcap)).mul_(softcap).add_(bias)
    probs = torch.softmax(logits, dim=-1)
    row_max, row_key = logits.max(-1)  # [B, h, tq]
    log_z = -probs.gather(-1, row_key[..., None]).squeeze(-1).log()  # p at the maximum = 1 / Z
    entropy = log_z + row_max - torch.linalg.vecdot(probs, logits)
    return Block(logits, probs, row_max, row_key, entropy)


def query_blocks(t: int, is_causal: bool) -> list[slice]:
    """Query slices for a causal kernel (about 8 blocks of at least QUERY_BLOCK rows: the keys past each block's
    last query are skipped, ~44 % of the work); one block otherwise."""
    if not is_causal:
        return [slice(0, t)]
    step = max(QUERY_BLOCK, -(-t // 8))
    return [slice(i, min(t, i + step)) for i in range(0, t, step)]


def additive_mask(mask: torch.Tensor | None, t: int, s: int, sliding_window: int | None, device,
                  is_causal: bool = True) -> torch.Tensor:
    """The kernel's mask as an additive float32 bias: 0 where a query may read a key, the float32 minimum where it
    may not (finite, so a product with a zero probability stays 0). mask: None (causal, with the sliding window;
    nothing hidden when not is_causal), [B, S] padding (causal within it), bool (True = attend) or already additive."""
    if mask is not None and mask.dtype != torch.bool and mask.dim() == 4:
        return mask[..., :s].float().clamp(min=torch.finfo(torch.float32).min)
    allowed = causal(t, s, sliding_window, device) if is_causal else torch.ones(1, 1, t, s, dtype=torch.bool,
                                                                                  device=device)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :].bool() if mask.dim() == 2 else mask
    return torch.zeros(allowed.shape, device=device).masked_fill_(~allowed, torch.finfo(torch.float32).min)


def causal(t: int, s: int, sliding_window: int | None, device) -> torch.Tensor:
    """[1, 1, T, S] True where query i (at position s - t + i) may read key j: j <= i, and within the window."""
    qpos = torch.arange(s - t, s, device=device)[:, None]
    kpos = torch.arange(s, device=device)[None, :]
    ok = kpos <= qpos
    if sliding_window is not None:
        ok &= kpos > qpos - sliding_window
    return ok[None, None]


def head_groups(b: int, h: int, t: int, s: int) -> list[slice]:
    """Head slices whose [B, h, T, S] float32 scores stay within HEAD_CHUNK_BYTES."""
    per_head = max(1, b * t * s * 4)
    step = max(1, min(h, HEAD_CHUNK_BYTES // per_head))
    return [slice(i, min(h, i + step)) for i in range(0, h, step)]


AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, "torch.Tensor | None", dict], None]


@contextlib.contextmanager
def attention_taps(attention_modules: list[nn.Module], fn: AttentionFn) -> Iterator[set[int]]:
    """While inside, every call of the attention kernel by attention_modules[li] also calls
    fn(li, q [B, H, T, D], k [B, KV, S, D], mask, {scaling, softcap, sliding_window}). Yields the set of layer
    indices whose kernel was seen, so the caller can tell a kernel that bypasses the interface (never silent)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    index = {id(m): li for li, m in enumerate(attention_modules)}
    seen: set[int] = set()
    interface = ALL_ATTENTION_FUNCTIONS
    original = interface.get_interface  # the bound method; an instance attribute shadows it while tapped

    def get_interface(implementation, default):
        kernel = original(implementation, default)

        def tapped(module, query, key, value, attention_mask, *args, **kwargs):
            out = kernel(module, query, key, value, attention_mask, *args, **kwargs)
            li = index.get(id(module))
            if li is not None:
                seen.add(li)
                extra = {"scaling": kwargs.get("scaling", getattr(module, "scaling", None)),
                         "softcap": kwargs.get("softcap"), "sliding_window": kwargs.get("sliding_window"),
                         "is_causal": bool(getattr(module, "is_causal", True))}
                fn(li, query.detach(), key.detach(), attention_mask, extra)
            return out
        return tapped

    interface.get_interface = get_interface
    try:
        yield seen
    finally:
        del interface.get_interface


def untapped_error(layers: list[int], implementation: str | None) -> SmoothQuantError:
    return SmoothQuantError(
        f"the attention scores (x6, x7) of layer(s) {layers[:5]} could not be tapped: this model's attention "
        f"(attn_implementation '{implementation}') does not call transformers' attention interface; load the model "
        "with attn_implementation='sdpa' (transformers' default, which the recipe loader uses) or 'eager', or turn "
        "the attention statistics off with analysis.attention: false")
