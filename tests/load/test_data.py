import json

import pytest
from transformers import AutoTokenizer

from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.load import calibration_windows, load_text


class CharTokenizer:
    """Stand-in tokenizer: one id per character (the real ones are tested on SmolLM2)."""

    def __call__(self, text, return_tensors=None):
        import torch

        class Out:
            input_ids = torch.tensor([[ord(c) % 1000 for c in text]])
        return Out()


def test_offline_split_is_deterministic_and_disjoint():
    cal, ev = load_text("offline", "calibration"), load_text("offline", "evaluation")
    assert cal.text and ev.text
    assert cal.provenance["sha256"] == load_text("offline", "calibration").provenance["sha256"]
    assert 2.2 < len(cal.text) / len(ev.text) < 2.4  # 70 / 30 by characters
    assert cal.text[-200:] not in ev.text


def test_local_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 200)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} " * 30}) for i in range(20)))
    assert load_text(str(tmp_path / "a.txt"), "calibration").text.startswith("hello world")
    assert "doc 0" in load_text(str(tmp_path / "b.jsonl"), "calibration").text
    ids, prov = calibration_windows(CharTokenizer(), str(tmp_path / "a.txt"), samples=4, seq_len=50, seed=0)
    assert ids.shape == (4, 50) and prov["seed"] == 0
    again, _ = calibration_windows(CharTokenizer(), str(tmp_path / "a.txt"), samples=4, seq_len=50, seed=0)
    assert (ids == again).all()


def test_bad_jsonl_and_missing_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(SmoothQuantError, match='"text" field'):
        load_text(str(tmp_path / "bad.jsonl"), "calibration")
    with pytest.raises(SmoothQuantError, match="not found"):
        load_text(str(tmp_path / "nope.txt"), "calibration")
    with pytest.raises(SmoothQuantError, match="unknown data source"):
        load_text("wikitext103", "calibration")


def test_too_short_text_names_the_fix(tmp_path):
    (tmp_path / "tiny.txt").write_text("short")
    with pytest.raises(SmoothQuantError, match="seq_len"):
        calibration_windows(CharTokenizer(), str(tmp_path / "tiny.txt"), samples=2, seq_len=512)


@pytest.mark.parametrize("source", ["wikitext2", "c4"])
def test_unreachable_hub_dataset_names_the_offline_option(source, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SmoothQuantError) as e:
        load_text(source, "evaluation")
    assert "offline" in str(e.value) and source in str(e.value)
