import math

import pytest
import torch
import torch.nn.functional as F

from planting import char_tokenizer, tiny_model, windows
from smooth_then_quant import SmoothQuantError
from smooth_then_quant.evaluate import EvalConfig, PerplexityCache, evaluation_windows, perplexity, window_nll


def test_perplexity_matches_a_direct_computation():
    model = tiny_model("llama", init=0.2)
    ids = windows(5, 24)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in ids:
            logits = model(row[None]).logits[0]
            logp = F.log_softmax(logits[:-1].double(), -1)
            total -= float(logp.gather(1, row[1:, None]).sum())
            count += row.numel() - 1
    assert perplexity(model, ids, batch_size=2) == pytest.approx(math.exp(total / count), rel=1e-5)
    assert window_nll(model, ids, batch_size=3).shape == (5,)


def test_evaluation_windows_are_the_standard_protocol():
    tok = char_tokenizer()
    ids, prot = evaluation_windows(tok, "offline", seq_len=100, max_windows=7)
    assert ids.shape == (7, 100) and prot["windows"] == 7 and prot["windows_available"] > 7
    full = tok(__import__("smooth_then_quant").load_text("offline", "evaluation").text).input_ids
    assert ids.reshape(-1).tolist() == full[:700]  # non-overlapping, in order, from the start
    assert prot["bos"] == "no BOS" and prot["seq_len"] == 100
    with pytest.raises(SmoothQuantError, match="fewer than one window"):
        evaluation_windows(tok, "offline", seq_len=10**8)


def test_cache_does_not_recompute_the_same_state():
    model = tiny_model("llama", init=0.2)
    cache = PerplexityCache()
    cfg = EvalConfig(seq_len=32, max_windows=3, batch_size=3)
    a = cache.perplexity(model, char_tokenizer(), "offline", cfg)
    b = cache.perplexity(model, char_tokenizer(), "offline", cfg)
    assert a == b and cache.hits == 1
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    assert cache.perplexity(model, char_tokenizer(), "offline", cfg) != a and cache.hits == 1

def test_a_diverged_model_reports_an_infinite_perplexity_instead_of_crashing():
    # regression: math.exp overflowed (OverflowError) on a random 3B-shaped model whose mean NLL was > 709
    import math

    import torch

    from planting import tiny_model
    from smooth_then_quant.evaluate import perplexity

    model = tiny_model("llama", init=0.05)
    with torch.no_grad():
        model.lm_head.weight.mul_(1e6)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    assert perplexity(model, ids, 2, False) == math.inf
