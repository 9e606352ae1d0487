import pytest
import torch

from smooth_then_quant import SmoothQuantError
from smooth_then_quant.quantize import ActQuant, WeightQuant, fake_quant_act, fake_quant_weight


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
    with pytest.raises(SmoothQuantError, match="does not divide"):
        fake_quant_weight(torch.zeros(2, 576), WeightQuant(4, 128))
    with pytest.raises(SmoothQuantError, match="bits"):
        WeightQuant(bits=1)
