"""io.ShardWriter: safetensors shards written tensor by tensor (no shard is ever whole in memory) that the
safetensors library and transformers read back exactly."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.io import ShardWriter

TENSORS = {
    "f32": torch.randn(7, 5),
    "f16": torch.randn(3, 4).half(),
    "bf16": torch.randn(9).bfloat16(),
    "i32": torch.randint(-2**31, 2**31 - 1, (4, 4), dtype=torch.int32),
    "i64": torch.arange(5, dtype=torch.int64),
    "i8": torch.randint(-128, 127, (6,), dtype=torch.int8),
    "u8": torch.randint(0, 255, (2, 3), dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 4),
    "strided": torch.randn(6, 8)[:, ::2],  # not contiguous
}


@pytest.mark.parametrize("max_bytes", [10**9, 64])
def test_round_trip_through_safetensors(tmp_path, max_bytes):
    w = ShardWriter(tmp_path, max_bytes, metadata={"format": "pt", "note": "x"})
    for k, v in TENSORS.items():
        w.add(k, v)
    names = w.close()
    assert len(names) == 1 if max_bytes > 1000 else len(names) > 1
    got = {k: v for n in names for k, v in load_file(str(tmp_path / n)).items()}
    assert got.keys() == TENSORS.keys()
    for k, v in TENSORS.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
    with safe_open(str(tmp_path / names[0]), "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "x"}
    if len(names) > 1:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(TENSORS) and set(index["weight_map"].values()) == set(names)
        assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in TENSORS.values())
    assert not list(tmp_path.glob(".shard-*"))  # no spool or partial file is left


def test_transformers_reads_a_streamed_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    from planting import tiny_model

    model = tiny_model("llama")
    w = ShardWriter(tmp_path, 20_000)
    for k, v in model.state_dict().items():
        if k != "lm_head.weight" or not model.config.tie_word_embeddings:
            w.add(k, v)
    w.close()
    model.config.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_name_twice_and_an_unstorable_dtype_are_refused(tmp_path):
    w = ShardWriter(tmp_path)
    w.add("a", torch.ones(2))
    with pytest.raises(SmoothQuantError, match="twice"):
        w.add("a", torch.ones(2))
    with pytest.raises(SmoothQuantError, match="cannot store"):
        w.add("c", torch.ones(2, dtype=torch.complex64))


def test_rows_are_written_block_by_block_as_the_tensor(tmp_path):
    import torch
    from safetensors.torch import load_file

    from smooth_then_quant.io import Rows, ShardWriter

    w = torch.randn(10, 3)
    writer = ShardWriter(tmp_path, 10**9)
    writer.add("a", torch.ones(2))
    writer.add("emb", Rows((10, 3), torch.float32, lambda: iter(w.split(4))))
    writer.add("b", torch.zeros(1))
    writer.close()
    got = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(got["emb"], w) and torch.equal(got["a"], torch.ones(2)) and torch.equal(got["b"], torch.zeros(1))


def test_rows_that_do_not_add_up_are_refused(tmp_path):
    import pytest
    import torch

    from smooth_then_quant.errors import SmoothQuantError
    from smooth_then_quant.io import Rows, ShardWriter

    writer = ShardWriter(tmp_path, 10**9)
    with pytest.raises(SmoothQuantError, match="blocks held 24 bytes"):
        writer.add("emb", Rows((3, 3), torch.float32, lambda: iter([torch.zeros(2, 3)])))
    with pytest.raises(SmoothQuantError, match="a block of shape"):
        writer.add("emb2", Rows((3, 3), torch.float32, lambda: iter([torch.zeros(3, 2)])))
