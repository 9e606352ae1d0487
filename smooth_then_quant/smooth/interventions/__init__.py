"""The built-in interventions, one module each; importing them registers them (smooth/registry.py)."""
from .flatten import FlattenGamma, FlattenGammaConfig, FlattenOTCConfig, FlattenRows
from .migrate import MigrateConfig, MigrateDown, MigrateNorm
from .tma import MassiveRemoval, RemoveMassive, RemoveMassiveConfig, remove_massive
from .repair import Repair, RepairConfig, kl_to, repair_

__all__ = ["FlattenGamma", "FlattenGammaConfig", "FlattenOTCConfig", "FlattenRows", "MassiveRemoval",
           "MigrateConfig", "MigrateDown", "MigrateNorm", "Repair", "RepairConfig", "RemoveMassive",
           "RemoveMassiveConfig", "kl_to", "remove_massive", "repair_"]
