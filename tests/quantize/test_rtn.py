import pytest
import torch

from smooth_then_quant import SmoothQuantError
from smooth_then_quant.quantize import ActQuant, WeightQuant, fake_quant_act, fake_quant_weight, uneven_groups


def test_per_token_int8_by_hand():
    x = torch.tensor([[1.0, -0.5, 0.25, 127.0], [0.1, 0.2, -0.3, 0.0]])
    out = fake_quant_act(x, ActQuant(8, "per_token"))
    # row 0: scale 127/127 = 1 -> round(0.25) = 0, round(-0.5) = -0 (ties to even)
    assert out[0].tolist() == [1.0, -0.0, 0.0, 127.0]
    s = 0.3 / 127  # row 1
    assert torch.allclose(out[1], torch.round(x[1] / s) * s)


def test_per_tensor_static_range_clamps_outside_values():
    x = torch.tensor([[0.5, 2.0, -4.0]])
    rng = (torch.tensor(-1.0), torch.tensor(1.0))  # calibrated on smaller values
    out = fake_quant_act(x, ActQuant(8, "per_tensor"), rng)
    s = 1.0 / 127
    assert torch.allclose(out, torch.tensor([[round(0.5 / s) * s, 127 * s, -128 * s]]))


def test_weight_groups_and_asymmetric():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, 10.0, 20.0, 30.0]])
    q = fake_quant_weight(w, WeightQuant(2, 4, symmetric=False))  # 4 levels per group of 4, range holds 0
    assert torch.allclose(q, w)  # each group is exactly on its 4-level grid
    per_channel = fake_quant_weight(w, WeightQuant(2, -1, symmetric=False))
    assert (per_channel - w).abs().max() > 1  # one range for the whole row loses the small group
    with pytest.raises(SmoothQuantError, match="bits"):
        WeightQuant(bits=1)


def test_uneven_groups_get_a_shorter_last_group():
    """576 channels in groups of 128: four groups of 128 and one of 64, as GPTQ formats index them."""
    w = torch.randn(3, 576, generator=torch.Generator().manual_seed(0))
    w[:, 540] = 50.0  # an outlier in the last group must not widen the ranges of the others
    for sym in (True, False):
        q = WeightQuant(4, 128, symmetric=sym)
        got = fake_quant_weight(w, q)
        parts = [fake_quant_weight(w[:, s: s + 128], WeightQuant(4, -1, symmetric=sym)) for s in range(0, 576, 128)]
        assert torch.equal(got, torch.cat(parts, 1))
    assert uneven_groups(576, 128) == 64 and uneven_groups(576, 64) == 0 and uneven_groups(576, -1) == 0
