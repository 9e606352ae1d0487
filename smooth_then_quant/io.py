"""Files: JSON, private scratch folders, safetensors shards. (output_dir itself: output.py, its only writer.)"""
from __future__ import annotations

import json
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


def shard_name(i: int, n: int) -> str:
    return "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


class ShardWriter:
    """Tensors written to safetensors shards of at most `max_bytes` as they come (transformers' file names
    and model.safetensors.index.json), so a checkpoint never has to be whole in memory. `close()` names the
    shards once their number is known."""

    def __init__(self, folder: Path, max_bytes: int = 5 * 10**9, metadata: dict | None = None):
        self.folder, self.max_bytes, self.metadata = Path(folder), max_bytes, metadata or {"format": "pt"}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pending: dict = {}
        self.size = 0
        self.files: list[tuple[Path, list[str], int]] = []  # (written file, its tensors, their bytes)

    def add(self, name: str, tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.size + nbytes > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.detach().cpu().contiguous()
        self.size += nbytes

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        path = self.folder / f".shard-{len(self.files):05d}.partial"
        save_file(self.pending, str(path), metadata=self.metadata)
        self.files.append((path, list(self.pending), self.size))
        self.pending, self.size = {}, 0

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
