"""Output folders: the only code that writes a user's output_dir, so it is whole or untouched.

    target = check_output_path(path, overwrite, protect=[model_folder], keep=[recipe_folder], need_bytes=n)
    with OutputDir(target, overwrite) as out:      # takes the lock, cleans up killed runs' leftovers
        write into out.tmp                          # a hidden sibling .NAME.partial-XXXXXXXX
    out.final                                       # where the result is (target, or beside it: see below)

- Every path problem is a one-line SmoothQuantError from `check_output_path`, before any work.
- One run per target: an OS lock (flock on `.NAME.lock` beside the target) is held for the whole run; a second
  run fails at once and names the holder. Leftovers of killed runs are judged by the lock, not by PIDs (a PID
  means nothing across containers sharing a folder), and removed by the next run; a completed result whose swap
  was killed is restored instead.
- At the swap, under the lock: with overwrite false, a target that became non-empty during the run is never
  replaced; the result is kept beside it as NAME.finished-TIMESTAMP and `out.final` says so.
- SIGINT, SIGTERM, SIGHUP and SIGQUIT raise `Interrupted`. Cleanup and the swap run with those signals held, so
  a burst of them cannot cut either; `Interrupted.detail` says what is on disk afterwards.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import SmoothQuantError

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT))
LONGEST_SUFFIX = len(".finished-20261231-235959-99")  # the longest name made beside the target, minus NAME


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; `detail` says what was left on disk (None: nothing was written yet)."""

    def __init__(self, signum: int, detail: str | None = None):
        super().__init__(signum)
        self.signum, self.detail = signum, detail

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


# ---- signals ------------------------------------------------------------------------------
class _Signals:
    depth = 0        # handle_signals() nesting
    held = 0         # hold() nesting: > 0 means signals are recorded, not raised
    pending: list[int] = []


def _handler(signum, frame):
    if _Signals.held:
        _Signals.pending.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT, SIGTERM, SIGHUP and SIGQUIT raise Interrupted inside (main thread only; elsewhere a no-op). A signal
    the process was started with ignored stays ignored (`nohup` ignores SIGHUP, a shell's background job SIGINT)."""
    if threading.current_thread() is not threading.main_thread() or _Signals.depth:
        yield
        return
    old = {s: signal.signal(s, _handler) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    _Signals.depth += 1
    try:
        yield
    finally:
        _Signals.depth -= 1
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def hold() -> Iterator[list[int]]:
    """Signals that arrive inside are recorded (in the yielded list, once the block ends), not raised."""
    _Signals.held += 1
    start = len(_Signals.pending)
    got: list[int] = []
    try:
        yield got
    finally:
        _Signals.held -= 1
        got.extend(_Signals.pending[start:])
        del _Signals.pending[start:]


# ---- checks before any work ---------------------------------------------------------------------
def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_output_path(path: str | Path, overwrite: bool, protect: Iterable[Path] = (), keep: Iterable[Path] = (),
                      need_bytes: int = 0) -> Path:
    """See _check_output_path; an OSError of the file system's own (a name too long, a loop of symlinks, no
    permission to look) is a one-line error too."""
    try:
        return _check_output_path(path, overwrite, protect, keep, need_bytes)
    except OSError as e:
        raw = str(path)
        raise SmoothQuantError(f"output_dir {raw[:80]!r}{'...' if len(raw) > 80 else ''} cannot be used: "
                               f"{e.strerror or e}; choose another output_dir.") from None


def _check_output_path(path: str | Path, overwrite: bool, protect: Iterable[Path] = (), keep: Iterable[Path] = (),
                       need_bytes: int = 0) -> Path:
    """-> the absolute target. Refuses (SmoothQuantError, one line) a path that cannot be an output folder or
    whose replacement would destroy something: `protect` folders (the model) may not be, contain or hold the
    target; `keep` folders (the recipe's, the data files') and the current folder may not be it or lie inside it."""
    raw = str(path)
    if "\x00" in raw:
        raise SmoothQuantError("output_dir contains a NUL byte; write a plain folder path.")
    if not raw.strip():
        raise SmoothQuantError("output_dir is empty; set it to a new folder, e.g. output_dir: runs/my-model.")
    try:
        p = Path(raw).expanduser()
    except RuntimeError:
        raise SmoothQuantError(f"output_dir {raw!r}: its ~ names no user's home folder here; write the path out.") from None
    if p.name in ("", ".", ".."):
        raise SmoothQuantError(f"output_dir {raw!r} names no new folder (it would replace the folder itself, or its "
                               "parent); give a folder name, e.g. output_dir: runs/my-model.")
    p = Path(os.path.abspath(p))
    if p.is_symlink():
        real = Path(os.path.realpath(p))
        if not real.exists():
            raise SmoothQuantError(f"output_dir {p} is a symlink to {real}, which does not exist; create {real} or "
                                   "choose another output_dir.")
        p = real
    p = Path(os.path.realpath(p.parent)) / p.name
    try:
        name_max = os.pathconf(_existing_ancestor(p.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(p.name.encode("utf-8", "surrogateescape")) + LONGEST_SUFFIX > name_max:
        raise SmoothQuantError(f"output_dir's last name is {len(p.name)} characters long; the folders made beside it "
                               f"need it to be at most {name_max - LONGEST_SUFFIX}. Choose a shorter name.")
    if p.exists():
        if not p.is_dir():
            raise SmoothQuantError(f"output_dir {p} exists and is not a folder; choose another output_dir.")
        if os.path.ismount(p):
            raise SmoothQuantError(f"output_dir {p} is a mount point, which cannot be replaced; use a folder inside it.")
        if not overwrite and any(p.iterdir()):
            raise SmoothQuantError(f"output_dir {p} already exists and is not empty; choose another output_dir or set "
                                   "overwrite: true (--set overwrite=true) to replace it.")
    for q in protect:
        q = Path(os.path.realpath(q))
        if _inside(p, q) or _inside(q, p):
            raise SmoothQuantError(f"output_dir {p} {'is' if p == q else 'lies inside' if _inside(p, q) else 'contains'} "
                                   f"the model folder {q}; write the outputs somewhere else.")
    for q in [*keep, Path.cwd()]:
        q = Path(os.path.realpath(q))
        if _inside(q, p):
            what = "the current folder" if q == Path(os.path.realpath(Path.cwd())) else str(q)
            raise SmoothQuantError(f"output_dir {p} {'is' if p == q else 'contains'} {what}, which a run replaces as a "
                                   "whole; give a new folder for the outputs.")
    base = _existing_ancestor(p.parent)
    if not base.is_dir():
        raise SmoothQuantError(f"output_dir {p} cannot be made: {base} is a file, not a folder.")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SmoothQuantError(f"output_dir {p} cannot be made: {base} is not writable (read-only or no permission); "
                               "choose a writable place.")
    free = shutil.disk_usage(base).free
    if need_bytes and free < need_bytes:
        raise SmoothQuantError(f"not enough free space for output_dir {p}: the outputs need about "
                               f"{need_bytes / 2**30:.2f} GiB and {base} has {free / 2**30:.2f} GiB free; free space "
                               "or choose another place.")
    return p


def _existing_ancestor(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


# ---- the lock -----------------------------------------------------------------------------------
def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _acquire(target: Path) -> int:
    """flock on .NAME.lock (created if needed; the holder writes who it is into it). -> the open descriptor."""
    path = _lock_path(target)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SmoothQuantError(f"cannot create the lock file {path} ({e.strerror}); choose a writable output_dir.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.read(fd, 4096) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            who = (f" (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"
                   if holder else "")
            raise SmoothQuantError(f"output_dir {target} is being written by another run{who}; wait for it to "
                                   "finish or choose another output_dir.") from None
        try:  # the file we locked must still be the one at `path` (a finishing holder unlinks it)
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[:4]}).encode())
    return fd


def _release(target: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(_lock_path(target))
    os.close(fd)


# ---- leftovers of killed runs -----------------------------------------------------------------------
def recover(target: Path) -> list[str]:
    """Under the lock: a completed result whose swap was killed (.NAME.done-*) becomes the target when the target is
    missing (or is kept beside it); a replaced target whose swap was killed (.NAME.old-*) comes back if nothing
    else did; partial folders are removed. -> what was done, one line each."""
    parent, name, done = target.parent, target.name, []
    with hold():
        for d in sorted(parent.glob(f".{name}.done-*")):
            if not target.exists():
                d.rename(target)
                done.append(f"restored the completed output of an interrupted run to {target}")
            elif d.name.startswith(f".{name}.done-o-"):  # that run was told to overwrite: finish its swap
                _replace(target, d)
                done.append(f"finished the interrupted swap of a completed run (overwrite) into {target}")
            else:
                kept = _beside(target)
                d.rename(kept)
                done.append(f"kept the completed output of an interrupted run at {kept}")
        for d in sorted(parent.glob(f".{name}.old-*")):
            if not target.exists() and (d / name).is_dir():
                (d / name).rename(target)
                done.append(f"restored {target} from an interrupted swap")
            shutil.rmtree(d, ignore_errors=True)
        for d in parent.glob(f".{name}.partial-*"):
            shutil.rmtree(d, ignore_errors=True)
            done.append(f"removed the partial folder {d} of a run that was killed")
    return done


def _replace(target: Path, new: Path) -> None:
    """`new` becomes `target`; the old target goes aside as .NAME.old-* (recover() cleans it up if a kill lands
    between the two renames) and is then removed."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    target.rename(old / target.name)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _beside(target: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(100):
        p = target.parent / (f"{target.name}.finished-{stamp}" + (f"-{i}" if i else ""))
        if not p.exists():
            return p
    raise SmoothQuantError(f"too many finished folders beside {target}; remove some.")


# ---- the run's folder ---------------------------------------------------------------------------------
class OutputDir:
    """The context of one run's output (see the module's docstring). `tmp` is where the run writes; after a
    clean exit `final` is where the result is and `kept_beside` tells whether it is not the target."""

    def __init__(self, target: Path, overwrite: bool = False):
        self.target, self.overwrite = Path(target), overwrite
        self.final: Path | None = None
        self.kept_beside = False
        self.recovered: list[str] = []

    def __enter__(self) -> OutputDir:
        self._signals = handle_signals()
        self._signals.__enter__()
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._fd = _acquire(self.target)
            try:
                self.recovered = recover(self.target)
                t = self.target
                if t.exists() and (not t.is_dir() or (not self.overwrite and any(t.iterdir()))):
                    raise SmoothQuantError(f"output_dir {t} already exists and is not empty; choose another output_dir "
                                           "or set overwrite: true (--set overwrite=true) to replace it.")
                self.tmp = Path(tempfile.mkdtemp(prefix=f".{t.name}.partial-", dir=t.parent))
                self.tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the result gets mkdir's usual mode
            except BaseException:
                _release(self.target, self._fd)
                raise
        except BaseException:
            self._signals.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        with hold() as late:  # nothing below can be cut by a signal
            try:
                if kind is None:
                    self._swap()
                else:
                    shutil.rmtree(self.tmp, ignore_errors=True)
                    if isinstance(exc, KeyboardInterrupt):
                        exc.detail = (f"the partial output could not be removed: remove {self.tmp} by hand"
                                      if self.tmp.exists() else "the partial output was removed; output_dir is as it was")
            finally:
                _release(self.target, self._fd)
                self._signals.__exit__(None, None, None)
        if kind is not None and issubclass(kind, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            left = (f"remove {self.tmp} by hand" if self.tmp.exists() else
                    "the partial output was removed; output_dir is as it was")
            raise SmoothQuantError(f"writing the outputs failed: {exc.strerror} ({exc.filename or self.target.parent}); "
                                   f"{left}. Free space or choose another output_dir.") from None
        if late and kind is None:  # a signal came while the finished result was put in place: honour it, truly
            where = f"kept beside output_dir at {self.final}" if self.kept_beside else f"in {self.final}"
            raise Interrupted(late[0], f"the run had completed: the outputs are {where}")
        return False

    def _swap(self) -> None:
        t, parent = self.target, self.target.parent
        # the name says whether the run may replace the target, for recover() after a kill
        done = parent / f".{t.name}.done-{'o' if self.overwrite else 'k'}-{self.tmp.name.rsplit('-', 1)[-1]}"
        self.tmp.rename(done)  # from here on the result counts as complete (recover() restores it)
        if not self.overwrite or not t.exists():
            try:
                os.rename(done, t)  # atomic; replaces only a missing or empty folder
                self.final = t
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
            if not self.overwrite:  # the user put something there during the run: never replace it
                self.final = _beside(t)
                done.rename(self.final)
                self.kept_beside = True
                return
        _replace(t, done)
        self.final = t


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def model_folders(model) -> list[Path]:
    """The local folder a loaded model came from (its weights may still be read from there): exports protect it."""
    spec = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    try:
        p = Path(spec).expanduser()
        return [p if p.is_dir() else p.parent] if spec and p.exists() else []
    except (RuntimeError, OSError, ValueError):
        return []
