"""What the stages of a recipe run share (`Run`) and what they produce, typed (report.json is built from it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .detect import Analysis
from .evaluate import PerplexityCache
from .load import LoadedModel
from .recipe import Recipe
from .smooth import SmoothingPlan


@dataclass
class Compared:
    """One smoothing state of the table: the model in that state, what was done, and its plan."""
    model: object
    description: str
    plan: SmoothingPlan | None


@dataclass
class SmoothingResult:
    plan: SmoothingPlan
    model: object  # the smoothed copy
    states: list[dict]  # evidence: baseline, each intervention alone, combined
    evaluation: dict  # the perplexity protocol per dataset
    markdown_at: int | None = None  # where its part of report.md sits in Run.markdown (re-rendered in place)

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "states": self.states, "evaluation": self.evaluation}


@dataclass
class QuantizationResult:
    datasets: list[str]
    rows: list[dict]
    schemes: list[dict]
    states: dict[str, str]  # state -> what was done
    weights: dict[str, dict]  # "state / schemes" -> the weight quantization report
    evaluation: dict
    export: dict | None = None  # the exported cell: scheme, state, format
    written: bool = False  # the cell's checkpoint is in output_dir/quantized (written when it was measured)
    tasks: list[str] = field(default_factory=list)  # lm-eval tasks: each row's `accuracy`

    def to_dict(self) -> dict:
        return {"datasets": self.datasets, **({"tasks": self.tasks} if self.tasks else {}), "rows": self.rows,
                "schemes": self.schemes, "states": self.states,
                **({"export": self.export} if self.export else {}), "weights": self.weights,
                "evaluation": self.evaluation}


@dataclass
class Run:
    """What the stages share while a recipe runs into the (temporary) output folder `out`."""
    recipe: Recipe
    out: Path
    loaded: LoadedModel | None = None
    ids: object = None  # calibration windows [N, T]
    analysis: Analysis | None = None
    cache: PerplexityCache = field(default_factory=PerplexityCache)
    smoothing: SmoothingResult | None = None
    compared: dict[str, Compared] = field(default_factory=dict)
    quantization: QuantizationResult | None = None
    report: dict = field(default_factory=dict)
    markdown: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    exported: dict[str, str] = field(default_factory=dict)  # what -> folder (relative to out)
    timing: dict = field(default_factory=dict)
    given_model: LoadedModel | None = None  # the Python API's model object (oneshot), used instead of loading
    given_data: object = None  # the Python API's calibration data in memory (texts, conversations, a Dataset)
    given_tokenizer: object = None  # the Python API's tokenizer for a model loaded by name (oneshot)
    writes: bool = True  # False on torchrun's ranks other than 0: they compute their share, rank 0 writes
    output_bytes: int = 0  # about what the outputs will take (pipeline.output_guards), for the scratch check

    @property
    def draws(self) -> bool:
        """Plots are drawn: the recipe asks for them and this process writes."""
        return self.recipe.analysis.draws and self.writes
