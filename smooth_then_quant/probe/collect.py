"""One calibration pass with forward hooks at every mapped point of every decoder layer."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from pydantic import Field

from ..arch import ArchAdapter, adapter_for, take_part
from ..progress import bar
from ..schema import Config
from .stats import PointAccumulator, PointStats, release_workspace, trim_heap


class MassiveRule(Config):
    """The paper's massive-activation rule: |a| > abs_threshold and > ratio × median |a| of its tensor."""
    abs_threshold: float = Field(100.0, gt=0)
    ratio: float = Field(1000.0, gt=0)

    def holds(self, value: float, median: float) -> bool:
        return abs(value) > self.abs_threshold and abs(value) > self.ratio * median


class ProbeConfig(Config):
    batch_size: int = Field(4, ge=1)  # calibration windows per forward
    top_k: int = Field(10, ge=1)  # largest |a| kept per point
    massive: MassiveRule = MassiveRule()  # the loosest rule recorded (detect applies its own, stricter or equal)
    max_records: int = Field(20000, ge=1)  # massive-activation elements kept per point (all are counted)


@dataclass
class ProbeResult:
    adapter: ArchAdapter
    num_layers: int
    samples: int
    seq_len: int
    stats: dict[tuple[int, str], PointStats]
    config: ProbeConfig

    def at(self, layer: int, point: str) -> PointStats:
        return self.stats[(layer, point)]

    def points(self) -> Iterator[tuple[int, str]]:
        """(layer, point) in dataflow order."""
        for layer in range(self.num_layers):
            for p in self.adapter.point_names:
                yield layer, p


class _Batch:
    """What the hooks need to know about the batch being run."""

    sample_offset = 0
    seq_len = 0
    token_ids: torch.Tensor | None = None


@contextlib.contextmanager
def hooks_at_points(model: nn.Module, adapter: ArchAdapter, fn) -> Iterator[None]:
    """Call fn(layer_index, point, tensor[..., C]) at every mapped point during forward passes."""
    handles = []
    for li, layer in enumerate(adapter.decoder_layers(model)):
        for point, tap in adapter.points.items():
            module = layer.get_submodule(tap.module)

            def emit(t, li=li, point=point, part=tap.part):
                fn(li, point, take_part(t, part))

            if tap.side == "input":
                def pre(_m, args, kwargs, emit=emit):
                    emit(args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v)))
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(_m, _args, out, emit=emit):
                    emit(out[0] if isinstance(out, tuple) else out)
                handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def probe_model(model: nn.Module, input_ids: torch.Tensor, config: ProbeConfig = ProbeConfig()) -> ProbeResult:
    """Run the calibration windows input_ids: [samples, seq_len] through the model, gathering
    streaming statistics at every (layer, point). Memory stays bounded in the number of samples."""
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    samples, seq_len = input_ids.shape
    device = next(model.parameters()).device
    acc: dict[tuple[int, str], PointAccumulator] = {}
    batch = _Batch()

    def record(li: int, point: str, t: torch.Tensor) -> None:
        x = t.detach().reshape(-1, t.shape[-1]).float().cpu()  # [B*T, C]
        a = acc.get((li, point))
        if a is None:
            a = acc[(li, point)] = PointAccumulator(
                x.shape[1], config.top_k, config.massive.abs_threshold, config.massive.ratio, config.max_records)
        a.update(x, batch.seq_len, batch.sample_offset, batch.token_ids, tuple(t.shape))

    with hooks_at_points(model, adapter, record):
        starts = range(0, samples, config.batch_size)
        for s in bar(starts, desc="probe: calibration pass", unit="batch"):
            ids = input_ids[s: s + config.batch_size]
            batch.sample_offset, batch.seq_len, batch.token_ids = s, seq_len, ids
            model.base_model(input_ids=ids.to(device), use_cache=False)
            trim_heap()

    release_workspace()
    missing = [(li, p) for li in range(len(layers)) for p in adapter.point_names if (li, p) not in acc]
    if missing:
        raise RuntimeError(f"hooks never fired at {missing[:5]}... (adapter {adapter.family} does not "
                           f"match this model's modules)")
    stats = {key: a.finalize() for key, a in acc.items()}
    return ProbeResult(adapter, len(layers), samples, seq_len, stats, config)
