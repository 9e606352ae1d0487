"""The smoothing stage: plan from the statistics, apply in place, optionally repair.

    plan = plan_smoothing(model, analysis, SmoothingConfig(), calibration_ids)
    smooth_(model, plan)                                  # weights edited, runtime hooks attached
    repair_(model, teacher, calibration_ids, plan)        # optional LoRA repair, merged

A new intervention is one module that registers an Intervention (smooth/registry.py); the built-in
ones are in smooth/interventions/.
"""
from ..arch import attach_runtime_, detach_runtime_, runtime_ops
from .apply import clone_model, smooth_
from .interventions import (FlattenGamma, FlattenGammaConfig, FlattenOTCConfig, FlattenRows, MassiveRemoval,
                            MigrateConfig, MigrateDown, MigrateNorm, RemoveMassive, RemoveMassiveConfig, Repair,
                            RepairConfig, kl_to, remove_massive, repair_)
from .plan import PlanItem, SmoothingPlan, params_of, register_item
from .planner import PlanContext, plan_smoothing
from .registry import (Intervention, SmoothingConfig, get_intervention, register_intervention,
                       registered_interventions, unregister_intervention)
from .search import SearchTarget

__all__ = ["FlattenGamma", "FlattenGammaConfig", "FlattenOTCConfig", "FlattenRows", "Intervention", "MassiveRemoval",
           "MigrateConfig", "MigrateDown", "MigrateNorm", "PlanContext", "PlanItem", "RemoveMassive",
           "RemoveMassiveConfig", "Repair", "RepairConfig", "SearchTarget", "SmoothingConfig", "SmoothingPlan",
           "attach_runtime_", "clone_model", "detach_runtime_", "get_intervention", "registered_interventions", "kl_to",
           "params_of", "plan_smoothing", "register_intervention", "register_item", "remove_massive", "repair_",
           "runtime_ops", "smooth_", "unregister_intervention"]
