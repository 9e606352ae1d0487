"""One calibration pass with forward hooks at every mapped point of every decoder layer."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from pydantic import Field

from .. import dist
from ..arch import ArchAdapter, adapter_for, take_part, walk
from ..schema import Config
from .attention import attention_taps, untapped_error
from .attention_stats import AttentionAccumulator, AttentionStats, merge_attention
from .stats import PointAccumulator, PointStats, first_shift, merge, release_workspace


class MassiveRule(Config):
    """The paper's massive-activation rule: |a| > abs_threshold and > ratio × median |a| of its tensor."""
    abs_threshold: float = Field(100.0, gt=0)
    ratio: float = Field(1000.0, gt=0)

    def holds(self, value: float, median: float) -> bool:
        return abs(value) > self.abs_threshold and abs(value) > self.ratio * median


class ProbeConfig(Config):
    batch_size: int = Field(4, ge=1, le=4096, description="windows per forward")  # calibration windows per forward
    top_k: int = Field(10, ge=1, le=10_000, description="values kept per point and window")  # largest |a| kept per point
    massive: MassiveRule = MassiveRule()  # the loosest rule recorded (detect applies its own, stricter or equal)
    max_records: int = Field(20000, ge=1, le=100_000_000, description="each record is kept in memory")  # massive-activation elements kept per point (all are counted)
    attention: bool = Field(True, description="x6/x7: per-head scores, sink mass, entropy")  # tap the attention kernel
    sink_floor: float = Field(0.2, gt=0, le=1, description="a window's attention share that makes a key a sink record")


@dataclass
class ProbeResult:
    adapter: ArchAdapter
    num_layers: int
    samples: int
    seq_len: int
    stats: dict[tuple[int, str], PointStats]
    config: ProbeConfig
    attention: dict[int, AttentionStats] = field(default_factory=dict)  # layer -> x6/x7 statistics

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


class Recorder:
    """The hook callback of a probe pass: one PointAccumulator per (layer, point), fed batch by batch.
    `batch` says which windows are running (the massive-activation records name sample and token)."""

    def __init__(self, config: ProbeConfig):
        self.config, self.batch = config, _Batch()
        self.acc: dict[tuple[int, str], PointAccumulator] = {}
        self.stats: dict[tuple[int, str], PointStats] = {}
        self.attn_acc: dict[int, AttentionAccumulator] = {}
        self.attention: dict[int, AttentionStats] = {}

    def __call__(self, li: int, point: str, t: torch.Tensor) -> None:
        c = self.config
        x = t.detach().reshape(-1, t.shape[-1]).float().cpu()  # [B*T, C]
        a = self.acc.get((li, point))
        if a is None:
            a = self.acc[(li, point)] = PointAccumulator(
                x.shape[1], c.top_k, c.massive.abs_threshold, c.massive.ratio, c.max_records)
            if dist.active():  # every rank's first batch here is its own: all take rank 0's (the first window's) shift
                a.shift = first_shift(x)
                dist.broadcast_([a.shift], 0)
        b = self.batch
        a.update(x, b.seq_len, b.sample_offset, b.token_ids, tuple(t.shape))

    def attend(self, li: int, q: torch.Tensor, k: torch.Tensor, mask, extra: dict) -> None:
        """The attention tap's callback: q [B, H, T, D], k [B, KV, S, D] of layer li's kernel call."""
        c = self.config
        a = self.attn_acc.get(li)
        if a is None:
            a = self.attn_acc[li] = AttentionAccumulator(q.shape[1], c.top_k, c.sink_floor, c.max_records)
        a.update(q, k, mask, extra, self.batch.sample_offset, self.batch.token_ids)

    def running(self, sample_offset: int, ids: torch.Tensor) -> None:
        self.batch.sample_offset, self.batch.seq_len, self.batch.token_ids = sample_offset, ids.shape[1], ids

    def finalize(self, layer: int | None = None) -> None:
        """Turn the accumulators (of one layer, or all) into PointStats and free them; under torchrun, first merge
        every rank's accumulators of those points (one gather per layer), so every rank holds the same statistics."""
        keys = sorted(k for k in self.acc if layer is None or k[0] == layer)
        heads = sorted(li for li in self.attn_acc if layer is None or li == layer)
        mine = ([self.acc.pop(k) for k in keys], [self.attn_acc.pop(li) for li in heads])
        ranks = dist.gather(mine)
        for i, key in enumerate(keys):
            self.stats[key] = merge([r[0][i] for r in ranks]).finalize()
        for i, li in enumerate(heads):
            self.attention[li] = merge_attention([r[1][i] for r in ranks]).finalize()

    def result(self, adapter: ArchAdapter, num_layers: int, input_ids: torch.Tensor) -> ProbeResult:
        self.finalize()
        missing = [(li, p) for li in range(num_layers) for p in adapter.point_names if (li, p) not in self.stats]
        if missing:
            raise RuntimeError(f"hooks never fired at {missing[:5]}... (adapter {adapter.family} does not "
                               f"match this model's modules)")
        return ProbeResult(adapter, num_layers, *input_ids.shape, self.stats, self.config, self.attention)


@torch.inference_mode()
def probe_model(model: nn.Module, input_ids: torch.Tensor, config: ProbeConfig = ProbeConfig(),
                after_layer: Callable[[int, nn.Module, ProbeResult], None] | None = None) -> ProbeResult:
    """Run the calibration windows input_ids: [samples, seq_len] through the model layer by layer, gathering
    streaming statistics at every (layer, point); `after_layer(li, layer, result so far)` runs while each layer
    is resident (the weight-based detectors). Memory stays bounded in the number of samples."""
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    record = Recorder(config)
    partial = ProbeResult(adapter, len(layers), *input_ids.shape, record.stats, config, record.attention)
    attention = [layer.get_submodule(adapter.attention) for layer in layers] if config.attention else []

    def done(li, layer):
        if config.attention and li not in tapped:
            raise untapped_error([li], getattr(model.config, "_attn_implementation", None))
        record.finalize(li)
        if after_layer is not None:
            after_layer(li, layer, partial)

    with hooks_at_points(model, adapter, record), attention_taps(attention, record.attend) as tapped:
        walk(model, input_ids, config.batch_size, before_batch=record.running, after_layer=done,
             desc="probe: layers")
    release_workspace()
    return record.result(adapter, len(layers), input_ids)
