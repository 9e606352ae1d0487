"""The load stage's configs: how the model is loaded (`load:`) and which calibration windows it sees
(`calibration:`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..errors import SmoothQuantError
from ..schema import Config
from .data import check_source


def data_source(v: str) -> str:
    """A pydantic validator: the data source exists (a missing file fails at validation, not after loading)."""
    try:
        check_source(v)
    except SmoothQuantError as e:
        raise ValueError(str(e)) from None
    return v


class LoadConfig(Config):
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    revision: str | None = None


class CalibrationConfig(Config):
    data: str = "offline"  # offline | wikitext2 | c4 | path to .txt/.jsonl
    samples: int = Field(32, ge=1)
    seq_len: int = Field(512, ge=2)
    seed: int = 0
    batch_size: int = Field(4, ge=1)  # windows per forward of the probe, the α search and the A8 ranges

    _source = field_validator("data")(classmethod(lambda cls, v: data_source(v)))
