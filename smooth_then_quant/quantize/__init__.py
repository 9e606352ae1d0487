from .fake import attach_act_quant_, calibrate_ranges, detach_act_quant_, linear_modules, rtn_weights_
from .rtn import ActQuant, WeightQuant, act_range, uneven_groups, fake_quant_act, fake_quant_weight

__all__ = ["attach_act_quant_", "calibrate_ranges", "detach_act_quant_", "linear_modules", "rtn_weights_",
           "ActQuant", "WeightQuant", "act_range", "uneven_groups", "fake_quant_act", "fake_quant_weight"]
