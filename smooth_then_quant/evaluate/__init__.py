"""Evaluate: perplexity (cached per model state), the smoothing evidence, the quantization table."""
from .nll import EvalConfig, PerplexityCache, evaluation_windows, model_fingerprint, perplexity, window_nll
from .table import FP, QuantizationConfig, degradation_rows

__all__ = ["FP", "EvalConfig", "PerplexityCache", "QuantizationConfig", "degradation_rows", "evaluation_windows",
           "model_fingerprint", "perplexity", "window_nll"]
