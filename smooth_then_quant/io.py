"""Output folders that appear whole or not at all: write into a temporary sibling, rename at the end."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Iterator

from .errors import SmoothQuantError


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty folder (before any work starts) unless overwrite is set."""
    if path.exists() and not path.is_dir():
        raise SmoothQuantError(f"output_dir {path} exists and is not a folder; choose another output_dir.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SmoothQuantError(f"output_dir {path} already exists and is not empty; choose another output_dir "
                               f"or set overwrite: true (--set overwrite=true) to replace it.")


@contextlib.contextmanager
def atomic_output_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it becomes `path` in one rename.
    On any error (or interruption) the temporary folder is removed and `path` is untouched."""
    path = Path(path)
    check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-{os.getpid()}-", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the finished folder gets mkdir's usual mode
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / path.name)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_partials(path: Path) -> list[Path]:
    """A run killed with SIGKILL (or a power cut) cannot clean up: its hidden temporary folder
    `.NAME.partial-PID-*` stays beside `path`. Remove those whose process is gone."""
    removed = []
    for p in path.parent.glob(f".{path.name}.partial-*"):
        pid = p.name.removeprefix(f".{path.name}.partial-").split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
