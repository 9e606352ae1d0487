"""A streamed model keeps a GPTQ'd or RTN'd layer as its integer codes (quantize/keep.py), not float32: the
codes round-trip exactly, the rebuilt weights are the quantized weights bit for bit, the scratch file is about
an eighth of float32 at 4 bits, and a weight that left its grid is kept as it is."""
import copy

import pytest
import torch
from safetensors import safe_open

from planting import save_tiny
from smooth_then_quant.arch import resident, source_of
from smooth_then_quant.arch.sequential import Parameters
from smooth_then_quant.io import Scratch
from smooth_then_quant.load.stream import streamed_model
from smooth_then_quant.quantize import GPTQWeights, WeightQuant, gptq_, rtn_weights_
from smooth_then_quant.quantize.keep import GRID_CODES, kept_bytes, pack_codes, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("width", [7, 8])
def test_codes_round_trip(bits, width):
    codes = torch.randint(0, 2**bits, (5, width), generator=torch.Generator().manual_seed(bits), dtype=torch.int32)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape[1] == (width if bits > 4 else (width + 1) // 2)
    assert torch.equal(unpack_codes(packed, bits, width), codes)


def _layer_params(model, li):
    with resident(model, li) as layer:
        return {n: p.detach().clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # Linear and Conv1D ([in, out]) weights
@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_a_kept_quantized_layer_is_its_codes_and_comes_back_bit_identical(tmp_path, family, method):
    save_tiny(tmp_path / "m", family, init=0.05)
    scratch = Scratch(tmp_path)
    model = streamed_model(tmp_path / "m", scratch=scratch)
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    if method == "gptq":
        gptq_(model, ids, GPTQWeights(bits=4, group_size=32))
    else:
        rtn_weights_(model, WeightQuant(4, 32))
    src = source_of(model)
    full = 0
    for li, (kept, _, keep) in sorted(src.kept.items()):
        assert keep is GRID_CODES
        with safe_open(str(kept.path), "pt") as st:
            names = list(st.keys())
            assert sum(n.endswith("::codes") for n in names) == (4 if family == "gpt2" else 7)
            assert all(st.get_tensor(n).dtype == torch.uint8 for n in names if n.endswith("::codes"))
        got = _layer_params(model, li)
        full += sum(t.numel() * t.element_size() for t in got.values())
        # the same layer kept whole (every parameter as it is) gives the same bits
        twin = copy.deepcopy(model)
        with resident(twin, li, keep=Parameters()):
            pass
        assert all(torch.equal(got[n], t) for n, t in _layer_params(twin, li).items())
    kept = sum(k.path.stat().st_size for k, _, _ in src.kept.values())
    assert kept_bytes(model, 4) == pytest.approx(kept, rel=0.1)  # the estimate the run checks free space with
    assert kept < 0.25 * full, (kept, full)  # 4-bit codes + norms/biases in float32, safetensors headers


def test_a_weight_changed_after_rounding_is_kept_as_it_is(tmp_path):
    save_tiny(tmp_path / "m", "llama", init=0.05)
    model = streamed_model(tmp_path / "m", scratch=Scratch(tmp_path))
    rtn_weights_(model, WeightQuant(4, 32))
    with resident(model, 0, keep=GRID_CODES) as layer:
        layer.mlp.down_proj.weight.data[0, 0] += 1e-3  # off its grid now
        expected = {n: p.detach().clone() for n, p in layer.named_parameters()}
    path = source_of(model).kept[0][0].path
    with safe_open(str(path), "pt") as st:
        assert "mlp.down_proj.weight" in st.keys() and "mlp.up_proj.weight::codes" in st.keys()
    got = _layer_params(model, 0)
    assert all(torch.equal(got[n], t) for n, t in expected.items())


def test_the_files_of_a_dropped_quantized_clone_are_removed_and_shared_ones_stay(tmp_path):
    """The scratch holds the quantized states alive, not every state the run made (the Llama-3.2-3B-shaped run
    kept both compared states' layers to the end)."""
    import gc

    from smooth_then_quant.smooth import clone_model

    save_tiny(tmp_path / "m", "llama", init=0.05)
    scratch = Scratch(tmp_path)
    model = streamed_model(tmp_path / "m", scratch=scratch)
    q = clone_model(model)
    rtn_weights_(q, WeightQuant(4, 32))
    files = lambda: sorted(scratch.path.glob("layer*.safetensors"))  # noqa: E731
    assert len(files()) == 4
    twin = clone_model(q)  # shares q's kept files
    expected = _layer_params(q, 2)
    del q
    gc.collect()
    assert len(files()) == 4  # the twin still reads them
    assert all(torch.equal(expected[n], t) for n, t in _layer_params(twin, 2).items())
    del twin
    gc.collect()
    assert files() == [] and not source_of(model).kept
