import json

import pytest

from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.load import calibration_windows, load_text


class CharTokenizer:
    """Stand-in tokenizer: one id per character (the real ones are tested on SmolLM2)."""

    bos_token_id = None

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
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


def _c4_stand_in(monkeypatch, docs):
    """allenai/c4 read through datasets.load_dataset, served from a local Dataset (no hub)."""
    import datasets

    calls = []

    def load_dataset(path, data_files=None, split=None, **kw):
        calls.append((path, data_files, split))
        return datasets.Dataset.from_dict({"text": docs})
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_c4_calibration_takes_windows_inside_random_long_documents(monkeypatch):
    docs = [f"doc{i} " + "abcdefghij"[i % 10] * (5 if i % 3 == 0 else 80) for i in range(30)]  # every 3rd too short
    calls = _c4_stand_in(monkeypatch, docs)
    ids, prov = calibration_windows(CharTokenizer(), "c4", samples=6, seq_len=40, seed=3)
    assert calls[0] == ("allenai/c4", {"train": "en/c4-train.00000-of-01024.json.gz"}, "train")
    assert ids.shape == (6, 40) and prov["hub"].startswith("allenai/c4/") and prov["seed"] == 3
    coded = ["".join(chr(ord(c) % 1000) for c in d) for d in docs]
    for w in ids.tolist():  # each window is a contiguous piece of one document longer than seq_len
        piece = "".join(map(chr, w))
        assert any(piece in d and len(d) > 40 for d in coded), piece
    again, _ = calibration_windows(CharTokenizer(), "c4", samples=6, seq_len=40, seed=3)
    assert again.equal(ids)
    ev = load_text("c4", "evaluation")
    assert calls[-1][2] == "validation" and ev.text == " ".join(docs)  # the first 1100 documents joined with " "


def test_c4_without_documents_longer_than_seq_len_is_a_clear_error(monkeypatch):
    # regression: this was torch.stack([]) -> a RuntimeError traceback
    _c4_stand_in(monkeypatch, ["short text"] * 5)
    with pytest.raises(SmoothQuantError, match="longer than seq_len=64"):
        calibration_windows(CharTokenizer(), "c4", samples=2, seq_len=64)
