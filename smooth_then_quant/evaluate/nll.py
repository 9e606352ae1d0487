"""Perplexity on non-overlapping windows, as the model sees text in use (evaluation.format).

The evaluation text is tokenized once as a whole and cut into non-overlapping windows (the remainder is
dropped); every window is scored on its own: the mean NLL of its text tokens given what precedes them in the
window. PPL = exp(mean token NLL over all windows). c4 keeps the first 256 windows of its validation text.
Formats: `auto` starts every window with BOS when the tokenizer adds one (as every prompt in use does; else as
`text`), `chat` with the chat template's head (context, not scored), `text` with nothing, and `gptq` is the
published protocol: the tokenizer's BOS at the start of the whole text only.
"""
from __future__ import annotations

import hashlib
import math
import typing
import torch
from pydantic import Field, field_validator
from torch import nn

from ..arch import final_norm, model_device, runtime_signature, source_of, trim_heap, walk
from .. import dist
from ..arch.sequential import my_batches
from ..errors import SmoothQuantError
from ..load import EvalFormat, data_source, load_text, window_prefix
from ..schema import Config

C4_WINDOWS = 256


class EvalConfig(Config):
    """`evaluation:` — perplexity windows, and the evidence the smoothing report measures."""
    datasets: list[str] = ["offline"]  # offline | wikitext2 | c4 | path to .txt/.jsonl
    seq_len: int = Field(2048, ge=2, le=1_048_576, description="2^20 tokens is past any model's context")
    max_windows: int | None = Field(None, ge=1, le=1_000_000, description="a million windows is past any evaluation set")  # None: every window (c4: 256)
    batch_size: int = Field(1, ge=1, le=4096, description="windows per forward")
    per_intervention: bool = True  # smoothing evidence for each intervention alone, not only combined
    # auto (BOS when the tokenizer adds one) | text | chat | gptq: load/data.py. A dataset written source@format
    # (offline@gptq) is scored with that format: list both to see the published and the as-used protocol
    format: EvalFormat = "auto"
    evidence_samples: int = Field(8, ge=1, le=10_000, description="windows probed twice, before and after smoothing")  # calibration windows probed before/after smoothing
    # lm-eval tasks scored on every cell of the quantization table (the [eval] extra): offline_cloze (shipped,
    # offline), or lm-eval's own (arc_easy, hellaswag, piqa, winogrande, lambada_openai: the Hub's datasets)
    tasks: list[str] = Field([], max_length=64)
    task_limit: int | None = Field(None, ge=1, le=10_000_000, description="documents per task (lm-eval's limit)")
    num_fewshot: int | None = Field(None, ge=0, le=100, description="lm-eval few-shot examples per document")
    task_path: str | None = None  # a folder of lm-eval YAML tasks (lm-eval's include_path)
    task_batch_size: int = Field(8, ge=1, le=4096, description="documents per lm-eval forward")

    @field_validator("task_path")
    @classmethod
    def _task_folder(cls, v: str | None) -> str | None:
        from pathlib import Path

        try:
            ok = v is None or Path(v).expanduser().is_dir()
        except (OSError, ValueError, RuntimeError):  # a name too long, a NUL byte, ~nosuchuser
            ok = False
        if not ok:
            raise ValueError("task_path is not a folder (a folder of lm-eval YAML task files)")
        return v

    @field_validator("datasets")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one dataset (offline, wikitext2, c4 or a .txt/.jsonl file)")
        for d in v:
            source, fmt = split_dataset(d)
            if fmt is not None and fmt not in typing.get_args(EvalFormat):
                raise ValueError(f"'{d}': the part after @ is an evaluation format ({', '.join(typing.get_args(EvalFormat))})")
            data_source(source)
        return v


def split_dataset(d: str) -> tuple[str, str | None]:
    """`offline@gptq` -> ("offline", "gptq"): a dataset scored with its own format (the table can then show the
    published protocol beside the as-used one); `offline` -> ("offline", None): evaluation.format."""
    source, sep, fmt = d.rpartition("@")
    return (source, fmt) if sep and source and fmt in typing.get_args(EvalFormat) else (d, None)


def evaluation_windows(tokenizer, source: str, seq_len: int, max_windows: int | None = None, format: str = "auto"
                       ) -> tuple[torch.Tensor, dict]:
    """-> ids [windows, seq_len], protocol description. `format` (EvalFormat): gptq tokenizes the whole text as
    the tokenizer does (its BOS, if it adds one, at the very start only: the published protocol); text drops that
    BOS; auto (BOS when the tokenizer adds one) and chat start every window with their prefix, which is not
    scored (protocol["prefix_tokens"])."""
    data = load_text(source, "evaluation")
    text = data.text if isinstance(data.text, str) else "\n\n".join(data.text)
    prefix, fmt = window_prefix(tokenizer, format)
    if len(prefix) + 2 > seq_len:
        raise SmoothQuantError(f"evaluation.seq_len {seq_len} leaves no room for text after the {len(prefix)} tokens of "
                               f"format {fmt}; raise evaluation.seq_len.")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=fmt == "gptq").input_ids[0]
    width = seq_len - len(prefix)
    n = ids.numel() // width
    limit = C4_WINDOWS if source == "c4" else None
    if max_windows is not None:
        limit = max_windows if limit is None else min(limit, max_windows)
    if limit is not None:
        n = min(n, limit)
    if n < 1:
        raise SmoothQuantError(f"evaluation text of '{source}' has {ids.numel()} tokens, fewer than one window of "
                               f"seq_len={seq_len}; lower evaluation.seq_len.")
    bos = getattr(tokenizer, "bos_token_id", None)
    windows = ids[: n * width].reshape(n, width)
    if prefix:
        windows = torch.cat([torch.tensor(prefix, dtype=windows.dtype).expand(n, -1), windows], dim=1)
    protocol = {
        "dataset": source, "seq_len": seq_len, "windows": n, "tokens_scored": n * (seq_len - max(len(prefix), 1)),
        "windows_available": ids.numel() // width, "format": fmt, "prefix_tokens": len(prefix),
        "join": "documents joined with '\\n\\n' (c4: ' ')", "overlap": "none (remainder dropped)",
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "bos": {"bos": "every window starts with the tokenizer's BOS, as every prompt in use does",
                "chat": f"every window starts with the chat template's {len(prefix)} tokens before the user's content "
                        "(not scored)"}.get(fmt, "the tokenizer's BOS at the start of the text only"
                                           if bos is not None and ids.numel() and int(ids[0]) == bos else "no BOS"),
        "data": data.provenance,
    }
    return windows, protocol


VOCAB_CHUNK = 8192  # lm_head rows per step of the log-softmax: [tokens, VOCAB_CHUNK] logits at a time


def head_rows(model: nn.Module, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of lm_head's weight [n, H] (a streamed model reads them from its checkpoint)."""
    src = source_of(model)
    return model.get_output_embeddings().weight[start:stop] if src is None else src.head_rows(model, start, stop)


def token_nll(model: nn.Module, hidden, ids: list[torch.Tensor]) -> list[torch.Tensor]:
    """Next-token NLL of every position from the last layer's hidden states, the log-softmax taken over the
    vocabulary in chunks of VOCAB_CHUNK rows (online logsumexp): [windows, tokens, vocab] logits never exist,
    each lm_head chunk is read once, and a batch's hidden state is read (from memory or its spill file) per chunk.
    The chunks' float32 logsumexps are combined in float64: on SmolLM2 the NLL is within 5e-8 of the float64
    value, where a float32 cross_entropy over the whole vocabulary is 9e-6 low (measured).
    hidden: [B, T, H] per batch (a list or HiddenStates), ids: [B, T] -> [B, T-1] float64 per batch."""
    norm = final_norm(model)
    cap = getattr(model.config, "final_logit_softcapping", None)
    vocab = model.get_output_embeddings().weight.shape[0]
    device = model_device(model)
    targets = [b[:, 1:].to(device) for b in ids]
    lse = [torch.full(t.shape, -torch.inf, device=device, dtype=torch.float64) for t in targets]
    picked = [torch.zeros(t.shape, device=device, dtype=torch.float64) for t in targets]
    for start in range(0, vocab, VOCAB_CHUNK):
        w = head_rows(model, start, min(start + VOCAB_CHUNK, vocab))  # [C, H]
        for i, (t, acc, p) in enumerate(zip(targets, lse, picked)):
            z = (norm(hidden[i])[:, :-1] @ w.T).float()  # [B, T-1, C], in the model's dtype as lm_head computes it
            if cap:
                z = torch.tanh(z / cap) * cap
            torch.logaddexp(acc, z.logsumexp(-1).double(), out=acc)
            hit = (t >= start) & (t < start + w.shape[0])
            p[hit] = z[hit, t[hit] - start].double()
            del z
        del w
    trim_heap()
    return [acc - p for acc, p in zip(lse, picked)]


@torch.inference_mode()
def window_nll(model: nn.Module, ids: torch.Tensor, batch_size: int = 1, progress: bool = True,
               desc: str = "perplexity", prefix: int = 0) -> torch.Tensor:
    """Mean next-token NLL of each window: ids [N, T] -> [N] float64 (the model walked layer by layer). The first
    `prefix` tokens of every window (BOS, a chat template's head) are context only: the targets start after them."""
    hidden = walk(model, ids, batch_size, desc=desc, show=progress)
    nll = token_nll(model, hidden, [b for _, b in my_batches(ids, batch_size)])
    mine = [n[:, max(prefix - 1, 0):].mean(-1).double().cpu() for n in nll]  # this rank's batches: [B] each
    return torch.cat(dist.interleave(dist.gather(mine)))  # every batch in window order, on every rank


def perplexity(model: nn.Module, ids: torch.Tensor, batch_size: int = 1, progress: bool = True,
               desc: str = "perplexity", prefix: int = 0) -> float:
    """exp(mean token NLL); every window has the same number of scored tokens, so the mean of window means."""
    nll = float(window_nll(model, ids, batch_size, progress, desc, prefix).mean())
    return math.exp(nll) if nll < 709 else math.inf  # a diverged model (e.g. 2-bit weights) reports inf, not a crash


def model_fingerprint(model: nn.Module, extra: str = "") -> str:
    """A digest of every parameter and buffer (and `extra`, e.g. the runtime interventions):
    two states with equal weights share cached results."""
    h = hashlib.blake2b(digest_size=16)
    src = source_of(model)
    if src is not None:  # a streamed state: its checkpoint, edits and kept layers
        h.update(src.digest().encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(name.encode())
        if t.numel() and not t.is_meta:  # hash the tensor's memory in place (no bytes copy)
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    h.update(extra.encode())
    return h.hexdigest()


class PerplexityCache:
    """Results per (model state, dataset, protocol) so a baseline is computed once per run."""

    def __init__(self):
        self._results: dict[tuple, float] = {}
        self._windows: dict[tuple, tuple[torch.Tensor, dict]] = {}
        self.hits = 0

    def windows(self, tokenizer, dataset: str, cfg: EvalConfig) -> tuple[torch.Tensor, dict]:
        """`dataset`: a source, or source@format (split_dataset)."""
        source, fmt = split_dataset(dataset)
        key = (id(tokenizer), source, cfg.seq_len, cfg.max_windows, fmt or cfg.format)
        if key not in self._windows:
            self._windows[key] = evaluation_windows(tokenizer, source, cfg.seq_len, cfg.max_windows, fmt or cfg.format)
        return self._windows[key]

    def perplexity(self, model: nn.Module, tokenizer, source: str, cfg: EvalConfig, state: str = "",
                   desc: str | None = None) -> float:
        ids, protocol = self.windows(tokenizer, source, cfg)
        key = (model_fingerprint(model, runtime_signature(model) + state), source, cfg.seq_len, cfg.max_windows,
               protocol["format"])
        if key in self._results:
            self.hits += 1
            return self._results[key]
        ppl = perplexity(model, ids, cfg.batch_size, True, desc or f"perplexity on {source}", protocol["prefix_tokens"])
        self._results[key] = ppl
        return ppl
