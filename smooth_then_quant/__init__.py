"""smooth-then-quant: remove the activation outliers that ruin low-bit quantization, then quantize.

Python API: each stage a function with a typed config; functions ending in _ modify the model in
place. This example runs as written (tests/test_package_doc.py runs it on the embedded SmolLM2):

    >>> import tempfile, pathlib
    >>> from smooth_then_quant import (ActQuant, AnalysisConfig, GPTQWeights, Scheme, SmoothingConfig, analyze,
    ...                                calibration_windows, export_quantized, load_model, plan_smoothing,
    ...                                quantize_, smooth_)
    >>> loaded = load_model("default")                       # embedded SmolLM2-135M-Instruct
    >>> ids, _ = calibration_windows(loaded.tokenizer, "offline", samples=4, seq_len=128)
    >>> analysis = analyze(loaded.model, ids, AnalysisConfig())
    >>> plan = plan_smoothing(loaded.model, analysis, SmoothingConfig(), ids)
    >>> plan.kinds()
    ['migrate_norm', 'migrate_down']
    >>> model = smooth_(loaded.model, plan)                  # exact migrations folded into the weights
    >>> report = quantize_(model, Scheme("W4A8-static", GPTQWeights(bits=4, group_size=64), ActQuant(8, "per_tensor")), ids)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "smollm2-w4a8"
    >>> export_quantized(model, loaded.tokenizer, out, plan=plan).name   # GPTQ format; or format="compressed-tensors"
    'smollm2-w4a8'
"""
from .arch import adapter_for, register_adapter, supported_model_types
from .detect import Analysis, AnalysisConfig, ChannelRule, MassiveRule, analyze, analyze_checkpoint, detect_outliers
from .errors import SmoothQuantError
from .evaluate import EvalConfig, evaluation_windows, perplexity
from .export import export_quantized, export_smoothed, register_format
from .load import calibration_windows, load_model, load_text
from .api import oneshot
from .probe import ProbeConfig, probe_model
from .quantize import ActQuant, GPTQWeights, Scheme, WeightQuant, gptq_, preset_schemes, quantize_
from .smooth import (MigrateConfig, RemoveMassiveConfig, RepairConfig, SmoothingConfig, SmoothingPlan, plan_smoothing,
                     repair_, smooth_)
from .version import __version__

__all__ = ["ActQuant", "Analysis", "AnalysisConfig", "ChannelRule", "EvalConfig", "GPTQWeights", "MassiveRule",
           "MigrateConfig", "ProbeConfig", "RemoveMassiveConfig", "RepairConfig", "Scheme", "SmoothQuantError",
           "SmoothingConfig", "SmoothingPlan", "WeightQuant", "__version__", "adapter_for", "analyze", "analyze_checkpoint",
           "calibration_windows", "detect_outliers", "evaluation_windows", "export_quantized", "export_smoothed",
           "gptq_", "load_model", "load_text", "oneshot", "perplexity", "plan_smoothing", "preset_schemes", "probe_model",
           "quantize_", "register_adapter", "register_format", "repair_", "smooth_", "supported_model_types"]


def __getattr__(name: str):
    """`GPTQConfig`, this toolkit's name for GPTQWeights until 0.1, collided with transformers.GPTQConfig."""
    if name == "GPTQConfig":
        import warnings

        warnings.warn("smooth_then_quant.GPTQConfig is now GPTQWeights (the old name collided with "
                      "transformers.GPTQConfig); GPTQConfig will be removed in 0.3.", DeprecationWarning, stacklevel=2)
        return GPTQWeights
    raise AttributeError(f"module 'smooth_then_quant' has no attribute {name!r}")
