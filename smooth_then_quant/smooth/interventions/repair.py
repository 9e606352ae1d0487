"""Repair with PEFT (paper §4.4): win back what a lossy edit cost, then merge.

LoRA adapters (the `peft` library) on chosen projections are trained so the edited model
(student, runtime hooks active) matches the unmodified model (teacher) on calibration text:

    loss = KL(teacher ‖ student) per token                       (logit distillation)
         + λ · Σ_rows relu(|mean_t(x_j) − mean(x)| / std(x) − m)²  (a flattened OTC row j must
                                                                     not turn back into a channel outlier)

then `merge_and_unload()` folds them into the weights: no peft module is left and a vanilla
checkpoint reproduces the result.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...arch import adapter_for, is_streamed, model_device, take_part
from ...errors import SmoothQuantError
from ...extras import require
from ...progress import bar
from ...schema import Config
from ..plan import PlanItem, SmoothingPlan
from ..registry import Intervention, register_intervention
from .flatten import FlattenRows

log = logging.getLogger(__name__)


class RepairConfig(Config):
    """LoRA (peft) distillation against the unmodified model, merged into the weights."""
    enabled: bool = False
    roles: tuple[Literal["qkv", "o", "mlp_in", "mlp_out"], ...] = ("qkv",)
    layers: Literal["affected", "all"] = "affected"  # affected: the layers the plan touches
    rank: int = Field(8, ge=1, le=4096, description="a LoRA rank past 4,096 is no longer low-rank")
    lora_alpha: int = Field(16, ge=1, le=65536, description="LoRA's scale is lora_alpha / rank")
    steps: int = Field(60, ge=1, le=1_000_000, description="training steps of the repair")
    lr: float = Field(1e-3, gt=0, le=10, description="a larger step diverges")
    batch_size: int = Field(2, ge=1, le=4096, description="windows per training step")
    seq_len: int = Field(256, ge=2, le=1_048_576, description="2^20 tokens is past any model's context")  # training crops of the calibration windows
    penalty: float = Field(1.0, ge=0, le=1e6, description="the outlier term's weight against the KL")  # λ of the outlier term
    m: float = Field(4.0, gt=0)  # the channel-outlier criterion the penalty keeps away from
    heldout: int = Field(4, ge=1, le=10_000, description="calibration windows kept out of training")  # calibration windows kept out of training to measure KL
    seed: int = Field(0, ge=0, le=2**63 - 1, description="torch's generator takes a 64-bit seed")


@dataclass
class Repair(PlanItem):
    """§4.4: LoRA adapters distilled against the unmodified model, merged into the weights.
    Not replayable from the plan (it is training); the weights of an export carry it."""
    kind: ClassVar[str] = "repair"
    exact: ClassVar[bool] = False
    foldable: ClassVar[bool] = True
    modules: list[str]
    config: dict
    result: dict
    reason: str = ""

    def apply_(self, layer, adapter) -> None:
        raise SmoothQuantError("this plan contains a LoRA repair, which is training and cannot be replayed from the "
                               "plan; load the exported checkpoint (its weights hold the merged repair) or drop the "
                               "entry.")

    def touched(self, adapter, layer):
        raise SmoothQuantError("a LoRA repair cannot be planned on: it is applied after the plan")


def target_modules(model: nn.Module, plan: SmoothingPlan, cfg: RepairConfig) -> list[str]:
    layers = None if cfg.layers == "all" else sorted({i.layer for i in plan.interventions if hasattr(i, "layer")})
    return [name for name, _ in adapter_for(model).named_projections(model, cfg.roles, layers)]


@torch.no_grad()
def kl_to(teacher: nn.Module, student: nn.Module, ids: torch.Tensor, batch_size: int = 2) -> float:
    """Mean per-token KL(teacher ‖ student) over windows ids: [N, T]."""
    total, n = 0.0, 0
    device = model_device(student)
    for s in range(0, ids.shape[0], batch_size):
        b = ids[s: s + batch_size].to(device)
        kl = _kl(teacher(input_ids=b, use_cache=False).logits, student(input_ids=b, use_cache=False).logits)
        total += float(kl) * b.numel()
        n += b.numel()
    return total / max(n, 1)


def _kl(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    t = F.log_softmax(t_logits.float(), -1)
    s = F.log_softmax(s_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


def _outlier_penalty(x: torch.Tensor, rows: list[int], m: float) -> torch.Tensor:
    """x: [B, T, O]: hinge on the channel-outlier criterion of `rows`."""
    flat = x.reshape(-1, x.shape[-1]).float()
    mu, sd = flat.mean(), flat.std().clamp(min=1e-6)
    dev = (flat[:, rows].mean(0) - mu).abs() / sd  # [rows]
    return F.relu(dev - m).pow(2).sum()


def repair_(model: nn.Module, teacher: nn.Module, input_ids: torch.Tensor, plan: SmoothingPlan,
            cfg: RepairConfig = RepairConfig()) -> Repair:
    """Train LoRA on `model` towards `teacher`, merge it; returns the plan entry (appended to plan)."""
    if is_streamed(model) or is_streamed(teacher):
        raise SmoothQuantError("the repair trains LoRA through the whole model, which needs it in memory: load it "
                               "whole (load.stream: false, or load_model(..., stream=False)).")
    peft = require("peft", "repair", "the LoRA repair (smoothing.repair)")
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model
    if input_ids.shape[0] <= cfg.heldout:
        raise SmoothQuantError(f"repair needs more calibration windows than repair.heldout={cfg.heldout} "
                               f"(got {input_ids.shape[0]}).")
    adapter = adapter_for(model)
    targets = target_modules(model, plan, cfg)
    if not targets:
        raise SmoothQuantError("repair has no target: the plan touches no layer; set repair.layers: all.")
    train_ids, held = input_ids[cfg.heldout:], input_ids[: cfg.heldout]
    teacher.eval()
    kl_before = kl_to(teacher, model, held)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    # peft swaps the target modules for LoRA wrappers (and back when merging); the runtime hooks
    # follow such swaps by themselves (runtime._Attachment), so they stay active throughout
    transposed = any(p.transposed for p in (*adapter.qkv.values(), *adapter.mlp_in, adapter.mlp_out))
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets, bias="none",
                      fan_in_fan_out=transposed)
    try:
        peft_model = get_peft_model(model, lcfg)
    except ImportError as e:  # e.g. peft with gptqmodel installed but no optimum
        raise SmoothQuantError(f"peft could not wrap the model for the repair: {e}. Install the missing package "
                               f"or disable smoothing.repair.") from None
    inner = peft_model.get_base_model()
    penalties = _penalty_hooks(inner, plan, cfg)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    inner.train()
    try:
        for _ in bar(range(cfg.steps), desc="repair: LoRA distillation", unit="step"):
            rows = torch.randint(0, train_ids.shape[0], (cfg.batch_size,), generator=g)
            T = min(cfg.seq_len, train_ids.shape[1])
            start = int(torch.randint(0, train_ids.shape[1] - T + 1, (1,), generator=g))
            b = train_ids[rows, start: start + T].to(model_device(model))
            with torch.no_grad():
                t_logits = teacher(input_ids=b, use_cache=False).logits
            penalties.terms.clear()
            loss = _kl(t_logits, inner(input_ids=b, use_cache=False).logits)
            if penalties.terms:
                loss = loss + cfg.penalty * torch.stack(penalties.terms).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        penalties.remove()
        inner.eval()
        merged = peft_model.merge_and_unload()
        for n, p in merged.named_parameters():
            p.requires_grad_(flags.get(n, False))
    if merged is not model:  # peft injects in place and hands the same object back
        raise RuntimeError("peft returned a different model object after merging")
    kl_after = kl_to(teacher, model, held)
    result = {"kl_before": kl_before, "kl_after": kl_after, "loss_first": losses[0], "loss_last": losses[-1],
              "steps": cfg.steps, "trainable_parameters": sum(p.numel() for p in params),
              "heldout_windows": cfg.heldout}
    log.info("repair: KL to the unmodified model %.4g -> %.4g on %d held-out windows", kl_before, kl_after,
             cfg.heldout)
    entry = Repair(targets, cfg.model_dump(mode="json", exclude={"enabled"}), result,
                   reason=f"LoRA on {len(targets)} modules, distilled against the unmodified model")
    plan.interventions.append(entry)
    if not math.isfinite(kl_after):
        raise SmoothQuantError("repair diverged (KL is not finite); lower repair.lr.")
    return entry


class _Penalties:
    def __init__(self):
        self.terms: list[torch.Tensor] = []
        self.handles = []

    def remove(self):
        for h in self.handles:
            h.remove()


def _penalty_hooks(model: nn.Module, plan: SmoothingPlan, cfg: RepairConfig) -> _Penalties:
    """Forward hooks on the projections whose rows were flattened: collect the outlier terms."""
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    pen = _Penalties()
    if cfg.penalty <= 0:
        return pen
    for i in plan.interventions:
        if not isinstance(i, FlattenRows):
            continue
        tap = adapter.points[i.point]

        def hook(_m, _a, out, rows=i.rows, part=tap.part):
            pen.terms.append(_outlier_penalty(take_part(out, part), rows, cfg.m))
        pen.handles.append(layers[i.layer].get_submodule(tap.module).register_forward_hook(hook))
    return pen


def _describe(cfg: RepairConfig) -> list[str]:
    return [f"LoRA repair of {'/'.join(cfg.roles)} ({cfg.steps} steps)"]


REPAIR = register_intervention(Intervention(
    name="repair", config=RepairConfig, items=(Repair,), plan=None, describe=_describe, order=90, train=repair_))
