"""A model that is never whole in memory: a skeleton on the meta device, and its weights read from the
checkpoint's safetensors shards one decoder layer at a time (llm-compressor's sequential onloading).

    ckpt = Checkpoint("folder")                      # every shard checked against the index, before any work
    model = skeleton(config, torch.float32)          # parameters on meta; buffers (rotary) real
    onload_small_(model, ckpt, layers, torch.float32, "cpu")              # final norm, positions: resident
    rows = ckpt.rows("model.embed_tokens.weight", ids, torch.float32)     # only the embedding rows ids need

stream.py builds the streamed model from these (its LayerSource reads one decoder layer at a time).

accelerate builds the skeleton (`init_empty_weights`) and places each tensor (`set_module_tensor_to_device`);
safetensors reads each tensor, or a row range of one, without touching the rest of its file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import SmoothQuantError

INDEX = "model.safetensors.index.json"
ROW_CHUNK = 8192  # embedding rows read at a time when gathering the rows a batch needs


class Checkpoint:
    """The tensors of a safetensors checkpoint folder (one file, or shards with an index), by name."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
                raise SmoothQuantError(f"{index} is not a safetensors index ({type(e).__name__}); re-save the "
                                       "checkpoint with save_pretrained.") from None
            files = sorted(set(weight_map.values()))
        else:
            weight_map, files = {}, sorted(p.name for p in self.folder.glob("*.safetensors"))
            if not files:
                raise SmoothQuantError(f"{self.folder} has no .safetensors weights.")
        missing = [f for f in files if not (self.folder / f).is_file()]
        if missing:
            raise SmoothQuantError(f"{self.folder}: shard {missing[0]} named by {INDEX} is missing"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                   + "; download the checkpoint again.")
        self.where: dict[str, str] = {}
        for f in files:
            try:
                with safe_open(str(self.folder / f), "pt") as st:
                    keys = list(st.keys())
            except (SafetensorError, OSError) as e:
                raise SmoothQuantError(f"{self.folder / f} is not a readable safetensors file ({e}); download "
                                       "the checkpoint again.") from None
            for k in keys:
                if weight_map and weight_map.get(k) != f:
                    raise SmoothQuantError(f"{self.folder / f} does not match {INDEX}: it holds {k}, which the index "
                                           f"places in {weight_map.get(k)}; download the checkpoint again.")
                self.where[k] = f
        absent = [k for k in weight_map if k not in self.where]
        if absent:
            raise SmoothQuantError(f"{self.folder / weight_map[absent[0]]} does not match {INDEX}: {absent[0]} is "
                                   "not in it; download the checkpoint again.")

    def key(self, name: str, prefixes: tuple[str, ...] = ()) -> str:
        """The checkpoint's name for a model tensor (checkpoints saved from the base model drop its prefix)."""
        for k in (name, *(name.removeprefix(p + ".") for p in prefixes if name.startswith(p + "."))):
            if k in self.where:
                return k
        raise SmoothQuantError(f"{self.folder}: the checkpoint has no tensor {name}; it does not match its "
                               "config.json.")

    def shape(self, key: str) -> tuple[int, ...]:
        with safe_open(str(self.folder / self.where[key]), "pt") as st:
            return tuple(st.get_slice(key).get_shape())

    def check_shapes(self, model: nn.Module) -> None:
        """Every parameter of `model` (a skeleton) is in the checkpoint with its shape: checked on the headers,
        before any work."""
        for name, p in model.named_parameters():
            key = self.key(name, model_prefixes(model))
            if self.shape(key) != tuple(p.shape):
                raise SmoothQuantError(f"{self.folder / self.where[key]}: {key} is {list(self.shape(key))} but "
                                       f"config.json makes it {list(p.shape)}; the weights and config.json are from "
                                       "different models.")

    def _finite(self, key: str, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SmoothQuantError(f"{self.folder / self.where[key]}: weight {key} holds NaN or inf values; the "
                                   "checkpoint is damaged (or was saved after a diverged step).")
        return t

    def tensor(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        with safe_open(str(self.folder / self.where[key]), "pt") as st:
            return self._finite(key, st.get_tensor(key).to(dtype))

    def row_range(self, key: str, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows start:stop of a 2-D tensor (only those are read)."""
        with safe_open(str(self.folder / self.where[key]), "pt") as st:
            return self._finite(key, st.get_slice(key)[start:stop].to(dtype))

    def rows(self, key: str, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """rows ids (any shape, int) of a 2-D tensor -> [*ids.shape, width]. Only the rows asked for are read (runs of
        nearby ids in one read of at most ROW_CHUNK rows): a batch's few hundred distinct tokens cost a few MB of
        reads and of mapped pages, not the whole vocabulary matrix (which, read chunk by chunk, was the peak of
        resident memory at every walk's start)."""
        flat = ids.reshape(-1).long()
        with safe_open(str(self.folder / self.where[key]), "pt") as st:
            sl = st.get_slice(key)
            n, width = sl.get_shape()
            if flat.numel() and (int(flat.max()) >= n or int(flat.min()) < 0):
                raise SmoothQuantError(f"token id {int(flat.max())} is outside the {n}-row embedding {key}.")
            uniq, inverse = torch.unique(flat, sorted=True, return_inverse=True)  # [U], [B*T]
            picked = torch.empty(uniq.numel(), width, dtype=dtype)  # [U, width]
            for a, b in _runs(uniq.tolist()):
                lo = int(uniq[a])
                picked[a:b] = sl[lo: int(uniq[b - 1]) + 1][uniq[a:b] - lo].to(dtype)
        return self._finite(key, picked)[inverse].reshape(*ids.shape, width)


RUN_GAP = 64  # ids at most this many rows apart are read in one slice (the rows between are read and dropped)


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct row ids -> [start, stop) index ranges of `ids` whose rows are read in one slice: a new range
    starts after a gap of more than RUN_GAP rows or once a range would span ROW_CHUNK rows."""
    runs, a = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] - ids[i - 1] > RUN_GAP or ids[i] - ids[a] >= ROW_CHUNK:
            runs.append((a, i))
            a = i
    return runs


def skeleton(config, dtype: torch.dtype) -> nn.Module:
    """The causal LM of `config` with every parameter on meta and real buffers (rotary frequencies)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # tied lm_head / embedding: one parameter, as from_pretrained leaves it
    return model.eval()


def model_prefixes(model: nn.Module) -> tuple[str, ...]:
    prefix = getattr(model, "base_model_prefix", "")
    return (prefix,) if prefix else ()


def onload_small_(model: nn.Module, ckpt: Checkpoint, layers: nn.ModuleList, dtype: torch.dtype, device) -> None:
    """Every parameter outside the decoder layers and the vocabulary matrices (final norm, GPT-2's positions)."""
    from accelerate.utils import set_module_tensor_to_device

    skip = {id(p) for p in layers.parameters()}
    for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
        if emb is not None:
            skip |= {id(p) for p in emb.parameters()}
    for name, p in list(model.named_parameters()):
        if id(p) not in skip:
            set_module_tensor_to_device(model, name, device, value=ckpt.tensor(ckpt.key(name, model_prefixes(model)), dtype))
