"""load/lazy.py: reading parts of a safetensors checkpoint."""
import pytest
import torch
from safetensors.torch import save_file

from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.load import lazy
from smooth_then_quant.load.lazy import Checkpoint


@pytest.fixture()
def table(tmp_path):
    w = torch.randn(3000, 7)
    save_file({"emb": w}, str(tmp_path / "model.safetensors"))
    return Checkpoint(tmp_path), w


@pytest.mark.parametrize("case", ["duplicates", "far_apart", "dense", "edges", "one"])
def test_rows_are_the_rows_asked_for(table, case, monkeypatch):
    ckpt, w = table
    monkeypatch.setattr(lazy, "ROW_CHUNK", 100)  # so that a dense run is split into several reads
    g = torch.Generator().manual_seed(0)
    ids = {"duplicates": torch.randint(0, 50, (4, 33), generator=g),
           "far_apart": torch.tensor([[2999, 0, 1500, 64, 129, 700]]),
           "dense": torch.arange(0, 3000).reshape(10, 300).flip(1),
           "edges": torch.tensor([[0, 2999], [2999, 0]]),
           "one": torch.tensor([[5]])}[case]
    got = ckpt.rows("emb", ids, torch.float32)
    assert got.shape == (*ids.shape, 7)
    assert torch.equal(got, w[ids])


def test_rows_read_only_near_the_ids(table, monkeypatch):
    ckpt, _ = table
    reads = []
    real = lazy.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            st = self.f.__enter__()

            class S:
                def get_slice(self, key):
                    sl = st.get_slice(key)

                    class Sl:
                        def get_shape(self):
                            return sl.get_shape()

                        def __getitem__(self, item):
                            reads.append(item.stop - item.start)
                            return sl[item]
                    return Sl()
            return S()

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(lazy, "safe_open", Spy)
    ckpt.rows("emb", torch.tensor([[10, 12, 2000, 2001]]), torch.float32)
    assert sorted(reads) == [2, 3]  # two runs: rows 10..12 and 2000..2001, never the matrix


def test_rows_out_of_range_is_one_line(table):
    ckpt, _ = table
    with pytest.raises(SmoothQuantError, match="outside the 3000-row embedding"):
        ckpt.rows("emb", torch.tensor([[1, 3000]]), torch.float32)
