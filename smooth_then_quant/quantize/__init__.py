from .fake import attach_act_quant_, calibrate_ranges, detach_act_quant_, linear_modules, rtn_weights_
from .gptq import GPTQConfig, gptq_
from .rtn import ActQuant, WeightQuant, act_range, fake_quant_act, fake_quant_weight, uneven_groups
from .scheme import Scheme, preset_schemes, quantize_, quantize_weights_

__all__ = ["attach_act_quant_", "calibrate_ranges", "detach_act_quant_", "linear_modules", "rtn_weights_",
           "GPTQConfig", "gptq_", "ActQuant", "WeightQuant", "act_range", "fake_quant_act", "fake_quant_weight",
           "uneven_groups", "Scheme", "preset_schemes", "quantize_", "quantize_weights_"]
