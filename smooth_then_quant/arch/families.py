"""One adapter per model family, keyed by `config.model_type`. Pure data."""
from __future__ import annotations

from .adapter import ATTENTION_FLOW, GATED_MLP_FLOW, PLAIN_MLP_FLOW, ArchAdapter, NormSite, Proj, Tap
from .registry import register_adapter

# Llama-style gated decoder layer: Llama 2/3, SmolLM2, Mistral; Qwen2 adds q/k/v biases.
_GATED_POINTS = {
    "x1": Tap("input_layernorm", "input"),
    "x2": Tap("input_layernorm", "output"),
    "x3": Tap("self_attn.q_proj", "output"),
    "x4": Tap("self_attn.k_proj", "output"),
    "x5": Tap("self_attn.v_proj", "output"),
    "x8": Tap("self_attn.o_proj", "input"),
    "x9": Tap("self_attn.o_proj", "output"),
    "y1": Tap("post_attention_layernorm", "input"),
    "y2": Tap("post_attention_layernorm", "output"),
    "y3": Tap("mlp.gate_proj", "output"),
    "y4": Tap("mlp.up_proj", "output"),
    "y5": Tap("mlp.act_fn", "output"),
    "y6": Tap("mlp.down_proj", "input"),
    "y7": Tap("mlp.down_proj", "output"),
}
_QKV = {"x3": Proj("self_attn.q_proj"), "x4": Proj("self_attn.k_proj"), "x5": Proj("self_attn.v_proj")}
_GATE_UP = (Proj("mlp.gate_proj"), Proj("mlp.up_proj"))


def _gated(family: str, model_types: tuple[str, ...], mlp_norm: str, **extra) -> ArchAdapter:
    points = dict(_GATED_POINTS)
    points["y1"] = Tap(mlp_norm, "input")
    points["y2"] = Tap(mlp_norm, "output")
    return ArchAdapter(
        family=family,
        model_types=model_types,
        layers="layers",
        points=points,
        attn_norm=NormSite("input_layernorm", "x1", "x2", tuple(_QKV.values()), extra.pop("gamma_offset", 0.0)),
        mlp_norm=NormSite(mlp_norm, "y1", "y2", _GATE_UP, extra.pop("mlp_gamma_offset", 0.0)),
        qkv=_QKV,
        mlp_in=_GATE_UP,
        mlp_out=Proj("mlp.down_proj"),
        mlp_linear_in=Proj("mlp.up_proj"),
        massive_point="y6",
        mlp_out_point="y7",
        flow={**ATTENTION_FLOW, **GATED_MLP_FLOW},
        **extra,
    )


LLAMA = _gated("llama", ("llama", "mistral"), "post_attention_layernorm",
               notes="RMSNorm x·γ; SiLU-gated MLP; no biases.")
QWEN2 = _gated("qwen2", ("qwen2",), "post_attention_layernorm",
               notes="Llama layout with biases on q/k/v (x3..x5 include the bias).")
GEMMA3_TEXT = _gated(
    "gemma3_text", ("gemma3_text",), "pre_feedforward_layernorm",
    gamma_offset=1.0, mlp_gamma_offset=1.0,
    post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    notes="Four RMSNorms per layer computing x·(1+γ); x9 and y7 are taken before the post-norms "
          "that scale each branch before the residual add; GELU(tanh)-gated MLP; q/k RMSNorm after x3/x4. "
          "The MLP post-norm renormalizes y7, so a large γ there re-creates a stream MA that removal at y6 "
          "cannot reach (the exact y6 migration is unaffected).",
)

_GPT2_QKV = {f"x{3 + i}": Proj("attn.c_attn", part=(i, 3), transposed=True) for i in range(3)}
GPT2 = ArchAdapter(
    family="gpt2",
    model_types=("gpt2",),
    layers="h",
    points={
        "x1": Tap("ln_1", "input"),
        "x2": Tap("ln_1", "output"),
        "x3": Tap("attn.c_attn", "output", part=(0, 3)),
        "x4": Tap("attn.c_attn", "output", part=(1, 3)),
        "x5": Tap("attn.c_attn", "output", part=(2, 3)),
        "x8": Tap("attn.c_proj", "input"),
        "x9": Tap("attn.c_proj", "output"),
        "y1": Tap("ln_2", "input"),
        "y2": Tap("ln_2", "output"),
        "y3": Tap("mlp.c_fc", "output"),
        "y4": Tap("mlp.c_proj", "input"),
        "y5": Tap("mlp.c_proj", "output"),
    },
    attn_norm=NormSite("ln_1", "x1", "x2", (Proj("attn.c_attn", transposed=True),)),
    mlp_norm=NormSite("ln_2", "y1", "y2", (Proj("mlp.c_fc", transposed=True),)),
    qkv=_GPT2_QKV,
    mlp_in=(Proj("mlp.c_fc", transposed=True),),
    mlp_out=Proj("mlp.c_proj", transposed=True),
    massive_point="y4",
    mlp_out_point="y5",
    final_norm="ln_f",
    flow={**ATTENTION_FLOW, **PLAIN_MLP_FLOW},
    notes="LayerNorm with β; Conv1D weights stored [in, out]; fused c_attn holds q|k|v; "
          "plain GELU MLP, so the paper's Figure 2(d) points y1..y5 (TMAs at y4).",
)

for _a in (LLAMA, QWEN2, GPT2, GEMMA3_TEXT):
    register_adapter(_a)
