"""The README's Python API example runs as written (on the embedded SmolLM2, offline)."""
import math
import re
from pathlib import Path

import pytest

from smooth_then_quant import evaluation_windows, load_model, perplexity

pytestmark = pytest.mark.slow
README = Path(__file__).parents[1] / "README.md"


def api_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it exports to ./smoothed-smollm2
    exec(compile(api_example(), "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    smoothed, w4a8, reloaded = (float(x) for x in printed[-3:])  # the three perplexities it prints last
    assert reloaded == pytest.approx(w4a8, rel=1e-6)  # the GPTQ export is the model that was measured
    assert (tmp_path / "smollm2-w4a8" / "activation_quant.json").is_file()
    ct = load_model(str(tmp_path / "smollm2-w4a8-ct"))  # the compressed-tensors export is the same model
    assert perplexity(ct.model, evaluation_windows(ct.tokenizer, "offline", 512, 2)[0]) == \
        pytest.approx(perplexity(load_model(str(tmp_path / "smollm2-w4a8")).model,
                                 evaluation_windows(ct.tokenizer, "offline", 512, 2)[0]), rel=1e-6)
    assert (tmp_path / "smoothed-smollm2" / "smoothing_plan.json").is_file()
    assert list((tmp_path / "smoothed-smollm2").glob("*.safetensors"))
    assert 5 < smoothed < 30 and math.isfinite(w4a8) and w4a8 > smoothed  # quantization costs something
