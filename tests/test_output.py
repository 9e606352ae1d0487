"""The output folder (smooth_then_quant/output.py): every path problem refused before any work, one run per
target, leftovers of killed runs recovered or removed by the next run, signals that cannot cut the cleanup or
the swap, and messages that say what is on disk."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.output import Interrupted, OutputDir, check_output_path, handle_signals, recover


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---- checks before any work ----------------------------------------------------------------------
@pytest.mark.parametrize("raw,needle", [
    ("", "output_dir is empty"), ("   ", "output_dir is empty"), (".", "names no new folder"),
    ("..", "names no new folder"), ("/", "names no new folder"), ("a\x00b", "NUL byte"),
    ("x" * 240, "characters long"), ("~nosuchuser_zz/out", "names no user's home folder"),
])
def test_bad_output_paths_are_one_line_errors(raw, needle):
    with pytest.raises(SmoothQuantError, match=needle) as e:
        check_output_path(raw, overwrite=True)
    assert "\n" not in str(e.value)


def test_paths_that_cannot_hold_an_output_are_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SmoothQuantError, match="is a file, not a folder"):
        check_output_path(tmp_path / "file" / "out", overwrite=False)
    with pytest.raises(SmoothQuantError, match="exists and is not a folder"):
        check_output_path(tmp_path / "file", overwrite=True)
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(SmoothQuantError, match="is a symlink to .*gone, which does not exist"):
        check_output_path(tmp_path / "link", overwrite=True)
    mounts = [Path(line.split()[1]) for line in Path("/proc/mounts").read_text().splitlines()]
    mount = next((m for m in mounts if m != Path("/") and m.is_dir()), None)
    if mount is not None:
        with pytest.raises(SmoothQuantError, match="mount point"):
            check_output_path(mount, overwrite=True)
    with pytest.raises(SmoothQuantError, match="about 1024.00 GiB"):
        check_output_path(tmp_path / "big", overwrite=False, need_bytes=2**40)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(SmoothQuantError, match="is not writable"):
        check_output_path(tmp_path / "a" / "b", overwrite=False)


def test_a_symlink_to_a_folder_is_followed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert check_output_path(tmp_path / "link", overwrite=False) == tmp_path / "real"


def test_outputs_never_replace_the_inputs(tmp_path, monkeypatch):
    model, recipe_dir = tmp_path / "models" / "m", tmp_path / "recipes"
    model.mkdir(parents=True)
    recipe_dir.mkdir()
    monkeypatch.chdir(tmp_path / "recipes")
    for out, word in ((model, "is"), (tmp_path / "models", "contains"), (model / "out", "lies inside")):
        with pytest.raises(SmoothQuantError, match=f"{word} the model folder"):
            check_output_path(out, overwrite=True, protect=[model])
    for out, word in ((recipe_dir, "is"), (tmp_path, "contains")):
        with pytest.raises(SmoothQuantError, match=f"{word} the current folder"):
            check_output_path(out, overwrite=True, keep=[recipe_dir])
    monkeypatch.chdir("/")
    with pytest.raises(SmoothQuantError, match=f"contains {recipe_dir}"):
        check_output_path(tmp_path, overwrite=True, keep=[recipe_dir])
    assert check_output_path(recipe_dir / "out", overwrite=True, keep=[recipe_dir]) == recipe_dir / "out"


def test_recipe_with_output_dir_on_its_inputs_fails_before_any_work(tmp_path, capsys):
    from planting import save_tiny

    from smooth_then_quant.cli import main
    save_tiny(tmp_path / "m", "llama")
    before = {p: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    data = tmp_path / "data"
    data.mkdir()
    (data / "cal.txt").write_text("some text " * 200)
    capsys.readouterr()
    for out in (tmp_path / "m", tmp_path, data):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"model: {tmp_path / 'm'}\ncalibration: {{data: {data / 'cal.txt'}, samples: 2, "
                          f"seq_len: 16}}\noutput_dir: {out}\noverwrite: true\n")
        assert main([str(recipe), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and str(out) in err, err
        assert {p: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before and recipe.is_file()
        assert (data / "cal.txt").is_file()


# ---- one run per target ------------------------------------------------------------------------------
def test_a_second_run_on_the_same_target_fails_at_once_naming_the_holder(tmp_path):
    target = tmp_path / "out"
    with OutputDir(target) as first:
        (first.tmp / "a").write_text("1")
        with pytest.raises(SmoothQuantError, match=rf"another run \(pid {os.getpid()} on "):
            with OutputDir(target):
                pass
        assert first.tmp.is_dir()  # the holder's partial folder is not "stale"
    assert (target / "a").read_text() == "1" and _names(tmp_path) == {"out"}


def test_leftovers_are_judged_by_the_lock_not_by_pids(tmp_path):
    """A partial folder named with a live PID (as a run in another container would leave) is still a leftover
    when nobody holds the lock."""
    target = tmp_path / "out"
    (tmp_path / f".out.partial-{os.getppid()}-abc").mkdir()  # a live PID
    (tmp_path / ".out.partial-zzz").mkdir()
    with OutputDir(target) as out:
        (out.tmp / "r").write_text("new")
    assert _names(tmp_path) == {"out"}


def test_a_killed_swap_is_recovered_never_lost(tmp_path):
    target = tmp_path / "out"
    # killed after the result was marked complete, before it was renamed: the next run restores it
    (tmp_path / ".out.done-x1").mkdir()
    (tmp_path / ".out.done-x1" / "report.md").write_text("finished")
    (tmp_path / ".out.old-y1").mkdir()
    assert recover(target) and (target / "report.md").read_text() == "finished"
    assert _names(tmp_path) == {"out"}
    # killed after the old target was moved aside, before the new one went in: the next run restores one of them
    target.rename(tmp_path / ".out.done-x2")
    (tmp_path / ".out.old-y2").mkdir()
    (tmp_path / ".out.old-y2" / "out").mkdir()
    recover(target)
    assert (target / "report.md").read_text() == "finished" and _names(tmp_path) == {"out"}
    # a completed overwrite run killed before its swap: the swap is finished
    (tmp_path / ".out.done-o-x4").mkdir()
    (tmp_path / ".out.done-o-x4" / "report.md").write_text("newer")
    recover(target)
    assert (target / "report.md").read_text() == "newer" and _names(tmp_path) == {"out"}
    # a completed result (no overwrite) beside an existing target is kept, visibly, never deleted
    (tmp_path / ".out.done-k-x3").mkdir()
    lines = recover(target)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.finished-")]
    assert len(kept) == 1 and str(kept[0]) in lines[0]


def test_a_target_filled_during_the_run_is_never_replaced(tmp_path):
    target = tmp_path / "out"
    with OutputDir(target, overwrite=False) as out:
        (out.tmp / "report.md").write_text("ours")
        target.mkdir()
        (target / "theirs.txt").write_text("the user's")
    assert (target / "theirs.txt").read_text() == "the user's" and not (target / "report.md").exists()
    assert out.kept_beside and out.final != target and (out.final / "report.md").read_text() == "ours"
    # with overwrite the finished output replaces the target, as asked
    with OutputDir(target, overwrite=True) as out:
        (out.tmp / "report.md").write_text("ours")
    assert _names(target) == {"report.md"} and out.final == target


def test_a_full_disk_during_the_run_is_a_clean_error(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(SmoothQuantError, match="No space left on device.*partial output was removed"):
        with OutputDir(target) as out:
            (out.tmp / "half").write_text("x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert _names(tmp_path) == set()


def test_a_small_tmpfs_filled_by_a_real_run(tmp_path):
    """A real full filesystem, where the machine allows mounting one (root in a VM); otherwise skipped (the test
    above patches the failure in)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "out").mkdir()
        (mnt / "out" / "mine.txt").write_text("keep me")
        with pytest.raises(SmoothQuantError, match="No space left on device"):
            with OutputDir(mnt / "out", overwrite=True) as out:
                (out.tmp / "big").write_bytes(os.urandom(1 << 20))
        assert _names(mnt) == {"out"} and (mnt / "out" / "mine.txt").read_text() == "keep me"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---- signals ----------------------------------------------------------------------------------------------
@pytest.fixture
def terminal_signals():
    """As in a terminal: CI may start the suite as a background job (SIGINT ignored) or under nohup (SIGHUP
    ignored), and handle_signals rightly leaves an ignored signal ignored."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)
    yield
    for s, h in old.items():
        signal.signal(s, h)


def test_an_ignored_signal_stays_ignored(terminal_signals):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    with handle_signals():
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)


def test_a_signal_burst_during_cleanup_cannot_cut_it(tmp_path, monkeypatch, terminal_signals):
    import shutil
    target = tmp_path / "out"
    real = shutil.rmtree

    def rmtree_under_fire(path, *a, **k):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT) * 3:
            os.kill(os.getpid(), sig)
        time.sleep(0.05)  # the handlers run while the folder is being removed
        real(path, *a, **k)

    with handle_signals():
        with pytest.raises(Interrupted) as e:
            with OutputDir(target) as out:
                (out.tmp / "half").write_text("x")
                monkeypatch.setattr(shutil, "rmtree", rmtree_under_fire)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
    assert e.value.name == "SIGTERM" and "partial output was removed" in e.value.detail
    assert _names(tmp_path) == set()


def test_a_signal_during_the_swap_reports_a_completed_run(tmp_path, monkeypatch, terminal_signals):
    target = tmp_path / "out"
    real = os.rename

    def rename_under_fire(a, b, *rest):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGHUP)
        return real(a, b, *rest)

    with handle_signals():
        with pytest.raises(Interrupted) as e:
            with OutputDir(target) as out:
                (out.tmp / "report.md").write_text("done")
                monkeypatch.setattr(os, "rename", rename_under_fire)
    assert "the run had completed" in e.value.detail and str(target) in e.value.detail
    assert (target / "report.md").read_text() == "done" and _names(tmp_path) == {"out"}


KILLED = textwrap.dedent("""
    import sys, time, pathlib
    from smooth_then_quant.output import OutputDir
    target, i = pathlib.Path(sys.argv[1]), 0
    while True:  # finished runs, one after another, each writing a complete folder (its marker last)
        i += 1
        with OutputDir(target, overwrite=True) as out:
            for k in range(20):
                (out.tmp / f"part{k}").write_bytes(b"x" * 4096)
            (out.tmp / "complete").write_text(str(i))
        print(i, flush=True)
""")


def test_sigkill_at_random_points_then_the_next_run_leaves_nothing(tmp_path):
    target, rng = tmp_path / "out", random.Random(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", KILLED, str(target)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one run completed
        time.sleep(rng.uniform(0, 0.3))
        proc.kill()
        proc.wait()
        # whatever moment the kill hit: the target, when present, is whole
        assert not target.exists() or (target / "complete").is_file()
        with OutputDir(target, overwrite=True) as out:
            (out.tmp / "complete").write_text("next")
        assert (target / "complete").read_text() == "next" and _names(tmp_path) == {"out"}, _names(tmp_path)


TWO = textwrap.dedent("""
    import sys
    from smooth_then_quant.cli import main
    sys.exit(main([sys.argv[1], "-q"]))
""")


def test_two_concurrent_runs_into_one_folder(tmp_path):
    from planting import save_tiny
    save_tiny(tmp_path / "m", "llama")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tmp_path / 'm'}\ncalibration: {{samples: 2, seq_len: 16}}\nanalysis: {{plots: false}}\n"
                      f"stage: analyze\noutput_dir: {tmp_path / 'out'}\n")
    procs = [subprocess.Popen([sys.executable, "-c", TWO, str(recipe)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    # one wins; the other fails at once (being written by another run) or, arriving after the first finished,
    # finds a non-empty output_dir: never two exit-0 runs where one silently replaced the other
    assert codes == [0, 2], results
    err = next(e for c, e in results if c == 2)
    assert "being written by another run" in err or "already exists and is not empty" in err, err
    assert "Traceback" not in err
    assert json.loads((tmp_path / "out" / "report.json").read_text())
    assert {p.name for p in tmp_path.iterdir()} == {"m", "r.yaml", "out"}
