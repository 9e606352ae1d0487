"""The one way every step runs a model: layer by layer (GPTQ's layer-sequential order, llm-compressor's
sequential onloading), whether the model is resident or streamed from its checkpoint.

    hidden = walk(model, ids, batch_size=4)                # ids [N, T] -> hidden states after the last layer
    walk(model, ids, 4, after_layer=lambda li, layer: ...)  # per-layer work while the layer is resident

The hidden states of every batch enter layer 0 (embeddings, masks and position embeddings come from one
pass of model.base_model in which every decoder layer is a pass-through); then each layer in turn runs
every batch and is freed. A batch sees exactly the computation of `model.base_model(input_ids=batch)`,
layer by layer, so hooks at a layer's modules see the same tensors (for one (layer, point) in the same
batch order); only the interleaving across layers differs.

A *streamed* model is a skeleton whose decoder layers sit on the meta device and carry a LayerSource
(load/stream.py) that reads a layer's weights when it is needed and frees them after. A resident model
has none; `resident` and `walk` then touch no weights. Resident memory of a walk: the working layer, the
batches' hidden states, what the callbacks keep.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from .. import dist
from ..errors import SmoothQuantError
from ..io import save_tensors
from ..progress import bar
from .registry import adapter_for

SOURCE_ATTR = "_smooth_then_quant_source"


class Keep(Protocol):
    """How a streamed model stores a layer a step changed in place (`resident(..., keep=...)`), for its later walks:
    `pack` gives the tensors to write, `unpack_` puts the layer's parameters back from them, bit-identical."""

    def pack(self, layer: nn.Module) -> dict[str, torch.Tensor]: ...

    def unpack_(self, layer: nn.Module, tensors: dict[str, torch.Tensor], device: torch.device) -> None: ...


class Parameters:
    """Keep: every parameter as it is (quantize/keep.py's GridCodes stores a quantized layer's codes instead)."""

    def pack(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in layer.named_parameters()}

    def unpack_(self, layer: nn.Module, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for name, t in tensors.items():
            set_module_tensor_to_device(layer, name, device, value=t)


class LayerSource(Protocol):
    """Where a streamed model's weights come from (load/stream.py implements it)."""
    device: torch.device

    def onload_(self, model: nn.Module, li: int, layer: nn.Module) -> None: ...

    def offload_(self, model: nn.Module, li: int, layer: nn.Module, keep: Keep | None) -> None: ...

    def embed(self, model: nn.Module, ids: torch.Tensor) -> torch.Tensor: ...  # [B, T] -> [B, T, H]

    def head_rows(self, model: nn.Module, start: int, stop: int) -> torch.Tensor: ...  # lm_head rows [n, H]

    def tensor(self, model: nn.Module, name: str) -> torch.Tensor: ...  # one outside the decoder layers

    def rows_of(self, model: nn.Module, name: str): ...  # the same for an export: a 2-D one as io.Rows (row blocks)

    def add_edit(self, li: int, key: str, edit: Callable[[nn.Module], None]) -> None: ...  # replayed on onload

    def hidden_states(self) -> HiddenStates: ...  # with its memory budget and spill folder

    def digest(self) -> str: ...


def source_of(model: nn.Module) -> LayerSource | None:
    return getattr(model, SOURCE_ATTR, None)


def is_streamed(model: nn.Module) -> bool:
    return source_of(model) is not None


def model_device(model: nn.Module) -> torch.device:
    """Where the model computes: its source's device, or its first parameter's. Every tensor fed to it goes there."""
    src = source_of(model)
    return src.device if src is not None else next(model.parameters()).device


@contextlib.contextmanager
def resident(model: nn.Module, li: int, keep: Keep | None = None) -> Iterator[nn.Module]:
    """Decoder layer `li` with its weights present for the block. `keep`: the block changes the weights
    (GPTQ), so a streamed model stores them for its later walks, as `keep` packs them (Parameters(): every
    parameter as it is). A resident model's layer is just returned."""
    layer = adapter_for(model).decoder_layers(model)[li]
    src = source_of(model)
    if src is None:
        yield layer
        return
    src.onload_(model, li, layer)
    ok = False
    try:
        yield layer
        ok = True
    finally:
        src.offload_(model, li, layer, keep if ok else None)


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc malloc_trim; no-op elsewhere), so resident memory does not
    ratchet up layer after layer with freed weight- and Hessian-sized temporaries."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


class HiddenStates:
    """The hidden states between layers, one [B, T, H] per batch: in memory up to `budget` bytes, beyond it each
    further batch's tensor is written to `folder` and read back when its turn comes (a list otherwise)."""

    def __init__(self, budget: int | None = None, folder: Path | None = None):
        self.budget, self.folder = budget, folder
        self.items: list = []  # a tensor, or (path, device) of a spilled one
        self.resident = 0
        self.spilled = 0  # how many writes went to disk (reported, tested)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return (self[i] for i in range(len(self.items)))

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.items[i]
        if isinstance(item, tuple):
            from safetensors.torch import load_file
            path, device = item
            return load_file(str(path), device=str(device))["h"]
        return item

    def __setitem__(self, i: int, t: torch.Tensor) -> None:
        old = self.items[i]
        if isinstance(old, tuple):
            old[0].unlink(missing_ok=True)
        else:
            self.resident -= old.numel() * old.element_size()
        self.items[i] = self._keep(t, i)

    def append(self, t: torch.Tensor) -> None:
        self.items.append(None)
        self.items[-1] = self._keep(t, len(self.items) - 1)

    def _keep(self, t: torch.Tensor, i: int):
        n = t.numel() * t.element_size()
        if self.budget is None or self.folder is None or self.resident + n <= self.budget:
            self.resident += n
            return t
        path = self.folder / f"hidden-{id(self):x}-{i}.safetensors"
        save_tensors({"h": t.detach().contiguous().cpu()}, path)
        self.spilled += 1
        return path, t.device

    def clear(self) -> None:
        for item in self.items:
            if isinstance(item, tuple):
                item[0].unlink(missing_ok=True)
        self.items, self.resident = [], 0

    def __del__(self):  # spill files go with the walk that made them (the scratch folder goes at the run's end)
        try:
            self.clear()
        except Exception:  # interpreter shutdown: the scratch folder's own cleanup removes them
            pass


def hidden_states(model: nn.Module) -> HiddenStates:
    """Where a walk keeps the hidden states of its batches: a streamed model's source sets a memory budget and
    a spill folder (resources.max_memory, resources.offload_dir); a resident model keeps them all."""
    src = source_of(model)
    return src.hidden_states() if src is not None else HiddenStates()


def batches_of(ids: torch.Tensor, batch_size: int) -> list[tuple[int, torch.Tensor]]:
    return [(s, ids[s: s + batch_size]) for s in range(0, ids.shape[0], batch_size)]


def my_batches(ids: torch.Tensor, batch_size: int) -> list[tuple[int, torch.Tensor]]:
    """This rank's batches (all of them in a plain process): batch k goes to rank k mod world size, whole batches, so
    a batch's computation is the same at any world size."""
    batches = batches_of(ids, batch_size)
    if len(batches) < dist.world_size():
        raise SmoothQuantError(f"{ids.shape[0]} windows in batches of {batch_size} make {len(batches)} batches for "
                               f"{dist.world_size()} processes; give every process at least one batch (more windows, "
                               "a smaller batch_size, or fewer processes).")
    return dist.mine(batches)


def input_kwargs(model: nn.Module, ids: torch.Tensor) -> dict:
    """What model.base_model takes for ids [B, T]: the ids, or (streamed: no embedding matrix in memory) the
    embeddings gathered from the checkpoint's rows."""
    src = source_of(model)
    if src is None:
        return {"input_ids": ids.to(model_device(model))}
    return {"inputs_embeds": src.embed(model, ids)}


@torch.no_grad()
def layer_inputs(model: nn.Module, layers: nn.ModuleList, batches: Iterable[dict]
                 ) -> tuple[HiddenStates, list[list[tuple[tuple, dict]]]]:
    """The hidden states entering layer 0 (one per batch) and every layer's other arguments (position
    embeddings, masks; per layer, since e.g. Gemma3 mixes sliding and global layers), from one pass of
    model.base_model per batch (its keyword arguments) in which every decoder layer is a pass-through."""
    hidden, extra = hidden_states(model), [[] for _ in layers]
    handles = []
    for li, layer in enumerate(layers):
        def pre(_m, args, kwargs, li=li):
            kw = dict(kwargs)
            h = args[0] if args else kw.pop("hidden_states")
            if li == 0:
                hidden.append(h.detach().clone())
            extra[li].append((args[1:], kw))
        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        layer.forward = lambda *args, **kwargs: args[0] if args else kwargs["hidden_states"]
    try:
        for kw in batches:
            model.base_model(**kw, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        for layer in layers:
            del layer.forward  # back to the class's forward
    return hidden, extra


def layer_output(o) -> torch.Tensor:
    return o[0] if isinstance(o, tuple) else o


@torch.no_grad()
def walk(model: nn.Module, ids: torch.Tensor, batch_size: int = 1, *,
         before_batch: Callable[[int, torch.Tensor], None] | None = None,
         after_layer: Callable[[int, nn.Module], None] | None = None,
         desc: str = "layers", show: bool = True, shard: bool = True) -> HiddenStates:
    """Run ids [N, T] through every decoder layer in batches of `batch_size`, layer-major. Calls
    `before_batch(sample_offset, batch_ids)` before each batch enters a layer and `after_layer(li, layer)`
    once a layer has run every batch (still resident). -> the hidden states after the last layer, one
    [B, T, H] per batch (before the final norm).
    Under torchrun each rank runs its share of the batches (dist.mine: `shard`, the default) and the caller reduces
    what its callbacks measured; shard=False runs every batch on every rank (a step whose result must be identical
    everywhere without communication, e.g. a one-batch search)."""
    layers = adapter_for(model).decoder_layers(model)
    batches = my_batches(ids, batch_size) if shard else batches_of(ids, batch_size)
    hidden, extra = layer_inputs(model, layers, (input_kwargs(model, b) for _, b in batches))
    for li in bar(range(len(layers)), desc=desc, unit="layer", show=show, leave=False):
        with resident(model, li) as layer:
            for i, (s, b) in enumerate(batches):
                if before_batch is not None:
                    before_batch(s, b)
                args, kw = extra[li][i]
                hidden[i] = layer_output(layer(hidden[i], *args, **kw))
            if after_layer is not None:
                after_layer(li, layer)
        extra[li] = None
        trim_heap()
    return hidden


def final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last decoder layer and lm_head (adapter data: `final_norm`, from model.base_model)."""
    return model.base_model.get_submodule(adapter_for(model).final_norm)
