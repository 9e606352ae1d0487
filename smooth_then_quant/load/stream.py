"""A streamed model: the skeleton of the checkpoint's model (parameters on meta) whose decoder layers are read
from the safetensors shards when a walk needs them (arch/walk.py), with the state's edits applied.

    model = streamed_model("folder", torch.float32, "cpu")     # nothing but small tensors resident
    hidden = walk(model, ids, 4)                                # one layer resident at a time
    smooth_(clone_model(model), plan)                           # a state: the plan's edits, replayed on onload
    gptq_(model, ids, cfg)                                      # changed layers are kept in the scratch folder

A model *state* (unsmoothed, paper, smoothed, a quantized cell) is not a copy of the weights: it is the same
checkpoint plus, per layer, the edits to replay after reading it (`add_edit`: the smoothing plan's items) and,
for layers a step changed in place (GPTQ), the changed layer kept in a scratch file (a quantized one as its
integer codes, quantize/keep.py). Deep-copying the model
(clone_model) copies these lists, not the checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..arch import adapter_for, trim_heap
from ..arch.sequential import SOURCE_ATTR, HiddenStates, Keep
from ..errors import SmoothQuantError
from ..io import Rows, Scratch, ShardWriter, save_tensors
from .lazy import ROW_CHUNK, Checkpoint, model_prefixes, onload_small_, skeleton

Edit = Callable[[nn.Module], None]
SCRATCH_SHARD_BYTES = 64 * 2**20


class KeptFile:
    """A kept layer's scratch file, removed once no state refers to it (a quantized clone dropped after its
    evaluation frees its layers' files then, not at the end of the run: the scratch holds one state at a time)."""

    def __init__(self, path: Path):
        self.path = path
        weakref.finalize(self, _remove, str(path))


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


class CheckpointSource:
    """The LayerSource of a streamed model: its checkpoint, its per-layer edits and kept layers."""

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype, device, scratch: Scratch, max_memory: int | None = None):
        self.ckpt, self.dtype, self.device, self.scratch = ckpt, dtype, torch.device(device), scratch
        self.max_memory = default_hidden_budget() if max_memory is None else max_memory
        self.edits: dict[int, list[tuple[str, Edit]]] = {}
        self.kept: dict[int, tuple[KeptFile, int, Keep]] = {}  # layer -> (its file, edits it holds, its packer)
        self.history: list[str] = [f"{ckpt.folder.resolve()}:{dtype}"]  # what the state's digest is made of

    # ---- state --------------------------------------------------------------------------------
    def add_edit(self, li: int, key: str, edit: Edit) -> None:
        """Replay `edit(layer)` whenever layer li is read (`key` names it in the state's digest)."""
        self.edits.setdefault(li, []).append((key, edit))
        self.history.append(f"edit {li} {key}")

    def digest(self) -> str:
        return hashlib.blake2b("\n".join(self.history).encode(), digest_size=16).hexdigest()

    def __deepcopy__(self, memo):
        twin = copy.copy(self)  # shares the checkpoint, the scratch folder and the kept files (never rewritten)
        twin.edits = {li: list(e) for li, e in self.edits.items()}
        twin.kept, twin.history = dict(self.kept), list(self.history)
        return twin

    # ---- LayerSource ----------------------------------------------------------------------------
    def onload_(self, model: nn.Module, li: int, layer: nn.Module) -> None:
        from accelerate.utils import set_module_tensor_to_device

        done = 0
        if li in self.kept:
            kept, done, keep = self.kept[li]
            with safe_open(str(kept.path), "pt", device=str(self.device)) as st:
                keep.unpack_(layer, {name: st.get_tensor(name) for name in st.keys()}, self.device)
        else:
            prefix = _layer_prefix(model, li)
            for name, _ in list(layer.named_parameters()):
                key = self.ckpt.key(f"{prefix}.{name}", model_prefixes(model))
                set_module_tensor_to_device(layer, name, self.device, value=self.ckpt.tensor(key, self.dtype))
        with torch.no_grad():
            for _, edit in self.edits.get(li, [])[done:]:
                edit(layer)

    def offload_(self, model: nn.Module, li: int, layer: nn.Module, keep: Keep | None) -> None:
        if keep is not None:
            tensors = keep.pack(layer)
            path = self.scratch.path / f"layer{li}-{uuid.uuid4().hex[:12]}.safetensors"
            try:
                save_tensors(tensors, path)
            except OSError as e:  # full disk, a folder removed under the run
                path.unlink(missing_ok=True)
                _free(layer)
                raise SmoothQuantError(f"cannot write layer {li} to the offload folder {self.scratch.path.parent} "
                                       f"({e.strerror or e}); free space there or set resources.offload_dir to a folder "
                                       "with room for the quantized layers.") from None
            h = hashlib.blake2b(digest_size=16)
            for n in sorted(tensors):
                h.update(n.encode())
                h.update(tensors[n].view(-1).view(torch.uint8).numpy())
            self.kept[li] = (KeptFile(path), len(self.edits.get(li, [])), keep)
            self.history.append(f"kept {li} {h.hexdigest()}")
            del tensors
        _free(layer)

    def hidden_states(self) -> HiddenStates:
        return HiddenStates(self.max_memory, self.scratch.path)

    def embed(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """model.get_input_embeddings()(ids) from the checkpoint's rows alone: ids [B, T] -> [B, T, H]."""
        emb = model.get_input_embeddings()
        rows = self.ckpt.rows(self._key_of(model, emb), ids, self.dtype)
        scale = getattr(emb, "embed_scale", None)  # Gemma's scaled embedding multiplies inside the module
        rows = rows if scale is None else rows * scale.to(self.dtype)
        return rows.to(self.device)

    def head_rows(self, model: nn.Module, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of lm_head's weight (the embedding's when tied and not stored) -> [n, H]."""
        head = model.get_output_embeddings()
        try:
            key = self._key_of(model, head)
        except SmoothQuantError:  # tied: the checkpoint stores the embedding only
            key = self._key_of(model, model.get_input_embeddings())
        return self.ckpt.row_range(key, start, stop, self.dtype).to(self.device)

    def rows_of(self, model: nn.Module, name: str) -> Rows | torch.Tensor:
        """A tensor outside the decoder layers for an export: a 2-D one as io.Rows (ROW_CHUNK rows per read)."""
        key = self.ckpt.key(name, model_prefixes(model))
        shape = self.ckpt.shape(key)
        if len(shape) != 2:
            return self.ckpt.tensor(key, self.dtype)

        def blocks():
            for start in range(0, shape[0], ROW_CHUNK):
                yield self.ckpt.row_range(key, start, min(start + ROW_CHUNK, shape[0]), self.dtype)
        return Rows(shape, self.dtype, blocks)

    def tensor(self, model: nn.Module, name: str) -> torch.Tensor:
        """A tensor outside the decoder layers (the embedding, an untied lm_head) by its name in the model."""
        return self.ckpt.tensor(self.ckpt.key(name, model_prefixes(model)), self.dtype)

    def _key_of(self, model: nn.Module, module: nn.Module) -> str:
        name = next(n for n, m in model.named_modules() if m is module)
        return self.ckpt.key(f"{name}.weight", model_prefixes(model))


def _free(layer: nn.Module) -> None:
    """The layer's parameters back to meta; its buffers (never read from the checkpoint) stay."""
    from accelerate.utils import set_module_tensor_to_device

    for name, _ in list(layer.named_parameters()):
        set_module_tensor_to_device(layer, name, "meta")


def default_hidden_budget() -> int:
    """A quarter of the memory available now (at least 1 GiB): the hidden states a walk keeps in RAM."""
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 * 2**30
    return max(2**30, avail // 4)


def _layer_prefix(model: nn.Module, li: int) -> str:
    layer = adapter_for(model).decoder_layers(model)[li]
    return next(n for n, m in model.named_modules() if m is layer)


def streamed_model(folder: str | Path, dtype: torch.dtype = torch.float32, device="cpu", config=None,
                   scratch: Scratch | None = None, max_memory: int | None = None) -> nn.Module:
    """The model in `folder` (safetensors, one file or shards + index) as a streamed skeleton: every shard is
    checked against the index here, before any work; the small tensors (final norm, positions) are read.
    max_memory: bytes of hidden states a walk keeps in RAM before spilling to the scratch folder (default: a
    quarter of the available memory)."""
    from transformers import AutoConfig

    ckpt = Checkpoint(folder)
    config = config if config is not None else AutoConfig.from_pretrained(folder)
    model = skeleton(config, dtype)
    ckpt.check_shapes(model)  # a missing tensor or another model's weights: refused now, not at layer 20
    for emb in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None}.values():
        key = ckpt.key(next(n for n, p in model.named_parameters() if p is emb.weight), model_prefixes(model))
        for start in range(0, emb.weight.shape[0], ROW_CHUNK):  # NaN/inf anywhere in the vocabulary: found now
            ckpt.row_range(key, start, start + ROW_CHUNK, dtype)
    onload_small_(model, ckpt, adapter_for(model).decoder_layers(model), dtype, device)
    setattr(model, SOURCE_ATTR, CheckpointSource(ckpt, dtype, device, scratch or Scratch(), max_memory))
    return model


def _dequantize(tensor, dequantize):
    """gguf's dequantize, a few thousand rows at a time into one array (its temporaries are several times the
    tensor's float size, which for a vocabulary matrix is the run's peak)."""
    import numpy as np

    data = tensor.data  # block-quantized types: [rows, bytes per row]
    if data.ndim != 2 or len(data) <= 4096:
        return dequantize(data, tensor.tensor_type)
    first = dequantize(data[:4096], tensor.tensor_type)
    out = np.empty((len(data), *first.shape[1:]), dtype=first.dtype)
    out[:4096] = first
    for s in range(4096, len(data), 4096):
        out[s: s + 4096] = dequantize(data[s: s + 4096], tensor.tensor_type)
    return out


def gguf_to_safetensors(path: str | Path, config, folder: Path, dtype: torch.dtype) -> Path:
    """Dequantize a GGUF file into a safetensors folder one tensor at a time (streaming: the float model is never
    whole in memory). The names and tensor fixes (llama's q/k permutation, GPT-2's transposes, Gemma's norm
    offset) are transformers' own GGUF processors, as `from_pretrained(gguf_file=...)` applies them; only their
    loop is repeated here, writing each tensor out instead of collecting the state dict."""
    import numpy as np
    from gguf import GGUFReader, dequantize
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map,
                                                          load_gguf_checkpoint, read_field)


    parsed = load_gguf_checkpoint(str(path), return_tensors=False)  # config and tokenizer fields only
    parsed["tensors"] = {}  # where some processors put a tensor directly
    reader = GGUFReader(str(path))
    architecture = read_field(reader, "general.architecture")[0]
    # the reader keeps a numpy view per element of every key-value field: ~160 MB for SmolLM2's tokenizer arrays,
    # which would sit beside the largest dequantized tensor (the run's load-time peak); its tensors need none
    reader.fields.clear()
    trim_heap()  # and the parses' freed temporaries (config, tokenizer) go back to the OS before the tensors come
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed.get("config", {}))
    key_map = get_gguf_hf_weights_map(skeleton(config, dtype), processor)
    writer = ShardWriter(folder, SCRATCH_SHARD_BYTES)  # small shards: a shard is held whole until written
    for tensor in reader.tensors:
        result = processor.process(weights=_dequantize(tensor, dequantize), name=tensor.name,
                                   tensor_key_mapping=key_map, parsed_parameters=parsed)
        if result.name in key_map:
            w = result.weights
            w = w if w.flags.writeable and w.flags.c_contiguous else np.copy(w)  # a view of the mapped file: copy
            writer.add(key_map[result.name], torch.from_numpy(w).to(dtype))
        for name in list(parsed["tensors"]):
            writer.add(name, parsed["tensors"].pop(name).to(dtype))
    writer.close()
    config.save_pretrained(folder)
    return folder
