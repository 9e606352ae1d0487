"""Each paper-ablation script in eval/ runs end to end on a tiny model and writes its table."""
import subprocess
import sys
from pathlib import Path

import pytest

from planting import save_tiny

EVAL = Path(__file__).parents[2] / "eval"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    save_tiny(folder, "llama")
    return folder


@pytest.mark.parametrize("script,needles", [
    ("table2_tma.py", ["TMAs → mean at y6", "TMAs → zero at y7", "exact migration at y6", "layers [1]"]),
    ("table3_otc.py", ["remove OTCs (x3)", "remove OTCs (x3+x4+x5)"]),
    ("table6_sd.py", ["QKV outliers", "norm γ random", "MLP outliers", "6 SD", "2 SD"]),
])
def test_script_writes_its_table(tmp_path, tiny_folder, script, needles):
    out = tmp_path / "t.md"
    proc = subprocess.run([sys.executable, str(EVAL / script), "--model", str(tiny_folder), "--samples", "4",
                           "--seq-len", "64", "--eval-seq-len", "64", "--max-windows", "2", "--out", str(out), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# Table") and "base model" in text
    for n in needles:
        assert n in text, n
    assert "command: `python" in text and not list(tmp_path.glob("*.partial"))


def test_script_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(EVAL / "table2_tma.py"), "--model", str(tmp_path / "nope"),
                           "--out", str(tmp_path / "t.md"), "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "model not found" in proc.stderr


def test_table1_finds_the_planted_stream_massive_activation_where_it_is_born(tmp_path, tiny_folder):
    """The tiny model's planted MLP writes a massive activation into residual channel 11 at the trigger token in
    layer 1 (planting.save_tiny); the stream carries it to the last layer, and no later layer cancels it."""
    out = tmp_path / "t1.md"
    proc = subprocess.run([sys.executable, str(EVAL / "table1_tma.py"), "--model", str(tiny_folder), "--samples", "4",
                           "--seq-len", "64", "--out", str(out), "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| Initial Top-1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1" and cells[3].endswith(", 11)") and abs(float(cells[2])) > 100
    assert "| Last-1 Top-1 | 3 | N/A |" in text and "(0 of opposite sign)" in text
    assert (tmp_path / "t1.png").is_file() and "![Figure 6](t1.png)" in text
