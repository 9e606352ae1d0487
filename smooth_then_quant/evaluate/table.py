"""The table users come for: perplexity of {FP, each scheme} x {baseline, paper, smoothed}.

Reference for every row is the float, unsmoothed model (FP / baseline): ΔPPL = PPL - PPL_FP.
A quantized row's "degradation reduced" compares its ΔPPL with the baseline row of the same
scheme: 1 - ΔPPL(state) / ΔPPL(baseline), shown only where the baseline's ΔPPL exceeds 0.1 % of
the FP perplexity (below that the ratio is noise). A smoothing that costs float accuracy pays for it
here too, since its ΔPPL is measured against the original model.
"""
from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..quantize import GPTQ_BACKENDS, Scheme, preset_schemes
from ..quantize.names import SCHEME_PRESETS
from ..schema import Config
from ..smooth import SmoothingConfig

FP = "FP"
STATES = ("baseline", "paper", "smoothed")
PAPER_SMOOTHING = {"remove_massive": {"enabled": True}, "migrate": {"norm": "none", "down": False}}


class QuantizationConfig(Config):
    """`quantization:` — the table: FP and every scheme x every compared smoothing state."""
    enabled: bool = False
    schemes: dict[str, Scheme] = Field(default_factory=lambda: {s.name: s for s in preset_schemes()})
    compare: list[Literal["baseline", "paper", "smoothed"]] = list(STATES)
    paper: SmoothingConfig = Field(default_factory=lambda: SmoothingConfig(**PAPER_SMOOTHING))  # the paper's smoothing
    batch_size: int = Field(1, ge=1, le=4096, description="windows per forward")  # calibration windows per GPTQ layer forward (1: least memory)
    gptq_backend: Literal[GPTQ_BACKENDS] = "builtin"  # builtin: faster on CPU, same PPL (bench/)

    @model_validator(mode="before")
    @classmethod
    def _scheme_names(cls, data):
        """A scheme's name is its key (schemes: {W4A8: {...}}); a preset's name alone is that preset
        (schemes: [W4A16, W4A8-static], or {mine: W4A8-static}); {W4A8: null} is the preset W4A8."""
        if isinstance(data, dict) and isinstance(data.get("schemes"), list | tuple):
            data = {**data, "schemes": {v if isinstance(v, str) else getattr(v, "name", None) or
                                        (v.get("name") if isinstance(v, dict) else None) or f"scheme{i}": v
                                        for i, v in enumerate(data["schemes"])}}
        if isinstance(data, dict) and isinstance(data.get("schemes"), dict):
            data = {**data, "schemes": {k: _named(k, v) for k, v in data["schemes"].items()}}
        return data

    @field_validator("compare")
    @classmethod
    def _baseline_first(cls, v: list[str]) -> list[str]:
        if "baseline" not in v:
            raise ValueError("compare must include baseline (the reference of 'degradation reduced')")
        return list(dict.fromkeys(["baseline", *v]))

def _named(key: str, v):
    if isinstance(v, dict):
        return {**v, "name": key}
    if v is None:
        return {"name": key}
    if isinstance(v, str) and v in SCHEME_PRESETS:  # {mine: W4A8-static}: that preset, under the key's name
        return {"name": key, **copy.deepcopy(SCHEME_PRESETS[v])}
    return v


MIN_DEGRADATION = 1e-3  # a baseline ΔPPL below 0.1 % of FP is noise: no reduction is computed from it


def degradation_rows(ppl: dict[tuple[str, str], dict[str, float]], schemes: list[str], states: list[str],
                     datasets: list[str], acc: dict[tuple[str, str], dict[str, float]] | None = None) -> list[dict]:
    """ppl[(scheme or FP, state)][dataset] (and acc[(scheme or FP, state)][task], lm-eval) -> one row per
    (scheme, state), FP first."""
    ref = ppl[(FP, "baseline")]
    rows = []
    for scheme in [FP, *schemes]:
        for state in states:
            if (scheme, state) not in ppl:
                continue
            vals = ppl[(scheme, state)]
            delta = {d: vals[d] - ref[d] for d in datasets}
            reduced = {}
            if scheme != FP and state != "baseline":
                for d in datasets:
                    base = ppl[(scheme, "baseline")][d] - ref[d]
                    reduced[d] = None if base <= MIN_DEGRADATION * ref[d] else 1 - delta[d] / base
            rows.append({"scheme": scheme, "state": state, "ppl": vals, "delta_ppl": delta,
                         "degradation_reduced": reduced or None,
                         **({"accuracy": acc[(scheme, state)]} if acc and (scheme, state) in acc else {})})
    return rows


def best_reduction(rows: list[dict], scheme: str, dataset: str) -> tuple[str, float] | None:
    """(state, reduction) with the largest degradation cut for one scheme and dataset."""
    cands = [(r["state"], r["degradation_reduced"][dataset]) for r in rows
             if r["scheme"] == scheme and r["degradation_reduced"] and r["degradation_reduced"][dataset] is not None]
    return max(cands, key=lambda c: c[1]) if cands else None
