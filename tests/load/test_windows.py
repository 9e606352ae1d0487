"""Windows as the model sees text in use (calibration.format / evaluation.format): auto starts every window with
BOS when the tokenizer adds one, chat with the chat template's head (context, not scored), text with nothing, and
gptq (evaluation) keeps the published protocol: one BOS at the start of the whole text."""
import math

import pytest
import torch

from planting import VOCAB, char_tokenizer, tiny_model
from smooth_then_quant import SmoothQuantError
from smooth_then_quant.evaluate import EvalConfig, PerplexityCache, evaluation_windows, perplexity
from smooth_then_quant.evaluate.nll import token_nll
from smooth_then_quant.arch import walk
from smooth_then_quant.load import calibration_windows, window_prefix

BOS = 2


def bos_tokenizer(chat: bool = True):
    """The char tokenizer, adding BOS (id 2) in front of what it encodes, as Llama 3 and Gemma do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{chr(i): i for i in range(1, VOCAB) if i != BOS}, "<s>": BOS}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    if chat:
        out.chat_template = "{% for m in messages %}[user] {{ m['content'] }} [end]{% endfor %}"
    return out


def test_auto_starts_every_window_with_bos_when_the_tokenizer_adds_one():
    tok = bos_tokenizer()
    assert window_prefix(tok, "auto") == ([BOS], "bos") and window_prefix(char_tokenizer(), "auto") == ([], "text")
    cal, prov = calibration_windows(tok, "offline", 6, 32, seed=1)
    assert cal.shape == (6, 32) and (cal[:, 0] == BOS).all() and not (cal[:, 1:] == BOS).any()
    assert prov["format"] == "bos" and prov["prefix_tokens"] == 1
    text, _ = calibration_windows(tok, "offline", 6, 32, seed=1, format="text")
    assert not (text[:, 0] == BOS).all()
    ev, protocol = evaluation_windows(tok, "offline", 32, 5)
    assert (ev[:, 0] == BOS).all() and protocol["format"] == "bos"
    gptq, protocol = evaluation_windows(tok, "offline", 32, 5, format="gptq")
    assert gptq[0, 0] == BOS and not (gptq[1:, 0] == BOS).any() and "start of the text only" in protocol["bos"]
    plain, _ = evaluation_windows(tok, "offline", 32, 5, format="text")
    assert not (plain == BOS).any()


def test_chat_windows_start_with_the_template_head_which_is_not_scored():
    tok = bos_tokenizer()
    head, fmt = window_prefix(tok, "chat")
    assert fmt == "chat" and head == [ord(c) for c in "[user] "]
    ev, protocol = evaluation_windows(tok, "offline", 40, 3, format="chat")
    assert (ev[:, :len(head)] == torch.tensor(head)).all() and protocol["prefix_tokens"] == len(head)
    model = tiny_model("llama", init=0.05)
    with torch.no_grad():
        nll = token_nll(model, walk(model, ev, 3, show=False), [ev])[0]  # [3, 39]
    expected = math.exp(float(nll[:, len(head) - 1:].mean()))  # targets after the head only
    assert perplexity(model, ev, 3, False, prefix=len(head)) == pytest.approx(expected, rel=1e-12)
    assert perplexity(model, ev, 3, False) != pytest.approx(expected, rel=1e-6)
    cal, prov = calibration_windows(tok, "offline", 4, 40, format="chat")
    assert (cal[:, :len(head)] == torch.tensor(head)).all() and prov["format"] == "chat"


def test_chat_without_a_template_and_windows_too_short_are_one_line_errors():
    with pytest.raises(SmoothQuantError, match="has none; use format auto or text"):
        calibration_windows(bos_tokenizer(chat=False), "offline", 2, 32, format="chat")
    with pytest.raises(SmoothQuantError, match="leaves no room for text"):
        evaluation_windows(bos_tokenizer(), "offline", 8, 2, format="chat")


def test_the_cache_keeps_each_format_apart():
    tok, model, cache = bos_tokenizer(), tiny_model("llama", init=0.05), PerplexityCache()
    a = cache.perplexity(model, tok, "offline", EvalConfig(seq_len=32, max_windows=3, format="auto"))
    b = cache.perplexity(model, tok, "offline", EvalConfig(seq_len=32, max_windows=3, format="gptq"))
    assert cache.hits == 0 and a != b
    cache.perplexity(model, tok, "offline", EvalConfig(seq_len=32, max_windows=3, format="auto"))
    assert cache.hits == 1



def test_a_dataset_can_carry_its_own_format_so_the_table_shows_both_protocols():
    tok, cache = bos_tokenizer(), PerplexityCache()
    cfg = EvalConfig(datasets=["offline", "offline@gptq"], seq_len=32, max_windows=3)
    as_used, _ = cache.windows(tok, "offline", cfg)
    published, protocol = cache.windows(tok, "offline@gptq", cfg)
    assert (as_used[:, 0] == BOS).all() and protocol["format"] == "gptq" and not (published[1:, 0] == BOS).any()
    with pytest.raises(SmoothQuantError, match="unknown data source 'offline@zzz'"):
        EvalConfig(datasets=["offline@zzz"])
