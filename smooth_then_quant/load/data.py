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
  OWNER/NAME (calibration) any Hub dataset: its `split`, its text column (`text`, or `messages` of chat
             conversations, rendered with the tokenizer's chat template), documents joined with "\\n\\n".
  In the Python API, calibration data may also be in memory: a list of strings, a list of chat conversations
  (lists of {"role", "content"} dicts, rendered with the tokenizer's chat template), or a datasets.Dataset.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..errors import SmoothQuantError
from ..extras import require

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
IN_MEMORY = "in-memory"  # calibration.data when the caller hands over texts or a Dataset (oneshot)
SPLIT = 0.7
C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"
C4_VALIDATION = "en/c4-validation.00000-of-00008.json.gz"


@dataclass
class Text:
    text: str | list[str]  # one string, or documents (c4 calibration samples documents)
    provenance: dict


def is_hub_dataset(source: str) -> bool:
    """OWNER/NAME that is not a local path: a Hub dataset id."""
    parts = source.split("/")
    if not (len(parts) == 2 and all(parts) and not source.startswith((".", "~")) and len(source) <= 200):
        return False  # the Hub caps an id at 96 characters per part
    try:
        return Path(source).suffix not in (".txt", ".jsonl") and not Path(source).exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a local path either
        return True


def check_source(source: str, hub_ids: bool = False) -> None:
    """Fail fast (at recipe validation, before any model is loaded) on a source that cannot work.
    `hub_ids`: a Hub dataset id (OWNER/NAME) is allowed (calibration)."""
    if source == OFFLINE or source in HUB_SOURCES or (hub_ids and (is_hub_dataset(source) or source == IN_MEMORY)):
        return  # in-memory: the Python API's data (oneshot); the run checks that it was given
    shown = f"{source[:80]}{'...' if len(source) > 80 else ''}"
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # ~user with no such user
        raise SmoothQuantError(f"data source '{shown}': its ~ names no user's home folder here; write the path out.") \
            from None
    if path.suffix not in (".txt", ".jsonl"):
        raise SmoothQuantError(f"unknown data source '{shown}': use 'offline' (Python's documentation text, no "
                               f"network), 'wikitext2', 'c4', a path to a .txt / .jsonl file"
                               + (", or a Hub dataset id (owner/name)." if hub_ids else "."))
    try:
        found = path.is_file()
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte
        raise SmoothQuantError(f"data file '{shown}' cannot be read: {getattr(e, 'strerror', None) or e}.") from None
    if not found:
        raise SmoothQuantError(f"data file not found: {path}. Use an existing .txt/.jsonl file, "
                               f"'offline', 'wikitext2' or 'c4'.")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise SmoothQuantError(f"cannot read the data file {path}: {e.strerror or e}.") from None


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


def _is_chat(item) -> bool:
    return (isinstance(item, list | tuple) and len(item) > 0 and
            all(isinstance(m, dict) and "role" in m and "content" in m for m in item))


def documents_text(docs, tokenizer, prov: dict | None = None) -> Text:
    """In-memory calibration data: strings, or chat conversations rendered with the tokenizer's chat template,
    joined with "\\n\\n" (windows are cut from the whole; every document calibrates)."""
    if isinstance(docs, str) or not hasattr(docs, "__len__") or len(docs) == 0:
        raise SmoothQuantError("calibration data in memory must be a non-empty list of strings or of chat "
                               "conversations (lists of {'role': ..., 'content': ...} dicts).")
    out, chats = [], 0
    for i, d in enumerate(docs):
        if isinstance(d, str):
            out.append(d)
        elif _is_chat(d):
            if getattr(tokenizer, "chat_template", None) is None:
                raise SmoothQuantError(f"calibration item {i} is a chat conversation, and "
                                       f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')} has no chat template to "
                                       "render it; give plain strings.")
            out.append(tokenizer.apply_chat_template(list(d), tokenize=False))
            chats += 1
        else:
            raise SmoothQuantError(f"calibration item {i} is a {type(d).__name__}: give strings, or chat conversations "
                                   "(lists of {'role': ..., 'content': ...} dicts).")
    text = "\n\n".join(out)
    return Text(text, {"name": "in-memory", **(prov or {}), "documents": len(out), "chat_documents": chats,
                       "part": "calibration", "chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()})


def dataset_text(ds, tokenizer, column: str | None = None, prov: dict | None = None) -> Text:
    """A datasets.Dataset's text column (`text`, or chat conversations in `messages`) as calibration text."""
    names = list(getattr(ds, "column_names", []) or [])
    col = column or next((c for c in ("text", "messages", "conversations") if c in names), None)
    if col is None or col not in names:
        raise SmoothQuantError(f"the dataset has no column {column or 'text / messages'} (its columns: "
                               f"{', '.join(names[:12]) or 'none'}); set calibration.text_column.")
    return documents_text(list(ds[col]), tokenizer, {**(prov or {}), "column": col, "rows": len(ds)})


def calibration_text(source, tokenizer, split: str = "train", column: str | None = None) -> Text:
    """The calibration text of any source: a named or file source (load_text), a Hub dataset id, a Dataset,
    or documents in memory."""
    if isinstance(source, str):
        if is_hub_dataset(source) and source not in HUB_SOURCES:
            datasets = require("datasets", "data", f"the Hub dataset {source}")
            try:
                ds = datasets.load_dataset(source, split=split)
            except Exception as e:  # noqa: BLE001 - offline, gated, no such split: the hub client raises many kinds
                raise SmoothQuantError(f"could not load dataset '{source}' (split {split}) from the Hugging Face Hub "
                                       f"({type(e).__name__}: {' '.join(str(e).split())[:200]}). Offline? Use "
                                       "`offline` or a local .txt/.jsonl file.") from None
            return dataset_text(ds, tokenizer, column, {"name": source, "hub": source, "split": split,
                                                        "revision": getattr(ds, "_fingerprint", None)})
        return load_text(source, "calibration")
    if hasattr(source, "column_names"):
        return dataset_text(source, tokenizer, column)
    return documents_text(source, tokenizer)


def _split(full: str, part: Part, prov: dict) -> Text:
    cut = int(len(full) * SPLIT)
    text = full[:cut] if part == "calibration" else full[cut:]
    return Text(text, {**prov, "part": part, "chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                       "split": f"first {SPLIT:.0%} of characters calibrate, the rest evaluate"})


def _load_hub(source: str, part: Part) -> Text:
    datasets = require("datasets", "data", f"the Hub dataset {source}")

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


def calibration_windows(tokenizer, source="offline", samples: int = 32, seq_len: int = 512, seed: int = 0,
                        format: str = "auto", *, split: str = "train", text_column: str | None = None
                        ) -> tuple[torch.Tensor, dict]:
    """`samples` random windows of `seq_len` tokens from the calibration text: [samples, seq_len].
    `source`: offline | wikitext2 | c4 | a .txt/.jsonl file | a Hub dataset id (its `split` and `text_column`) |
    a datasets.Dataset | a list of strings | a list of chat conversations (the tokenizer's chat template).

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
    data = calibration_text(source, tokenizer, split, text_column)
    ids_out, prov = _random_windows(tokenizer, data, samples, seq_len - len(prefix), seed, not prefix)
    if prefix:
        ids_out = torch.cat([torch.tensor(prefix, dtype=ids_out.dtype).expand(samples, -1), ids_out], dim=1)
    prov.update(seq_len=seq_len, format=protocol, prefix_tokens=len(prefix), tokens=int(ids_out.numel()))
    return ids_out, prov


def _random_windows(tokenizer, data: Text, samples: int, seq_len: int, seed: int, specials: bool
                    ) -> tuple[torch.Tensor, dict]:
    source = data.provenance["name"]
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
