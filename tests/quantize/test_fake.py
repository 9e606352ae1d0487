import torch

from planting import tiny_model, windows
from smooth_then_quant.quantize import (ActQuant, WeightQuant, attach_act_quant_, detach_act_quant_, fake_quant_weight,
                                        linear_modules, rtn_weights_)
from smooth_then_quant.quantize.grid import grid_of


def test_rtn_weights_quantizes_every_decoder_projection_and_nothing_else():
    """Weights land on the RTN grid with float16 scales (as the exported checkpoint stores them);
    projection biases are rounded to float16 for the same reason; nothing else moves."""
    model = tiny_model("gpt2", init=0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rtn_weights_(model, WeightQuant(4, 32))
    names = dict(linear_modules(model))
    assert len(names) == 4 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per layer
    for n, p in model.named_parameters():
        module = n.rsplit(".", 1)[0]
        if module in names and n.endswith("weight"):
            w = before[n].t()  # Conv1D stores [in, out]
            rtn, grid = fake_quant_weight(w, WeightQuant(4, 32)), grid_of(names[module])
            assert torch.equal(grid.codes(p.t()), grid.codes(rtn))  # the same integers...
            assert torch.equal(p.t(), grid.dequantize(grid.codes(rtn)))  # ...on float16 scales
            assert torch.equal(grid.scale, grid.scale.half().float())
            assert torch.allclose(p.t(), rtn, rtol=2**-10, atol=0)
        elif module in names:
            assert torch.equal(p, before[n].half().float()), n
        else:
            assert torch.equal(p, before[n]), n


def test_activation_quant_hooks_change_outputs_and_detach():
    model = tiny_model("llama", init=0.05)
    ids = windows(4, 16)
    ref = model(ids).logits
    attach_act_quant_(model, ActQuant(4, "per_tensor"), ids)
    seen = {}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, a[0].detach()))
               for n, m in linear_modules(model)]  # registered after the quantizers: sees their output
    q = model(ids).logits
    for h in handles:
        h.remove()
    assert len(seen) == len(linear_modules(model))
    for name, x in seen.items():  # every projection reads a 4-bit tensor: at most 16 levels
        assert x.unique().numel() <= 16, name
    assert not torch.allclose(q, ref, atol=1e-6)
    detach_act_quant_(model)
    assert torch.equal(model(ids).logits, ref)
