"""The export stage's config (`export:`): which checkpoints to write, and where to push them."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..load.config import size_bytes
from ..schema import Config
from .formats import format_names


class QuantizedExportConfig(Config):
    """Write one cell of the table as a quantized checkpoint (output_dir/quantized)."""
    scheme: str = "W4A16"  # a name under quantization.schemes
    state: Literal["baseline", "paper", "smoothed"] = "smoothed"
    format: str = "gptq"  # a registered format: gptq | compressed-tensors (which also carries A8: vLLM int8)

    @field_validator("format")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in format_names():
            raise ValueError(f"unknown format; registered formats: {', '.join(format_names())}")
        return v


class ExportConfig(Config):
    model: bool = True  # write the smoothed float checkpoint to output_dir/model
    quantized: QuantizedExportConfig | None = None  # None: no quantized checkpoint
    push_to_hub: str | None = None  # a Hub repo id (user/name); token from HF_TOKEN or `hf auth login`
    private: bool = True  # a new Hub repo is private unless this is false
    max_shard_size: str = "5GB"  # safetensors shards of at most this size (and an index), as save_pretrained
    # the model card's license (a Hub license id, e.g. apache-2.0, llama3.2); default: the source model card's
    license: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.\-]{0,63}$")

    @field_validator("max_shard_size")
    @classmethod
    def _size(cls, v: str) -> str:
        size_bytes(v)
        return v

    @field_validator("push_to_hub")
    @classmethod
    def _repo_id(cls, v: str | None) -> str | None:
        if v is not None and v.count("/") != 1:
            raise ValueError("must be a Hub repo id 'user/name'")
        return v
