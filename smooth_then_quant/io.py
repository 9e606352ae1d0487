"""Files: JSON, private scratch folders, safetensors shards. (output_dir itself: output.py, its only writer.)"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from .errors import SmoothQuantError


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")


class Scratch:
    """A private temporary folder (offloaded layers, a converted GGUF), removed when the object is collected, at
    interpreter exit, or by `cleanup()`, whichever comes first. `base`: where to make it (default: the system
    temporary folder); it must exist and be writable, checked here, before any work."""

    def __init__(self, base: str | Path | None = None, prefix: str = "smooth-then-quant-"):
        import weakref

        if base is not None and not Path(base).is_dir():
            raise SmoothQuantError(f"offload folder {base} does not exist; create it or set resources.offload_dir to "
                                   "an existing writable folder.")
        try:
            self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
            probe = self.path / ".write-test"
            probe.write_bytes(b"0" * 4096)
            probe.unlink()
        except OSError as e:
            raise SmoothQuantError(f"cannot write to the offload folder {base or tempfile.gettempdir()} ({e.strerror or e}); "
                                   "set resources.offload_dir to a writable folder with free space.") from None
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def cleanup(self) -> None:
        self._finalizer()


def save_tensors(tensors: dict, path: Path) -> None:
    """safetensors' save_file, with its I/O failures as OSError: the rust writer raises SafetensorError("... I/O
    error: No space left on device (os error 28)") where Python's own writes raise OSError, so a full or read-only
    disk reaches the same one-line handling (a partial file is removed)."""
    import os
    import re

    from safetensors import SafetensorError
    from safetensors.torch import save_file
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:
        Path(path).unlink(missing_ok=True)
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        n = int(code.group(1))
        raise OSError(n, os.strerror(n), str(path)) from None


def shard_name(i: int, n: int) -> str:
    return "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


# torch dtype -> the safetensors header's dtype name (safetensors' own table, for the dtypes checkpoints hold)
SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
                      "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "uint16": "U16", "uint32": "U32",
                      "uint64": "U64"}


class Rows:
    """A 2-D tensor given as consecutive row blocks (a streamed checkpoint's embedding or lm_head): ShardWriter writes
    it block by block, so the matrix (and the mapped pages of reading it whole) is never resident at once.
    `blocks()` yields tensors [n_i, shape[1]] of `dtype` whose rows add up to shape[0]."""

    def __init__(self, shape: tuple[int, int], dtype, blocks):
        self.shape, self.dtype, self.blocks = tuple(shape), dtype, blocks


class ShardWriter:
    """Tensors written to safetensors shards of at most `max_bytes` as they come (transformers' file names
    and model.safetensors.index.json), so a checkpoint never has to be whole in memory: not even one shard.

    Hand-written because safetensors' writers (save_file, save) take the whole shard as one dict in memory, which
    for a 5 GB shard is 5 GB resident. Each tensor's bytes go to a spool file as it comes; `flush` writes the
    shard as the format specifies (8-byte little-endian header length, the JSON header padded with spaces to a
    multiple of 8, then the data) and copies the spool in after it. safe_open and transformers read the result
    (tests/test_io.py); `close()` names the shards once their number is known."""

    def __init__(self, folder: Path, max_bytes: int = 5 * 10**9, metadata: dict | None = None):
        self.folder, self.max_bytes, self.metadata = Path(folder), max_bytes, metadata or {"format": "pt"}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.header: dict = {}  # the pending shard's tensors: name -> dtype, shape, data_offsets
        self.size = 0
        self.spool = None
        self.files: list[tuple[Path, list[str], int]] = []  # (written file, its tensors, their bytes)

    def add(self, name: str, tensor) -> None:
        """Append a tensor, or a `Rows` (written block by block)."""
        import torch

        if isinstance(tensor, Rows):
            shape, tdtype, parts = tensor.shape, tensor.dtype, tensor.blocks()
        else:
            t = tensor.detach().cpu().contiguous()
            shape, tdtype, parts = tuple(t.shape), t.dtype, (t,)
        nbytes = math.prod(shape) * tdtype.itemsize
        if self.header and self.size + nbytes > self.max_bytes:
            self.flush()
        dtype = SAFETENSORS_DTYPES.get(str(tdtype).removeprefix("torch."))
        if dtype is None:
            raise SmoothQuantError(f"tensor {name} has dtype {tdtype}, which safetensors cannot store.")
        if name in self.header:
            raise SmoothQuantError(f"tensor {name} was written twice to one checkpoint.")
        if self.spool is None:
            self.spool = open(self.folder / f".shard-{len(self.files):05d}.spool", "wb")  # noqa: SIM115
        written = 0
        for part in parts:
            part = part.detach().cpu().contiguous()
            if part.dtype != tdtype or part.shape[1:] != shape[1:]:
                raise SmoothQuantError(f"tensor {name}: a block of shape {tuple(part.shape)} and {part.dtype} in a "
                                       f"tensor of shape {shape} and {tdtype}.")
            if part.numel():
                self.spool.write(memoryview(part.reshape(-1).view(torch.uint8).numpy()))
            written += part.numel() * part.element_size()
        if written != nbytes:  # a short or long block sequence would shift every later tensor's bytes
            raise SmoothQuantError(f"tensor {name}: its blocks held {written} bytes, its shape {shape} needs {nbytes}.")
        self.header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [self.size, self.size + nbytes]}
        self.size += nbytes

    def flush(self) -> None:
        if not self.header:
            return
        spool = Path(self.spool.name)
        self.spool.close()
        head = json.dumps({"__metadata__": self.metadata, **self.header}, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)
        path = self.folder / f".shard-{len(self.files):05d}.partial"
        with open(path, "wb") as out, open(spool, "rb") as data:
            out.write(len(head).to_bytes(8, "little"))
            out.write(head)
            shutil.copyfileobj(data, out, 16 * 2**20)
        spool.unlink()
        self.files.append((path, list(self.header), self.size))
        self.header, self.size, self.spool = {}, 0, None

    def close(self) -> list[str]:
        """Name the shards (and write the index when there are several); -> the file names."""
        self.flush()
        n, names, weight_map, total = len(self.files), [], {}, 0
        for i, (path, keys, nbytes) in enumerate(self.files):
            name = shard_name(i, n)
            total += nbytes
            path.rename(self.folder / name)
            names.append(name)
            weight_map.update({k: name for k in keys})
        if n > 1:
            write_json(self.folder / "model.safetensors.index.json",
                       {"metadata": {"total_size": total}, "weight_map": weight_map})
        return names


def weights_digest(folder: Path) -> dict[str, str]:
    """{file: sha256} of a checkpoint folder's safetensors shards: what a plan or activation file is bound to."""
    import hashlib

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        out[f.name] = h.hexdigest()
    return out


def check_bound(path: Path, recorded, folder: Path) -> None:
    """`recorded` ({file: sha256} written beside the weights) must match the weights in `folder` now."""
    if not isinstance(recorded, dict) or not recorded:
        raise SmoothQuantError(f"{path} is not bound to any weights (no weights_sha256: written by hand or by an older "
                               "version); re-export the model, or remove the file to load the weights alone.")
    now = weights_digest(folder)
    if now != recorded:
        bad = sorted(set(now) ^ set(recorded)) or sorted(k for k in now if now[k] != recorded.get(k))
        raise SmoothQuantError(f"{path} belongs to other weights: {', '.join(map(str, bad[:3]))[:200]} differ from the "
                               "checkpoint it was written with; re-export the model, or remove the file to load the "
                               "weights alone.")
