"""The α search scores migrations by the quantized product's error and keeps what helps."""
import torch

from smooth_then_quant.quantize import fake_quant_act, fake_quant_weight
from smooth_then_quant.smooth.search import SearchTarget, choose_alpha, migration_error


def outlier_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 64, generator=g)
    x[:, 7] += 60.0  # a channel outlier: sets the per-tensor activation scale
    x[3, 11] = 900.0  # a massive activation
    ws = [torch.randn(32, 64, generator=g) * 0.05, torch.randn(48, 64, generator=g) * 0.05]
    return x, ws


def test_error_without_migration_is_the_direct_computation():
    x, ws = outlier_case()
    t = SearchTarget(weight_bits=4, group_size=32, act_bits=8, act_granularity="per_tensor")
    direct = sum(float((fake_quant_act(x, t.act) @ fake_quant_weight(w, t.weight).T - x @ w.T).pow(2).sum()
                       / (x @ w.T).pow(2).sum()) for w in ws)
    assert abs(migration_error(x, ws, None, t) - direct) < 1e-6 * direct


def test_search_beats_no_migration_on_outliers_and_reports_every_candidate():
    x, ws = outlier_case()
    t = SearchTarget(weight_bits=4, group_size=32, act_bits=8, act_granularity="per_tensor")
    alpha, s, errors = choose_alpha(x, ws, x.abs().amax(0), t)
    assert alpha is not None and s.shape == (64,)
    assert errors[alpha] < 0.5 * errors["none"]
    assert len(errors) == 12 and errors[alpha] == min(errors.values())


def test_search_declines_when_migration_only_hurts():
    x, ws = outlier_case()
    # 16-bit activations lose nothing; pushing x's range into 4-bit per-channel weights only hurts
    t = SearchTarget(weight_bits=4, group_size=-1, act_bits=16, act_granularity="per_token")
    alpha, s, errors = choose_alpha(x, ws, x.abs().amax(0), t, grid=(1.0,))
    assert (alpha, s) == (None, None) and errors["none"] < errors[1.0]
