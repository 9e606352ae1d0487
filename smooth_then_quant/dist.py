"""Data parallelism on torch.distributed: one run across the processes `torchrun` starts (gloo on CPU, nccl on CUDA).

    torchrun --nproc-per-node 2 -m smooth_then_quant recipe.yaml

Every step that reads activations is a sum over windows, so each rank walks its share of the batches (whole batches,
chosen by batch index: batch k belongs to rank k mod world size) and the step reduces what it measured:

- sums in float64, all-reduced (`sum64`): float64 makes the result independent of the order the ranks' partial sums
  are added in, far below float32's resolution (the single-process path accumulates the same float64 sums, so world
  size 1 and N give the same numbers);
- max / min all-reduced (`amax`, `amin`): exact;
- per-window values and bounded lists gathered in window order (`gather`): exact.

A plain process (no torchrun) is world size 1 and every function here is the identity: no process group exists.
Why torch.distributed and nothing home-made: it is the engine PyTorch ships for this, launches over nodes with
torchrun, and its collectives run on the tensors' device (nccl on GPUs).
"""
from __future__ import annotations

import datetime
import os
import pickle
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from .errors import SmoothQuantError

T = TypeVar("T")
TRAFFIC: dict[str, int] = {}  # payload bytes this rank sent or received in collectives, per pipeline stage
STAGE = ["-"]  # the stage the pipeline is in (pipeline sets it), for TRAFFIC


FAILED_KEY = "smooth_then_quant/failed"  # the first failing rank's one-line error, for rank 0 to report


def _count(nbytes: int) -> None:
    TRAFFIC[STAGE[0]] = TRAFFIC.get(STAGE[0], 0) + int(nbytes)


def _via_gpu(t: torch.Tensor) -> bool:
    """nccl moves CUDA tensors only: a CPU tensor visits this rank's GPU for the collective."""
    return dist.get_backend() == "nccl" and not t.is_cuda


def _gpu(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.device("cuda", torch.cuda.current_device()))


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher setting WORLD_SIZE) with more than one."""
    return env_world_size() > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one that writes outputs, logs and draws progress bars."""
    return rank() == 0


def backend_for(device: str, choice: str = "auto") -> str:
    """gloo on CPU, nccl on CUDA (`resources.distributed` may name one)."""
    if choice != "auto":
        return choice
    return "nccl" if str(device).startswith("cuda") else "gloo"


def local_device(device: str) -> str:
    """A CUDA run puts rank r of a node on cuda:LOCAL_RANK (one GPU per process, as torchrun expects)."""
    if launched() and str(device) == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def init(device: str, choice: str = "auto", timeout_s: float = 1800) -> None:
    """Join the process group torchrun set up (its env:// rendezvous). No-op in a plain process or when joined."""
    if not launched() or dist.is_initialized():
        return
    backend = backend_for(device, choice)
    if backend == "nccl" and not torch.cuda.is_available():
        raise SmoothQuantError("resources.distributed is nccl but this machine has no CUDA; use gloo on CPU.")
    if backend == "nccl":
        torch.cuda.set_device(torch.device(local_device(device)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def backend() -> str | None:
    return dist.get_backend() if active() else None


def env_world_size() -> int:
    """The number of processes torchrun started (1 in a plain process), known before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's rank as torchrun set it (0 in a plain process), known before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def is_peer_failure(e: BaseException) -> bool:
    """A collective that failed because another rank went away (gloo: the peer closed its connection)."""
    text = str(e)
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL error"))


def stopped_message() -> str:
    """Rank 0's one line when another rank failed."""
    peer = failure()
    return ("another process of this torchrun job failed" + (f" ({peer})" if peer else
            " (killed or crashed without a message: torchrun's report names its rank)") + "; every process stopped "
            "and nothing was written to output_dir.")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mine(items: Sequence[T]) -> list[T]:
    """This rank's share of a list of batches: item k belongs to rank k mod world size (all of them at world size 1)."""
    r, n = rank(), world_size()
    return [x for k, x in enumerate(items) if k % n == r]


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    """A reduced copy of t (on t's device); nccl reduces CUDA tensors only, so a CPU tensor visits the rank's GPU."""
    if not active():
        return t
    _count(t.numel() * t.element_size())
    out = _gpu(t) if _via_gpu(t) else t.clone()
    dist.all_reduce(out, op)
    return out.to(t.device)


def sum64(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in float64 (a float32 input is widened first): -> float64, on every rank."""
    return _all_reduce(t.double(), dist.ReduceOp.SUM)


def amax(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.MAX)


def amin(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.MIN)


def gather(obj: T) -> list[T]:
    """Every rank's `obj` (picklable), in rank order, on every rank ([obj] at world size 1)."""
    if not active():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    _count(sum(len(pickle.dumps(o)) for o in out))
    return out


def interleave(parts: list[list[T]]) -> list[T]:
    """Undo `mine`: the ranks' shares of one list (gather order) back in item order."""
    out, n = [], len(parts)
    for k in range(sum(len(p) for p in parts)):
        out.append(parts[k % n][k // n])
    return out


def broadcast_(tensors: list[torch.Tensor], src: int) -> None:
    """Overwrite every rank's tensors with rank `src`'s (in place; shapes and dtypes must agree)."""
    if not active():
        return
    for t in tensors:
        _count(t.numel() * t.element_size())
        g = _gpu(t) if _via_gpu(t) else t
        dist.broadcast(g, src)
        if g is not t:
            t.copy_(g)


def reduce_sum64(t: torch.Tensor, dst: int) -> torch.Tensor:
    """Sum over ranks in float64, delivered to rank `dst` (the others get their own partial back, unused)."""
    t = t.double()
    if not active():
        return t
    _count(t.numel() * t.element_size())
    g = _gpu(t) if _via_gpu(t) else t
    dist.reduce(g, dst, dist.ReduceOp.SUM)
    return g.to(t.device)


def broadcast_from(tensors: list[torch.Tensor] | None, src: int) -> list[torch.Tensor]:
    """Rank `src`'s tensors on every rank (src passes them, the others None): shapes and dtypes go first as one
    small object, then each tensor, received on the device the sender's tensors are on (this rank's GPU with nccl)."""
    if not active():
        return list(tensors)
    meta = [[(tuple(t.shape), t.dtype, t.device.type) for t in tensors] if rank() == src else None]
    dist.broadcast_object_list(meta, src)
    out = []
    for i, (shape, dtype, kind) in enumerate(meta[0]):
        if rank() == src:
            t = tensors[i].contiguous()
        else:
            t = torch.empty(shape, dtype=dtype)
            t = _gpu(t) if kind == "cuda" else t
        _count(t.numel() * t.element_size())
        g = _gpu(t) if _via_gpu(t) else t
        dist.broadcast(g, src)
        out.append(g.to(t.device))
    return out


def owners(sizes: Sequence[int]) -> list[int]:
    """Which rank solves each of several jobs of the given sizes: greedy, largest first, to the least-loaded rank
    (ties to the lower rank), so the ranks' loads are balanced and every rank computes the same assignment."""
    load = [0] * world_size()
    owner = [0] * len(sizes)
    for j in sorted(range(len(sizes)), key=lambda j: (-sizes[j], j)):
        r = min(range(len(load)), key=lambda r: (load[r], r))
        owner[j] = r
        load[r] += sizes[j]
    return owner


def peak_rss() -> int | None:
    """This process's peak resident memory in bytes (VmHWM; None where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration, ValueError):
        return None


def barrier() -> None:
    if active():
        dist.barrier()


_STORE: list = []


def _store():
    """A client of the rendezvous store torchrun hosts (MASTER_ADDR:MASTER_PORT), which outlives any one rank."""
    if not _STORE:
        _STORE.append(dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                    timeout=datetime.timedelta(seconds=5)))
    return _STORE[0]


def report_failure(message: str) -> None:
    """Leave this rank's one-line error where rank 0 can read it, before the rank exits and torchrun stops the others."""
    if not launched():
        return
    try:
        if not _store().check([FAILED_KEY]):
            _store().set(FAILED_KEY, f"rank {env_rank()}: {message}")
    except Exception:  # the store is gone (torchrun already stopping): the rank's own stderr still has the line
        pass


def failure() -> str | None:
    """The first failing rank's line, if one left it (read by rank 0 when torchrun stops it)."""
    try:
        if launched() and _store().check([FAILED_KEY]):
            return _store().get(FAILED_KEY).decode(errors="replace")
    except Exception:
        pass
    return None
