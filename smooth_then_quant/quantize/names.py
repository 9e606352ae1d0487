"""Scheme names: what compressed-tensors' presets (quant_scheme.py) and vLLM mean by W4A16, W8A8, W4A8, and the
static per-tensor variants named so. A Scheme named after a preset takes the preset's values for what it leaves
out and may not contradict its name (`preset_filled`); `serving` says which vLLM kernel runs a scheme."""
from __future__ import annotations

from ..schema import Config

_A8_DYNAMIC = {"bits": 8, "granularity": "per_token"}
_A8_STATIC = {"bits": 8, "granularity": "per_tensor"}
SCHEME_PRESETS: dict[str, dict] = {
    "W4A16": {"weights": {"bits": 4, "group_size": 128}, "activations": None},
    "W8A16": {"weights": {"bits": 8, "group_size": 128}, "activations": None},
    "W8A8": {"weights": {"bits": 8, "group_size": -1}, "activations": _A8_DYNAMIC},
    "W4A8": {"weights": {"bits": 4, "group_size": 128}, "activations": _A8_DYNAMIC},
    "W8A8-static": {"weights": {"bits": 8, "group_size": -1}, "activations": _A8_STATIC},
    "W4A8-static": {"weights": {"bits": 4, "group_size": 128}, "activations": _A8_STATIC},
}


def _dump(v) -> dict | None:
    return v.model_dump() if isinstance(v, Config) else v


def preset_filled(data: dict) -> dict:
    """A scheme named after a preset: the preset's values for what it leaves out; a contradiction is refused."""
    name = data["name"]
    preset = SCHEME_PRESETS[name]
    out = dict(data)
    w = _dump(data.get("weights", {}))
    if isinstance(w, dict):
        if w.get("bits", preset["weights"]["bits"]) != preset["weights"]["bits"]:
            raise ValueError(f"scheme '{name}' has int{preset['weights']['bits']} weights by its name, but sets "
                             f"weights.bits {w['bits']}: rename the scheme (e.g. W{w['bits']}"
                             f"{name[name.index('A'):]}) or drop weights.bits")
        if "weights" not in data:
            out["weights"] = dict(preset["weights"])
        elif isinstance(data["weights"], dict):
            out["weights"] = {**preset["weights"], **data["weights"]}
    want = preset["activations"]
    if "activations" not in data:
        out["activations"] = want
        return out
    got = _dump(data["activations"])
    if want is None and got is not None:
        raise ValueError(f"scheme '{name}' has 16-bit activations by its name, but sets activations: name it "
                         f"W{preset['weights']['bits']}A{got.get('bits', 8) if isinstance(got, dict) else 8} "
                         "(per-token dynamic) or ...-static (per-tensor), or drop activations")
    if want is not None and got is None:
        raise ValueError(f"scheme '{name}' has int8 activations by its name, but sets activations: null: name it "
                         f"W{preset['weights']['bits']}A16 for weight-only, or drop activations")
    if want is not None and isinstance(got, dict):
        merged = {**want, **got}
        if merged.get("bits") != want["bits"]:
            raise ValueError(f"scheme '{name}' has int8 activations by its name, but sets activations.bits "
                             f"{merged.get('bits')}: rename the scheme")
        if merged.get("granularity") != want["granularity"]:
            base = name.removesuffix("-static")
            if name == base:
                raise ValueError(f"scheme '{name}' sets per_tensor (static) activations, but {name} means int8 "
                                 "per-token dynamic activations, as in compressed-tensors and vLLM (smooth-then-quant "
                                 f"0.1 used the name for the static variant): rename the scheme "
                                 f"'{name}-static' to keep static per-tensor activations, or drop "
                                 f"activations.granularity for the dynamic {name}")
            raise ValueError(f"scheme '{name}' means per-tensor static activations, but sets granularity "
                             f"{merged.get('granularity')}: name it '{base}' for per-token dynamic activations")
        if isinstance(data["activations"], dict):
            out["activations"] = merged
    return out


def serving(scheme: dict, fmt: str) -> str:
    """Which vLLM kernel serves `scheme` (Scheme.to_dict()) exported in format `fmt`, or that none does.
    'checked' marks what bench/vllm_reload.py ran on vLLM's CPU build (bench/results/vllm.md)."""
    bits, act = scheme["weights"]["bits"], scheme["activations"]
    if fmt not in ("gptq", "compressed-tensors"):
        return f"no vLLM kernel known here (vLLM reads the gptq and compressed-tensors formats, not {fmt})"
    if act is None or fmt == "gptq":
        note = "" if act is None else " (the GPTQ format holds the weights only: vLLM runs it as A16)"
        return (f"vLLM's mixed-precision int{bits} weight kernels (Marlin/Machete on GPUs; CPUWNA16LinearKernel "
                f"on CPU, checked){note}")
    if act["granularity"] == "per_token":
        if bits == 8:
            return "vLLM's int8 scaled-mm kernels, per-token dynamic (CPUInt8ScaledMMLinearKernel on CPU, checked)"
        return (f"vLLM's W{bits}A8 kernel for per-token dynamic int8 (Dynamic4bitLinearKernel on CPU, checked; slow "
                "there)")
    if bits == 8:
        return "vLLM's int8 scaled-mm kernels with a static input scale (not checked here)"
    return (f"no vLLM kernel: vLLM has none for W{bits}A8 with static per-tensor activations (checked: \"No "
            "compressed-tensors compatible scheme\"); transformers and smooth-then-quant run it")
