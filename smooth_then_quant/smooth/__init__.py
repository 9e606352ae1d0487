"""The smoothing stage: plan from the statistics, apply in place, optionally repair.

    plan = plan_smoothing(model, analysis, SmoothingConfig(), calibration_ids)
    smooth_(model, plan)                                  # weights edited, runtime hooks attached
    repair_(model, teacher, calibration_ids, plan)        # optional LoRA repair, merged
"""
from .apply import clone_model, smooth_
from .plan import (FlattenGamma, FlattenRows, MigrateDown, MigrateNorm, RemoveMassive, Repair, SmoothingPlan)
from .planner import (FlattenGammaConfig, FlattenOTCConfig, MigrateConfig, RemoveMassiveConfig, SmoothingConfig,
                      plan_smoothing)
from .repair import RepairConfig, kl_to, repair_
from .runtime import MassiveRemoval, attach_runtime_, detach_runtime_, remove_massive, runtime_ops
from .search import SearchTarget

__all__ = ["clone_model", "smooth_", "FlattenGamma", "FlattenRows", "MigrateDown", "MigrateNorm", "RemoveMassive",
           "Repair", "SmoothingPlan", "FlattenGammaConfig", "FlattenOTCConfig", "MigrateConfig", "RemoveMassiveConfig",
           "SmoothingConfig", "plan_smoothing", "RepairConfig", "kl_to", "repair_", "MassiveRemoval",
           "attach_runtime_", "detach_runtime_", "remove_massive", "runtime_ops", "SearchTarget"]
