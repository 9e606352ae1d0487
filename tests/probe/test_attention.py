"""x6/x7: the attention tap recomputes what the kernel computed (against eager attention's own weights on every
family, Gemma3's sliding-window layers and q/k norms included), its statistics are exact, a planted sink is found
at its token and head, and a kernel that cannot be tapped is an error, never a silent skip."""
import pytest
import torch

from planting import FAMILIES, TRIGGER, structured_embeddings_, tiny_config, windows
from smooth_then_quant.arch import adapter_for
from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.probe import ProbeConfig, probe_model
from smooth_then_quant.probe.attention import attention_taps, scores_and_probs
from smooth_then_quant.probe.attention_stats import AttentionAccumulator, merge_attention


def model_of(family: str, implementation: str, seed: int = 0):
    from transformers import AutoModelForCausalLM
    cfg = tiny_config(family, init=0.3)  # large weights: peaked attention, so a wrong mask or scale shows
    if family == "gemma3_text":  # sliding layers that bite at T = 16, and full ones
        cfg.sliding_window = 5
        cfg.layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=implementation).eval()


def tapped_probs(model, ids) -> dict[int, torch.Tensor]:
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    got = {}

    def keep(li, q, k, mask, extra):
        got[li] = scores_and_probs(q, k, mask, **extra).probs

    with torch.no_grad(), attention_taps([x.get_submodule(adapter.attention) for x in layers], keep) as seen:
        model(input_ids=ids)
    assert seen == set(range(len(layers)))
    return got


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_recomputed_x7_equals_eager_attention_weights(family, implementation):
    ids = windows(samples=3, seq_len=16)
    eager = model_of(family, "eager")
    with torch.no_grad():
        want = eager(input_ids=ids, output_attentions=True).attentions  # [B, H, T, T] per layer
    got = tapped_probs(model_of(family, implementation), ids)
    for li, w in enumerate(want):
        assert got[li].shape == w.shape
        torch.testing.assert_close(got[li], w.float(), rtol=0, atol=1e-5)
    if family == "gemma3_text":  # the sliding window was applied: query 10 reads keys 6..10 only
        assert float(got[0][:, :, 10, :6].abs().max()) == 0.0 and float(got[1][:, :, 10, :6].min()) > 0


def test_tap_leaves_the_forward_unchanged():
    model = model_of("llama", "sdpa")
    ids = windows(samples=2, seq_len=16)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    adapter = adapter_for(model)
    mods = [x.get_submodule(adapter.attention) for x in adapter.decoder_layers(model)]
    with torch.no_grad(), attention_taps(mods, lambda *a: None):
        tapped = model(input_ids=ids).logits
    assert torch.equal(plain, tapped)


def brute_force(q, k):
    """x6 and x7 of causal attention written out directly: scores with -inf where hidden, softmax, shares, entropy."""
    scores = q @ k.repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-1, -2) * q.shape[-1] ** -0.5
    t = q.shape[2]
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), -float("inf"))
    probs = scores.softmax(-1)
    share = probs.sum(2) / t  # [B, H, S]
    ent = -(torch.special.xlogy(probs, probs).sum(-1))  # [B, H, T]
    return scores, probs, share, ent


def test_a_block_equals_the_direct_computation():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 4, 12, 8, generator=g) * 3, torch.randn(2, 2, 12, 8, generator=g) * 3
    scores, probs, _, ent = brute_force(q, k)
    for heads in (None, slice(1, 3)):
        blk = scores_and_probs(q, k, None, None, heads=heads)
        h = heads or slice(0, 4)
        torch.testing.assert_close(blk.probs, probs[:, h], rtol=0, atol=1e-6)
        torch.testing.assert_close(blk.entropy, ent[:, h], rtol=0, atol=1e-5)
        torch.testing.assert_close(blk.row_max, scores[:, h].amax(-1), rtol=1e-6, atol=1e-6)
        assert torch.equal(blk.row_key, scores[:, h].argmax(-1))


def kernel_mask(kind: str, t: int):
    """The mask as each kernel receives it: sdpa's skipped causal mask (None), its bool mask, eager's additive one."""
    tril = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    return {"none": None, "bool": tril,
            "float": torch.zeros(1, 1, t, t).masked_fill(~tril, torch.finfo(torch.float32).min)}[kind]


@pytest.mark.parametrize("kind", ["none", "bool", "float"])
@pytest.mark.parametrize("t", [12, 150])  # 150: three query blocks of 64, the keys past each block skipped
def test_statistics_equal_a_direct_computation_whatever_the_split(t, kind):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, 4, t, 8, generator=g) * 2
    k = torch.randn(6, 2, t, 8, generator=g) * 2
    k[:, :, 0] *= 6  # a key everyone attends to
    scores, _, share, ent = brute_force(q, k)
    mask = kernel_mask(kind, t)
    whole = AttentionAccumulator(4, top_k=5, sink_floor=0.3)
    whole.update(q, k, mask, {"scaling": None}, 0)
    parts = [AttentionAccumulator(4, top_k=5, sink_floor=0.3) for _ in range(2)]
    for i, (s, e) in enumerate([(0, 2), (2, 6)]):  # uneven split, the second part first
        parts[1 - i].update(q[s:e], k[s:e], mask, {"scaling": None}, s)
    row_max = scores.amax(-1)  # [B, H, T]
    for st in (whole.finalize(), merge_attention(parts).finalize()):
        assert st.windows == 6
        torch.testing.assert_close(st.mean_share, share.mean(0).double(), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(st.entropy, ent.mean(-1).mean(0).double(), rtol=1e-5, atol=1e-6)
        per_head = row_max.transpose(0, 1).reshape(4, -1).amax(1)
        torch.testing.assert_close(st.score_max, per_head.double(), rtol=1e-6, atol=0)  # one fused kernel: ±1 ulp
        for h, (b, qi, ki) in enumerate(st.score_max_at):
            assert float(scores[b, h, qi, ki]) == pytest.approx(float(per_head[h]), rel=1e-6)
        want = sorted(row_max.reshape(-1).tolist(), reverse=True)[:5]  # the 5 largest query maxima, any head
        assert [v for v, *_ in st.top] == pytest.approx(want, rel=1e-6)
        want = sorted((b, h, kk) for b, h, kk in (share > 0.3).nonzero().tolist())
        assert [(r.sample, r.head, r.key) for r in st.sinks] == want
    a, b = whole.finalize(), merge_attention(parts).finalize()
    assert a.top == b.top and a.score_max_at == b.score_max_at


@torch.no_grad()
def planted_sink(head: int = 2, layer: int = 1):
    """GPT-2 (no rotary embedding; tiny_model zeroes the positions) whose head `head` in layer `layer` attends to
    the TRIGGER token: its query reads channel 3, which every token holds at 1.5; its key reads channel 11, where
    only the trigger's embedding is large."""
    from planting import tiny_model
    model = tiny_model("gpt2")
    structured_embeddings_(model, const_channel=3)
    model.transformer.wte.weight[TRIGGER, 11] = 8.0
    w = model.transformer.h[layer].attn.c_attn.weight  # Conv1D [in, 3 * hidden]: q | k | v
    d = w.shape[0] // 4  # head_dim (4 heads)
    w[:, head * d] = 0.0
    w[3, head * d] = 3.0
    w[:, w.shape[0] + head * d] = 0.0
    w[11, w.shape[0] + head * d] = 3.0
    return model


def test_a_planted_sink_is_found_at_its_token_and_head():
    model = planted_sink()
    ids = windows(samples=4, seq_len=16, trigger_at=2)
    res = probe_model(model, ids, ProbeConfig(batch_size=2))
    att = res.attention[1]
    strong = [(r.sample, r.head, r.key, r.token_id) for r in att.sinks if r.share > 0.5]
    assert strong == [(s, 2, 2, TRIGGER) for s in range(4)]
    assert float(att.mean_share[2, 2]) > 0.8
    assert int(att.mean_share[2].argmax()) == 2
    assert all(int(res.attention[li].mean_share[2].argmax()) != 2 for li in (0, 2, 3))
    assert att.score_max_at[2][2] == 2  # the largest score of head 2 reads key 2
    assert float(att.entropy[2]) < 0.5 * float(att.entropy[0])


def test_attention_off_and_untappable_kernels():
    ids = windows(samples=2, seq_len=8)
    from planting import tiny_model
    assert probe_model(tiny_model("llama"), ids, ProbeConfig(attention=False)).attention == {}
    model = tiny_model("gpt2")  # eager; GPT-2's reordered-upcast path computes attention itself
    model.config.reorder_and_upcast_attn = True
    for block in model.transformer.h:
        block.attn.reorder_and_upcast_attn = True
    with pytest.raises(SmoothQuantError, match="analysis.attention: false"):
        probe_model(model, ids, ProbeConfig())


def test_causal_mask_with_a_sliding_window():
    from smooth_then_quant.probe.attention import causal
    want = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal(4, 4, 2, "cpu")[0, 0], want)
    assert torch.equal(causal(2, 4, None, "cpu")[0, 0], torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    padded = scores_and_probs(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.tensor([[0, 1, 1]]), None).probs
    assert float(padded[0, :, 1:, 0].abs().max()) == 0.0  # a [B, S] padding mask hides key 0
