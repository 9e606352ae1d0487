"""The built-in GPTQ: the solver against hand cases, the model-level verb against RTN, and the
smoothing hooks active while it collects its Hessians."""
from types import SimpleNamespace

import pytest
import torch

from planting import (plant_massive_, quiet_post_norms_, record_removals, structured_embeddings_, tiny_model,
                      windows)
from smooth_then_quant import SmoothQuantError
from smooth_then_quant.arch import adapter_for
from smooth_then_quant.quantize.gptq import GPTQWeights, Hessian, column_order, gptq_, gptq_solve, grid_params, quant_dequant
from smooth_then_quant.smooth import MassiveRemoval, attach_runtime_, clone_model


def rtn_gptq_grid(w, bits, g, sym=True):
    """Round-to-nearest on GPTQ's grid, group by group (the last one may be shorter)."""
    out = []
    for s in range(0, w.shape[1], g):
        scale, zero = grid_params(w[:, s: s + g], bits, sym)
        out.append(quant_dequant(w[:, s: s + g], scale, zero, bits))
    return torch.cat(out, 1)


@pytest.mark.parametrize("order", ["off", "group_aware"])
@pytest.mark.parametrize("sym", [True, False])
def test_uncorrelated_inputs_reduce_gptq_to_rtn(order, sym):
    """With a diagonal Hessian no error can be compensated: GPTQ is RTN on the same grid,
    in any order that keeps the groups (uneven last group included: 80 = 32 + 32 + 16)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 80, generator=g)
    h = torch.diag(torch.rand(80, generator=g) + 0.1)
    q, *_ = gptq_solve(w, h, GPTQWeights(bits=3, group_size=32, symmetric=sym, act_order=order))
    assert torch.allclose(q, rtn_gptq_grid(w, 3, 32, sym), atol=1e-6)


def test_symmetric_grid_by_hand():
    scale, zero = grid_params(torch.tensor([[-1.5, 0.5, 3.0]]), 4, True)
    assert torch.allclose(scale, torch.tensor([[6.0 / 15]])) and zero.item() == 8  # levels -8..7 x 0.4
    assert torch.allclose(quant_dequant(torch.tensor([[-1.5, 0.5, 3.0]]), scale, zero, 4),
                          torch.tensor([[-1.6, 0.4, 2.8]]))


def test_group_aware_order_keeps_groups_and_sorts_by_importance():
    d = torch.tensor([1.0, 5.0, 2.0, 9.0, 3.0, 0.5, 7.0])  # groups of 2: {0,1} {2,3} {4,5}, tail {6}
    perm = column_order(d, 2, "group_aware")
    assert perm.tolist() == [3, 2, 1, 0, 4, 5, 6]
    assert column_order(d, 2, "desc").tolist() == [3, 6, 1, 4, 2, 0, 5]


def test_gptq_beats_rtn_on_correlated_inputs():
    """The point of GPTQ: with correlated inputs its layer-output error is below RTN's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g) @ torch.randn(8, 64, generator=g) + 0.1 * torch.randn(512, 64, generator=g)
    w = torch.randn(16, 64, generator=g)
    acc = Hessian(64)
    for chunk in x.split(100):
        acc.add(chunk)
    assert torch.allclose(acc.h, 2 * x.t() @ x / 512, rtol=1e-4, atol=1e-4)  # running mean = batch formula
    q, *_ = gptq_solve(w, acc.h, GPTQWeights(bits=4, group_size=32))
    err_gptq = (x @ (w - q).t()).pow(2).mean()
    err_rtn = (x @ (w - rtn_gptq_grid(w, 4, 32)).t()).pow(2).mean()
    assert err_gptq < 0.7 * err_rtn


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma3_text"])
def test_model_gptq_beats_rtn_layer_output_error(family):
    """On a tiny model: the projections of layer 0 (same float inputs for both) have a lower output
    error under GPTQ than under RTN with the same grid; the weights land on the 4-bit grid."""
    model = tiny_model(family, init=0.05)
    structured_embeddings_(model)
    ids = windows(16, 32)
    q = clone_model(model)
    report = gptq_(q, ids, GPTQWeights(bits=4, group_size=32))
    assert len(report["modules"]) == len(adapter_for(model).named_projections(model))
    ad = adapter_for(model)
    inputs = {}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: inputs.setdefault(n, a[0].detach()))
               for n, m in ad.named_projections(model, layers=[0])]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    from smooth_then_quant.quantize.fake import weight_view
    fq, fm = dict(ad.named_projections(q, layers=[0])), dict(ad.named_projections(model, layers=[0]))
    first = [n for n in inputs if n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "c_attn")]
    assert first
    for n in first:  # the first projections read the same float norm output in both models
        x = inputs[n].reshape(-1, inputs[n].shape[-1])
        w, wq = weight_view(fm[n]), weight_view(fq[n])
        err_gptq = (x @ (w - wq).t()).pow(2).mean()
        err_rtn = (x @ (w - rtn_gptq_grid(w.detach(), 4, 32)).t()).pow(2).mean()
        assert err_gptq < err_rtn, n
    wq = weight_view(next(iter(fq.values())))
    assert max(wq[r, s: s + 32].unique().numel() for r in range(4) for s in range(0, wq.shape[1], 32)) <= 16


def test_runtime_removal_is_active_during_builtin_gptq_calibration(monkeypatch):
    model = tiny_model("llama")
    structured_embeddings_(model, const_channel=3)
    quiet_post_norms_(model)
    plant_massive_(model, 1, mlp_channel=5, hidden_channel=11, reserved=2, weight=40.0, const_channel=3)
    attach_runtime_(model, [MassiveRemoval(1, "y6", (5,), "mean")])
    seen = record_removals(monkeypatch)
    gptq_(model, windows(4, 32, trigger_at=0), GPTQWeights(bits=4, group_size=32))
    assert seen, "the runtime hook never ran during GPTQ calibration"
    assert max(b for b, _ in seen) > 1000 and max(a for _, a in seen) < 100


def test_config_errors_name_the_fix():
    with pytest.raises(SmoothQuantError, match="bits.*2, 3, 4 or 8"):
        GPTQWeights(bits=5)
    with pytest.raises(SmoothQuantError, match="damp"):
        GPTQWeights(damp=0)
    with pytest.raises(SmoothQuantError, match="group_size > 0"):
        GPTQWeights(group_size=-1, act_order="group_aware")


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_attention_replay_changes_nothing(family, monkeypatch):
    """Serving the recorded attention output to the later passes gives the same weights as
    recomputing attention on every pass."""
    import smooth_then_quant.quantize.gptq as gq
    model = tiny_model(family, init=0.05)
    ids = windows(8, 32)
    fast, slow = clone_model(model), clone_model(model)
    gptq_(fast, ids, GPTQWeights(bits=4, group_size=32))

    class NoReplay:
        def __init__(self, module):
            self.handle = SimpleNamespace(remove=lambda: None)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass
    monkeypatch.setattr(gq, "_Replay", NoReplay)
    gptq_(slow, ids, GPTQWeights(bits=4, group_size=32))
    for (n, a), (_, b) in zip(fast.named_parameters(), slow.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n
