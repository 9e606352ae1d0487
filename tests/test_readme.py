"""Every Python example in the README runs as written (on the embedded SmolLM2, offline)."""
import math
import re
from pathlib import Path

import pytest

from smooth_then_quant import evaluation_windows, load_model, perplexity

pytestmark = pytest.mark.slow
README = Path(__file__).parents[1] / "README.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _check_oneshot(tmp_path, printed):
    documents, families, report = printed[-1].split()
    import pydoc_data.topics

    assert int(documents) == len(pydoc_data.topics.topics) and int(families) >= 0
    assert Path(tmp_path / report).is_file() or Path(report).is_file()


def _check_api(tmp_path, printed):
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


CHECKS = {"oneshot(": _check_oneshot, "export_quantized(": _check_api}  # what each example's output must show


def test_every_example_has_a_check():
    blocks = examples()
    assert len(blocks) >= 2
    for code in blocks:
        assert sum(marker in code for marker in CHECKS) == 1, code[:200]


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_python_example_runs(index, tmp_path, monkeypatch, capsys):
    code = examples()[index]
    monkeypatch.chdir(tmp_path)  # examples write into the current folder
    exec(compile(code, f"README.md (Python example {index + 1})", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    check = next(f for marker, f in CHECKS.items() if marker in code)
    check(tmp_path, printed)
