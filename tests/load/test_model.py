import json

import pytest
import torch

from planting import tiny_model
from smooth_then_quant.errors import SmoothQuantError
from smooth_then_quant.load import load_model
from smooth_then_quant.load.model import resolve_source


def test_local_folder_loads_with_dtype(tmp_path):
    tiny_model("qwen2").save_pretrained(tmp_path / "m")
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), dtype="bfloat16")
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.provenance["source"] == "folder" and loaded.provenance["model_type"] == "qwen2"
    assert loaded.provenance["config_sha256"]


def test_unsupported_architecture_fails_before_loading_weights(tmp_path):
    from transformers import OPTConfig

    folder = tmp_path / "opt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(OPTConfig(num_hidden_layers=1).to_dict()))  # no weights at all
    with pytest.raises(SmoothQuantError, match="unsupported architecture: model_type 'opt'.*llama"):
        load_model(str(folder))


def test_missing_paths_and_bad_dtype(tmp_path):
    with pytest.raises(SmoothQuantError, match="model file not found"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(SmoothQuantError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(SmoothQuantError, match="model not found"):
        resolve_source("./not/here")
    with pytest.raises(SmoothQuantError, match="dtype 'int8' is not supported"):
        load_model("default", dtype="int8")
    assert resolve_source("HuggingFaceTB/SmolLM2-135M")[0] == "hub"


def test_open_streamed_refuses_a_bad_dtype_or_device_like_load_model(tmp_path):
    # regression: open_streamed raised a bare ValueError / KeyError for these
    from planting import save_tiny
    from smooth_then_quant.load import open_streamed

    save_tiny(tmp_path / "m", "llama")
    assert open_streamed(str(tmp_path / "m")).streamed is not None
    with pytest.raises(SmoothQuantError, match="device 'zzz': not a device"):
        open_streamed(str(tmp_path / "m"), device="zzz")
    with pytest.raises(SmoothQuantError, match="dtype 'int3' is not supported"):
        open_streamed(str(tmp_path / "m"), dtype="int3")
