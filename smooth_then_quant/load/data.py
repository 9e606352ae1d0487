"""Calibration and evaluation text.

Sources:
  wikitext2  wikitext-2-raw-v1 from the Hub: calibration from the train split, evaluation from
             the test split, each joined with "\\n\\n" (the GPTQ / SmoothQuant protocol).
  c4         allenai/c4 shards of the GPTQ protocol: calibration from random documents of
             en/c4-train.00000-of-01024, evaluation from the first 1100 documents of
             en/c4-validation.00000-of-00008 joined with " " (256 windows are cut from it later).
  offline    Python's own documentation text (pydoc_data.topics, shipped with every Python):
             topics in sorted key order joined with "\\n\\n"; the first 70 % of characters
             calibrate, the last 30 % evaluate. No network needed.
  FILE.txt / FILE.jsonl   a local file ("text" field of each JSON line, joined with "\\n\\n"),
             split 70 / 30 like `offline`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import SmoothQuantError

Part = Literal["calibration", "evaluation"]
# How a window starts, as the model sees text in use (calibration.format / evaluation.format):
#   auto  every window starts with BOS when the tokenizer adds one (Llama 3, Gemma), else as `text`
#   text  windows cut from the tokenized text (no BOS after the text's first token)
#   chat  every window starts with the tokenizer's chat template up to the user's content
#   gptq  (evaluation) one BOS at the start of the whole text, the protocol published perplexities use
WindowFormat = Literal["auto", "text", "chat"]
EvalFormat = Literal["auto", "text", "chat", "gptq"]
CHAT_SENTINEL = "\u2063STQ-CONTENT\u2063"
HUB_SOURCES = ("wikitext2", "c4")
OFFLINE = "offline"
SPLIT = 0.7
C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"
C4_VALIDATION = "en/c4-validation.00000-of-00008.json.gz"


@dataclass
class Text:
    text: str | list[str]  # one string, or documents (c4 calibration samples documents)
    provenance: dict


def check_source(source: str) -> None:
    """Fail fast (at recipe validation, before any model is loaded) on a source that cannot work."""
    if source == OFFLINE or source in HUB_SOURCES:
        return
    path = Path(source).expanduser()
    if path.suffix not in (".txt", ".jsonl"):
        raise SmoothQuantError(f"unknown data source '{source}': use 'offline' (Python's documentation text, no "
                               f"network), 'wikitext2', 'c4', or a path to a .txt / .jsonl file.")
    if not path.is_file():
        raise SmoothQuantError(f"data file not found: {path}. Use an existing .txt/.jsonl file, "
                               f"'offline', 'wikitext2' or 'c4'.")


def load_text(source: str, part: Part) -> Text:
    if source == OFFLINE:
        import pydoc_data.topics as topics
        import sys

        full = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
        return _split(full, part, {"name": OFFLINE, "origin": f"pydoc_data.topics (Python {sys.version.split()[0]})"})
    if source in HUB_SOURCES:
        return _load_hub(source, part)
    check_source(source)  # a .txt / .jsonl file that exists
    path = Path(source).expanduser()
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SmoothQuantError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); give a .txt or .jsonl file of "
                               "UTF-8 text.") from None
    except OSError as e:
        raise SmoothQuantError(f"cannot read the data file {path}: {e.strerror or e}.") from None
    if "\x00" in raw[:1 << 20]:
        raise SmoothQuantError(f"{path} holds NUL bytes: it is a binary file, not text; give a .txt or .jsonl file.")
    if path.suffix == ".jsonl":
        try:
            raw = "\n\n".join(json.loads(line)["text"] for line in raw.splitlines() if line.strip())
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:
            raise SmoothQuantError(f"{path}: every line must be a JSON object with a \"text\" field "
                                   f"({' '.join(str(e).split())[:120]}).") from None
    return _split(raw, part, {"name": str(path), "file_sha256": hashlib.sha256(raw.encode()).hexdigest()})


def _split(full: str, part: Part, prov: dict) -> Text:
    cut = int(len(full) * SPLIT)
    text = full[:cut] if part == "calibration" else full[cut:]
    return Text(text, {**prov, "part": part, "chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                       "split": f"first {SPLIT:.0%} of characters calibrate, the rest evaluate"})


def _load_hub(source: str, part: Part) -> Text:
    import datasets

    try:
        if source == "wikitext2":
            split = "train" if part == "calibration" else "test"
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
            text: str | list[str] = "\n\n".join(ds["text"])
            prov = {"name": source, "hub": "wikitext/wikitext-2-raw-v1", "split": split}
        else:
            shard = C4_TRAIN if part == "calibration" else C4_VALIDATION
            split = "train" if part == "calibration" else "validation"
            ds = datasets.load_dataset("allenai/c4", data_files={split: shard}, split=split)
            text = list(ds["text"]) if part == "calibration" else " ".join(ds[:1100]["text"])
            prov = {"name": source, "hub": f"allenai/c4/{shard}", "split": split}
    except Exception as e:  # datasets raises many types when the hub cannot be reached
        raise SmoothQuantError(
            f"could not load dataset '{source}' from the Hugging Face Hub ({type(e).__name__}: {str(e)[:200]}). "
            f"Without network access use `offline` (Python's own documentation text) or a local .txt/.jsonl "
            f"file, e.g. --set calibration.data=offline") from None
    digest = hashlib.sha256("".join(text).encode() if isinstance(text, list) else text.encode()).hexdigest()
    return Text(text, {**prov, "part": part, "sha256": digest, "revision": getattr(ds, "_fingerprint", None)})


def adds_bos(tokenizer) -> bool:
    """Does the tokenizer put BOS in front of what it encodes (as every prompt in use then starts)?"""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a").input_ids
    return bos is not None and len(ids) > 0 and ids[0] == bos


def window_prefix(tokenizer, fmt: str) -> tuple[list[int], str]:
    """-> (the token ids every window starts with, the protocol's name) for format `fmt`."""
    if fmt == "auto":
        fmt = "bos" if adds_bos(tokenizer) else "text"
    if fmt in ("text", "gptq"):
        return [], fmt
    if fmt == "bos":
        return [tokenizer.bos_token_id], "bos"
    if getattr(tokenizer, "chat_template", None) is None:
        raise SmoothQuantError(f"format chat needs the tokenizer's chat template, and "
                               f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')} has none; use format auto or text.")
    text = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_SENTINEL}], tokenize=False)
    head = text.split(CHAT_SENTINEL)[0]
    return tokenizer(head, add_special_tokens=False).input_ids, "chat"


def calibration_windows(tokenizer, source: str, samples: int, seq_len: int, seed: int = 0, format: str = "auto"
                        ) -> tuple[torch.Tensor, dict]:
    """`samples` random windows of `seq_len` tokens from the calibration text: [samples, seq_len].

    GPTQ protocol: a random start in the tokenized text (c4: a random document longer than
    seq_len, then a random start in it); torch.Generator seeded with `seed`. `format` (WindowFormat): what every
    window starts with, as the model sees text in use (auto: BOS when the tokenizer adds one); the text fills
    the rest of the window.
    """
    if samples < 1 or seq_len < 2:
        raise SmoothQuantError(f"calibration needs samples >= 1 and seq_len >= 2 (got {samples}, {seq_len}).")
    prefix, protocol = window_prefix(tokenizer, format)
    if len(prefix) + 2 > seq_len:
        raise SmoothQuantError(f"calibration.seq_len {seq_len} leaves no room for text after the {len(prefix)} tokens of "
                               f"format {protocol}; raise calibration.seq_len.")
    # with a prefix, the text is tokenized without the tokenizer's own specials (the prefix already has them)
    ids_out, prov = _random_windows(tokenizer, source, samples, seq_len - len(prefix), seed, not prefix)
    if prefix:
        ids_out = torch.cat([torch.tensor(prefix, dtype=ids_out.dtype).expand(samples, -1), ids_out], dim=1)
    prov.update(seq_len=seq_len, format=protocol, prefix_tokens=len(prefix), tokens=int(ids_out.numel()))
    return ids_out, prov


def _random_windows(tokenizer, source: str, samples: int, seq_len: int, seed: int, specials: bool
                    ) -> tuple[torch.Tensor, dict]:
    data = load_text(source, "calibration")
    g = torch.Generator().manual_seed(seed)
    if isinstance(data.text, list):
        windows = []
        for _ in range(100 * samples):
            doc = data.text[int(torch.randint(0, len(data.text), (1,), generator=g))]
            ids = tokenizer(doc, return_tensors="pt", add_special_tokens=specials).input_ids[0]
            if ids.numel() > seq_len:
                s = int(torch.randint(0, ids.numel() - seq_len, (1,), generator=g))
                windows.append(ids[s: s + seq_len])
            if len(windows) == samples:
                break
        if len(windows) < samples:
            raise SmoothQuantError(f"calibration data '{source}' gave {len(windows)} of {samples} windows: too few of "
                                   f"its documents are longer than seq_len={seq_len} tokens; lower "
                                   "calibration.seq_len or use another source.")
        ids_out = torch.stack(windows)
    else:
        ids = tokenizer(data.text, return_tensors="pt", add_special_tokens=specials).input_ids[0]
        if ids.numel() <= seq_len:
            raise SmoothQuantError(f"calibration text from '{source}' has {ids.numel()} tokens, fewer than "
                                   f"seq_len={seq_len}; lower calibration.seq_len or use more text.")
        starts = torch.randint(0, ids.numel() - seq_len, (samples,), generator=g)
        ids_out = torch.stack([ids[s: s + seq_len] for s in starts.tolist()])
    prov = {**data.provenance, "samples": samples, "seq_len": seq_len, "seed": seed,
            "tokens": int(ids_out.numel()), "protocol": "random windows (GPTQ)"}
    return ids_out, prov
