from .perplexity import EvalConfig, PerplexityCache, evaluation_windows, model_fingerprint, perplexity, window_nll

__all__ = ["EvalConfig", "PerplexityCache", "evaluation_windows", "model_fingerprint", "perplexity", "window_nll"]
