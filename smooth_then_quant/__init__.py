"""smooth-then-quant: remove the activation outliers that ruin low-bit quantization, then quantize.

Python API (each stage a function with a typed config; functions ending in _ modify the model):

    from smooth_then_quant import (load_model, calibration_windows, analyze, AnalysisConfig,
                                   plan_smoothing, SmoothingConfig, smooth_, export_smoothed)
    loaded = load_model("default")                       # embedded SmolLM2-135M-Instruct
    ids, _ = calibration_windows(loaded.tokenizer, "offline", samples=32, seq_len=512)
    analysis = analyze(loaded.model, ids, AnalysisConfig())
    plan = plan_smoothing(loaded.model, analysis, SmoothingConfig(), ids)
    smooth_(loaded.model, plan)
    export_smoothed(loaded.model, loaded.tokenizer, plan, "smoothed-model")
    quantize_(loaded.model, Scheme("W4A8", GPTQConfig(bits=4, group_size=64), ActQuant(8, "per_tensor")), ids)
    export_quantized(loaded.model, loaded.tokenizer, "smollm2-w4a8", plan=plan)   # GPTQ format
    # or format="compressed-tensors": the A8 activation scheme travels with it (vLLM int8 activations)
"""
__version__ = "0.1.0"

from .analyze import Analysis, AnalysisConfig, analyze, detect  # noqa: E402
from .arch import adapter_for, supported_model_types  # noqa: E402
from .detect import ChannelRule, MassiveRule  # noqa: E402
from .errors import SmoothQuantError  # noqa: E402
from .evaluate import EvalConfig, evaluation_windows, perplexity  # noqa: E402
from .export import export_quantized, export_smoothed  # noqa: E402
from .load import calibration_windows, load_model, load_text  # noqa: E402
from .probe import ProbeConfig, probe  # noqa: E402
from .quantize import ActQuant, GPTQConfig, Scheme, WeightQuant, gptq_, preset_schemes, quantize_  # noqa: E402
from .smooth import (MigrateConfig, RemoveMassiveConfig, RepairConfig, SmoothingConfig, SmoothingPlan,  # noqa: E402
                     plan_smoothing, repair_, smooth_)

__all__ = ["Analysis", "AnalysisConfig", "analyze", "detect", "adapter_for", "supported_model_types", "ChannelRule",
           "MassiveRule", "SmoothQuantError", "EvalConfig", "evaluation_windows", "perplexity", "export_quantized", "export_smoothed",
           "calibration_windows", "load_model", "load_text", "ProbeConfig", "probe", "ActQuant", "GPTQConfig",
           "Scheme", "WeightQuant", "gptq_", "preset_schemes", "quantize_", "MigrateConfig",
           "RemoveMassiveConfig", "RepairConfig", "SmoothingConfig", "SmoothingPlan", "plan_smoothing", "repair_",
           "smooth_", "__version__"]
