import pytest
import torch

from planting import FAMILIES, tiny_config, tiny_model, windows
from smooth_then_quant.arch import adapter_for, supported_model_types
from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.probe import ProbeConfig, probe_model


def expected_channels(family: str) -> dict[str, int]:
    cfg = tiny_config(family)
    if family == "gpt2":
        h = cfg.n_embd
        return dict(x1=h, x2=h, x3=h, x4=h, x5=h, x8=h, x9=h, y1=h, y2=h, y3=4 * h, y4=4 * h, y5=h)
    h, i = cfg.hidden_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return dict(x1=h, x2=h, x3=q, x4=kv, x5=kv, x8=q, x9=h, y1=h, y2=h, y3=i, y4=i, y5=i, y6=i, y7=h)


@pytest.mark.parametrize("family", FAMILIES + ("mistral",))
def test_hooks_fire_at_every_point_with_the_right_shapes(family):
    model = tiny_model(family)
    ids = windows(samples=6, seq_len=12)
    result = probe_model(model, ids, ProbeConfig(batch_size=4))
    want = expected_channels(family)
    assert set(result.adapter.point_names) == set(want)
    for layer in range(result.num_layers):
        for point, channels in want.items():
            st = result.at(layer, point)
            assert st.channels == channels, (layer, point)
            assert st.calls == 2  # two batches: 4 + 2 samples
            assert st.count == 6 * 12
            assert st.shape[:-1] in ((2, 12), (24,)) and st.shape[-1] == channels


@pytest.mark.parametrize("family", FAMILIES)
def test_taps_read_the_tensor_the_paper_names(family):
    """x2 is the norm applied to x1; y6 feeds the down projection to give y7 (checked on values)."""
    model = tiny_model(family, layers=2)
    adapter = adapter_for(model)
    captured = {}
    from smooth_then_quant.probe import hooks_at_points

    def grab(layer, point, t):
        if layer == 1:
            captured[point] = t.detach().clone()

    with hooks_at_points(model, adapter, grab), torch.no_grad():
        model(windows(2, 8))
    blk = adapter.decoder_layers(model)[1]
    torch.testing.assert_close(blk.get_submodule(adapter.attn_norm.norm)(captured["x1"]), captured["x2"])
    down = blk.get_submodule(adapter.mlp_out.module)
    torch.testing.assert_close(down(captured[adapter.massive_point]), captured[adapter.mlp_out_point])
    w = adapter.weight(blk, adapter.qkv["x4"])
    b = adapter.bias(blk, adapter.qkv["x4"])
    k = captured["x2"] @ w.t() + (0 if b is None else b)
    torch.testing.assert_close(k, captured["x4"], rtol=1e-4, atol=1e-5)


def test_unknown_architecture_lists_supported_types():
    from transformers import OPTConfig

    with pytest.raises(SmoothQuantError) as e:
        adapter_for(OPTConfig())
    msg = str(e.value)
    assert "opt" in msg
    for t in supported_model_types():
        assert t in msg
