"""Quantization: weight methods (GPTQ, RTN; a registry), activation fake-quantizers (granularities; a
registry), and the stage verb `quantize_(model, scheme, ids)`."""
from .fake import attach_act_quant_, calibrate_ranges, detach_act_quant_, linear_modules, rtn_weights_
from .gptq import GPTQWeights, gptq_
from .rtn import (GRANULARITIES, ActQuant, Granularity, GroupSize, WeightQuant, act_range, fake_quant_act,
                  fake_quant_weight, register_granularity, uneven_groups)
from .scheme import (GPTQ_BACKENDS, WEIGHT_METHODS, Scheme, WeightMethod, preset_schemes, quantize_, quantize_weights_,
                     register_weight_method)

__all__ = ["GPTQ_BACKENDS", "GRANULARITIES", "WEIGHT_METHODS", "ActQuant", "GPTQWeights", "Granularity", "GroupSize",
           "Scheme", "WeightMethod", "WeightQuant", "act_range", "attach_act_quant_", "calibrate_ranges",
           "detach_act_quant_", "fake_quant_act", "fake_quant_weight", "gptq_", "linear_modules", "preset_schemes",
           "quantize_", "quantize_weights_", "register_granularity", "register_weight_method", "rtn_weights_",
           "uneven_groups"]
