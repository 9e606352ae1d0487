"""Reliability of the command line: malformed recipes (property-based) always end in a
one-paragraph error and exit code 2, never a traceback; a run killed during export leaves
nothing partial behind."""
import io
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import redirect_stderr

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planting import save_tiny
from smooth_then_quant.cli import main
from smooth_then_quant.recipe import Recipe

SECTIONS = {name: f.annotation for name, f in Recipe.model_fields.items()}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _valid_paths(model=Recipe, prefix=()):
    """Every dotted key of the schema (through sections)."""
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        sub = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and hasattr(a, "model_fields")),
                   None)
        out.append(prefix + (name,))
        if sub is not None:
            out += _valid_paths(sub, prefix + (name,))
    return out


PATHS = [p for p in _valid_paths() if p != ("output_dir",)]


@st.composite
def broken_recipes(draw, out):
    """A recipe dict with at least one defect: an unknown key, a wrong value, a bad range, or a missing
    model or data file."""
    raw = {"output_dir": out}
    defect = draw(st.sampled_from(["unknown", "value", "missing_model", "missing_data", "range"]))
    path = draw(st.sampled_from(PATHS))
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    if defect == "unknown":
        node[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in SECTIONS and "." not in k)) + "_x"] = \
            draw(values)
    elif defect == "value":
        node[path[-1]] = draw(st.one_of(st.text(min_size=1, max_size=10).map(lambda s: "~" + s),
                                        st.lists(scalars, min_size=1, max_size=2)))
    elif defect == "range":
        raw.setdefault("calibration", {})[draw(st.sampled_from(["samples", "seq_len", "batch_size"]))] = \
            draw(st.integers(-1000, 0))
    elif defect == "missing_data":
        missing = draw(st.sampled_from(["/nonexistent/cal.txt", "no-such.jsonl", "wikitext3"]))
        if draw(st.booleans()):
            raw["calibration"] = {"data": missing}
        else:
            raw["evaluation"] = {"datasets": ["offline", missing]}
    else:
        raw["model"] = draw(st.sampled_from(["/nonexistent/m.gguf", "./no/such/folder", "/tmp/does-not-exist/x"]))
    return raw


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_recipes_fail_cleanly(tmp_path_factory, data, capsys):
    tmp = tmp_path_factory.mktemp("fuzz")
    raw = data.draw(broken_recipes(str(tmp / "out")))
    p = tmp / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert main([str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smooth-quant: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp / "out").exists()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(text=st.one_of(st.text(max_size=40).map(str.encode), st.binary(max_size=40)),
       sets=st.lists(st.text(max_size=15), max_size=2))
def test_garbage_files_and_overrides_fail_cleanly(tmp_path_factory, text, sets):
    tmp = tmp_path_factory.mktemp("garbage")
    p = tmp / "r.yaml"
    p.write_bytes(text)  # not necessarily UTF-8, YAML, or a mapping; never an output_dir
    args = [str(p)] + [a for s in sets for a in ("--set", s)]
    buf = io.StringIO()
    with redirect_stderr(buf):  # in-process: a subprocess per example would take minutes
        try:
            code = main(args)
        except SystemExit as e:  # argparse's own usage errors (e.g. `--set -x`): usage line + error line
            code = e.code
    err = buf.getvalue()
    assert code == 2 and "Traceback" not in err and 1 <= err.count("\n") <= 2 and "\n\n" not in err, err


DRIVER = textwrap.dedent("""
    import pathlib, signal, sys, time
    # as in a terminal: a shell starts background jobs (CI) with SIGINT ignored, and Python keeps that
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import smooth_then_quant.stages as p
    from smooth_then_quant.cli import main
    real = p.save_smoothed
    def slow_save(*a, **k):  # the export is half written when the signal comes
        real(*a, **k)
        pathlib.Path(sys.argv[2]).write_text("exporting")
        time.sleep(120)
    p.save_smoothed = slow_save
    sys.exit(main([sys.argv[1], "-q"]))
""")


def _start_and_wait_for_export(tmp_path, recipe):
    marker = tmp_path / "marker"
    with open(tmp_path / "stderr.txt", "w") as err:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(recipe), str(marker)], stdout=subprocess.DEVNULL,
                                stderr=err)
    t0 = time.time()
    while not marker.exists():
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
        assert time.time() - t0 < 300, "the run never reached the export"
        time.sleep(0.2)
    return proc


def test_a_run_killed_during_export_leaves_nothing_partial(tmp_path):
    save_tiny(tmp_path / "m", "llama")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tmp_path / 'm'}\ncalibration: {{samples: 2, seq_len: 32}}\n"
                      "smoothing: {enabled: true, migrate: {alpha: 0.5}}\nanalysis: {plots: false}\n"
                      "evaluation: {seq_len: 32, max_windows: 2, per_intervention: false}\n"
                      f"output_dir: {tmp_path / 'out'}\n")
    # SIGTERM (kill) and SIGINT (Ctrl-C): the run cleans up after itself
    for sig, code in ((signal.SIGTERM, 130), (signal.SIGINT, 130)):
        proc = _start_and_wait_for_export(tmp_path, recipe)
        assert any(tmp_path.glob(".out.partial-*/model/model.safetensors"))  # it was half-way through the export
        proc.send_signal(sig)
        assert proc.wait(60) == code
        assert "the partial output was removed" in (tmp_path / "stderr.txt").read_text()
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*")), list(tmp_path.iterdir())
        (tmp_path / "marker").unlink()
    # SIGKILL cannot be caught: the output_dir is still never half-written, and the next run
    # removes the dead run's hidden temporary folder
    proc = _start_and_wait_for_export(tmp_path, recipe)
    proc.kill()
    proc.wait(60)
    assert not (tmp_path / "out").exists() and len(list(tmp_path.glob(".out.partial-*"))) == 1
    assert main([str(recipe), "-q", "--stage", "analyze"]) == 0
    assert (tmp_path / "out" / "report.json").is_file() and not list(tmp_path.glob(".out.partial-*"))
