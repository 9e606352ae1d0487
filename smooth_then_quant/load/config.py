"""The load stage's configs: how the model is loaded (`load:`) and which calibration windows it sees
(`calibration:`)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..errors import SmoothQuantError
from ..schema import Config
from .data import WindowFormat, check_source


def data_source(v: str, hub_ids: bool = False) -> str:
    """A pydantic validator: the data source exists (a missing file fails at validation, not after loading)."""
    try:
        check_source(v, hub_ids)
    except SmoothQuantError as e:
        raise ValueError(str(e)) from None
    return v


def check_device(v: str) -> str:
    """A device this machine has: cpu, cuda / cuda:N (with CUDA), mps (with Metal). Raises ValueError."""
    try:
        d = torch.device(v)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError("not a device; use cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"CUDA is not available here (torch {torch.__version__}, no GPU or a CPU build); "
                             "use device cpu, or a CUDA build of torch on a machine with a GPU")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise ValueError(f"this machine has {n} CUDA device{'s' if n != 1 else ''} (cuda:0..cuda:{n - 1})")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("mps (Apple Metal) is not available here; use device cpu")
    elif d.type != "cpu":
        raise ValueError(f"{d.type} cannot run the model here; use cpu, cuda, cuda:N or mps")
    return v


class LoadConfig(Config):
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"  # cpu | cuda | cuda:N | mps: where the model (or its working layer) computes
    trust_remote_code: bool = False
    revision: str | None = None
    stream: bool = True  # read one decoder layer at a time when a step needs it (false: load the model whole)

    _device = field_validator("device")(classmethod(lambda cls, v: check_device(v)))


class ResourcesConfig(Config):
    """`resources:` where a streamed run puts what does not stay in memory."""
    # scratch for a dequantized GGUF, the layers a step changed (GPTQ) and spilled hidden states; a subfolder is
    # made there and removed when the run ends, however it ends. None: inside the run's partial output folder
    offload_dir: str | None = None
    max_memory: str | None = None  # hidden states kept in RAM between layers (e.g. 4GB); None: 1/4 of what is free
    # under torchrun (more than one process): the torch.distributed backend. auto: gloo on CPU, nccl on CUDA
    distributed: Literal["auto", "gloo", "nccl"] = "auto"

    @field_validator("offload_dir")
    @classmethod
    def _existing(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            path = Path(v).expanduser()
        except RuntimeError:  # ~user with no such user
            raise ValueError("its ~ names no user's home folder here; write the path out") from None
        try:
            ok = path.is_dir()
        except (OSError, ValueError):  # a name too long for the file system
            ok = False
        if not ok:
            raise ValueError("not an existing folder; create it first (the run makes and removes its own subfolder)")
        return str(path)

    @field_validator("max_memory")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            size_bytes(v)
        return v


def size_bytes(size: str) -> int:
    """'5GB' / '500MB' / '2GiB' -> bytes (transformers' own parser, as save_pretrained(max_shard_size=...)).
    Raises ValueError."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        n = convert_file_size_to_int(size)
    except (ValueError, TypeError, OverflowError):
        raise ValueError("not a size; write it like 5GB, 500MB or 2GiB") from None
    if n < 1:
        raise ValueError("must be at least one byte")
    return n


MAX_CALIBRATION_TOKENS = 1 << 26  # 67M tokens: 30x a 128 x 2048 GPTQ calibration set; hidden states in the TB range


class CalibrationConfig(Config):
    data: str = "offline"  # offline | wikitext2 | c4 | path to .txt/.jsonl | a Hub dataset id (owner/name)
    split: str = Field("train", min_length=1, max_length=200)  # a Hub dataset's split
    text_column: str | None = Field(None, min_length=1, max_length=200)  # default: text, else messages (chat)
    samples: int = Field(32, ge=1, le=100_000, description="every window runs through every layer; 100,000 is past any calibration set in use")
    seq_len: int = Field(512, ge=2, le=1_048_576, description="2^20 tokens is past any model's context")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="torch's generator takes a 64-bit seed")
    batch_size: int = Field(4, ge=1, le=4096, description="windows per forward")  # windows per forward of the probe, the α search and the A8 ranges
    format: WindowFormat = "auto"  # auto (BOS when the tokenizer adds one) | text | chat: load/data.py

    _source = field_validator("data")(classmethod(lambda cls, v: data_source(v, hub_ids=True)))

    @model_validator(mode="after")
    def _tokens(self):
        if self.samples * self.seq_len > MAX_CALIBRATION_TOKENS:
            raise ValueError(f"calibration.samples × calibration.seq_len = {self.samples * self.seq_len:,} tokens; at most "
                             f"{MAX_CALIBRATION_TOKENS:,} (every token's hidden state is kept between layers): lower one")
        return self
