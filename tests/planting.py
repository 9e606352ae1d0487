"""Tiny random-weight models of each supported family, and helpers that plant outliers
at known places so the detectors can be checked exactly.

All weights start small (initializer_range 0.002), so the residual stream stays close to the
token embeddings through the few layers; the embeddings are then built with a known structure.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from smooth_then_quant.arch import adapter_for

HIDDEN, INTER, VOCAB, LAYERS = 64, 128, 128, 4
TRIGGER = 7  # token id whose embedding triggers the planted massive activation
FAMILIES = ("llama", "qwen2", "gpt2", "gemma3_text")


def tiny_config(family: str, layers: int = LAYERS, init: float = 0.002):
    common = dict(vocab_size=VOCAB, initializer_range=init)
    gated = dict(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=layers, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, **common)
    if family == "llama":
        return LlamaConfig(**gated)
    if family == "mistral":
        return MistralConfig(**gated)
    if family == "qwen2":
        return Qwen2Config(**gated)
    if family == "gemma3_text":
        return Gemma3TextConfig(head_dim=16, **gated)
    if family == "gpt2":
        return GPT2Config(n_embd=HIDDEN, n_layer=layers, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=0,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    raise ValueError(family)


def tiny_model(family: str, layers: int = LAYERS, seed: int = 0, init: float = 0.002):
    """init: the initializer range; 0.002 keeps the stream near the embeddings (for planting),
    larger values give a model whose predictions depend on its weights (for repair, evaluation)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers, init), attn_implementation="eager").eval()
    if family == "gpt2":
        with torch.no_grad():
            model.transformer.wpe.weight.zero_()  # token embeddings alone set the residual stream
    return model


def embeddings(model) -> torch.Tensor:
    return model.get_input_embeddings().weight


@torch.no_grad()
def structured_embeddings_(model, const_channel: int | None = None, value: float = 1.5, seed: int = 1) -> None:
    """Every embedding row gets mean 0 and rms 1 exactly (so RMSNorm and LayerNorm both
    standardize it to itself), with `const_channel` = `value` in every row."""
    g = torch.Generator().manual_seed(seed)
    e = embeddings(model)
    vocab, d = e.shape
    for r in range(vocab):
        z = torch.randn(d, generator=g)
        if const_channel is None:
            row = (z - z.mean()) / (z - z.mean()).pow(2).mean().sqrt()
        else:
            keep = torch.arange(d) != const_channel
            zz = z[keep] - z[keep].mean()
            zz = zz / zz.pow(2).mean().sqrt()  # zero mean, unit variance over d-1 entries
            b = -value / (d - 1)  # other entries sum to -value: row mean 0
            a = ((d - value**2) / (d - 1) - b * b) ** 0.5  # row mean square 1
            row = torch.empty(d)
            row[keep] = a * zz + b
            row[const_channel] = value
        e[r] = row.to(e.dtype)  # (Gemma scales embeddings by sqrt(hidden): norms are scale-invariant)


@torch.no_grad()
def plant_massive_(model, layer: int, mlp_channel: int, hidden_channel: int, reserved: int, weight: float,
                   const_channel: int, const_value: float = 1.5, trigger: int = TRIGGER) -> None:
    """Make layer `layer`'s MLP create a massive activation at the down-projection input
    (channel `mlp_channel`) for the TRIGGER token only, written by W_down into residual
    channel `hidden_channel`.

    The trigger's embedding lies along `reserved` (zero in every other row); the first MLP
    input row (gate, or GPT-2's c_fc) also reads `const_channel`, which every ordinary token
    holds at `const_value` (structured_embeddings_), with a weight that drives the activation
    function to ~0 for them. Gemma's MLP post-norm gets a large γ at `hidden_channel`, the way
    Gemma itself carries massive activations into the residual stream.
    """
    adapter = adapter_for(model)
    e = embeddings(model)
    d = e.shape[1]
    e[:, reserved] = 0.0
    e[trigger] = 0.0
    e[trigger, reserved] = d**0.5  # rms 1
    blk = adapter.decoder_layers(model)[layer]
    for i, proj in enumerate(adapter.mlp_in):  # row mlp_channel of gate and up (or c_fc) reads `reserved`
        w = adapter.weight(blk, proj)
        w[mlp_channel] = 0.0
        w[mlp_channel, reserved] = weight
        if i == 0:
            w[mlp_channel, const_channel] = -10.0 / const_value  # act(-10 + ...) ~ 0 for ordinary tokens
    down = adapter.weight(blk, adapter.mlp_out)  # [hidden, inter]
    down[:, mlp_channel] = 0.0
    down[hidden_channel] = 0.0
    down[hidden_channel, mlp_channel] = 1.0
    for norm in adapter.post_norms[1:]:
        blk.get_submodule(norm).weight[hidden_channel] = 2000.0  # the stream is ~8x (Gemma's embedding scale)


@torch.no_grad()
def plant_gamma_(model, layer: int, site: str, channel: int, scale: float) -> None:
    """Set the effective rescaling factor of a norm ('attn' or 'mlp') at `channel` to `scale`."""
    adapter = adapter_for(model)
    ns = adapter.attn_norm if site == "attn" else adapter.mlp_norm
    norm = adapter.decoder_layers(model)[layer].get_submodule(ns.norm)
    norm.weight[channel] = scale - ns.gamma_offset


@torch.no_grad()
def plant_otc_(model, layer: int, point: str, row: int, channel: int, scale: float) -> None:
    """Row `row` of the projection computing `point` (x3/x4/x5) reads only input `channel`."""
    adapter = adapter_for(model)
    w = adapter.weight(adapter.decoder_layers(model)[layer], adapter.qkv[point])
    w[row] = 0.0
    w[row, channel] = scale


def windows(samples: int = 8, seq_len: int = 16, trigger_at: int | None = None, seed: int = 0) -> torch.Tensor:
    """Random token windows avoiding the trigger token, optionally with it at one position."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(TRIGGER + 1, VOCAB, (samples, seq_len), generator=g)
    if trigger_at is not None:
        ids[:, trigger_at] = TRIGGER
    return ids


@torch.no_grad()
def quiet_post_norms_(model, scale: float = 1e-3) -> None:
    """Gemma normalizes each branch output back to unit scale before the residual add, so even a
    tiny random branch adds unit noise to the stream; shrink those post-norms (no-op elsewhere)."""
    adapter = adapter_for(model)
    for blk in adapter.decoder_layers(model):
        for norm in adapter.post_norms:
            blk.get_submodule(norm).weight.fill_(scale - 1.0)  # Gemma's effective factor is 1 + γ


def char_tokenizer():
    """A character-level tokenizer over the tiny vocabulary (ids 0..VOCAB-1), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{chr(i): i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def save_tiny(folder, family: str = "llama", plant: bool = True, init: float = 0.002):
    """A tiny model with a planted massive activation, saved with a char tokenizer: a valid
    `model:` folder for recipes."""
    model = tiny_model(family, init=init)
    if plant:
        structured_embeddings_(model, const_channel=3)
        quiet_post_norms_(model)
        plant_massive_(model, 1, mlp_channel=5, hidden_channel=11, reserved=2,
                       weight=300.0 if family == "gpt2" else 40.0, const_channel=3,
                       trigger=ord("\n"))  # fires at every newline of real text
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return model


def record_removals(monkeypatch) -> list[tuple[float, float]]:
    """Every call of the runtime TMA removal from now on appends (max |a| before, max |a| after)."""
    import smooth_then_quant.smooth.interventions.tma as rt

    seen, real = [], rt.remove_massive

    def recording(y, op):
        out = real(y, op)
        seen.append((float(y.abs().max()), float(out.abs().max())))
        return out
    monkeypatch.setattr(rt, "remove_massive", recording)
    return seen
