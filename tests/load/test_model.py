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


def test_a_streamed_load_refuses_a_bad_dtype_or_device_like_a_whole_one(tmp_path):
    # regression: the streamed path (then open_streamed) raised a bare ValueError / KeyError for these
    from planting import save_tiny
    from smooth_then_quant.arch import is_streamed

    save_tiny(tmp_path / "m", "llama")
    assert is_streamed(load_model(str(tmp_path / "m"), stream=True).model)
    with pytest.raises(SmoothQuantError, match="device 'zzz': not a device"):
        load_model(str(tmp_path / "m"), device="zzz", stream=True)
    with pytest.raises(SmoothQuantError, match="dtype 'int3' is not supported"):
        load_model(str(tmp_path / "m"), dtype="int3", stream=True)


def test_the_gguf_default_streams_from_a_tensor_by_tensor_dequantization_equal_to_transformers(tmp_path):
    """The GGUF file is dequantized one tensor at a time into safetensors (never a whole float model), with
    transformers' own name mapping and tensor fixes: every tensor equals from_pretrained(gguf_file=...)'s."""
    from smooth_then_quant.arch import is_streamed, source_of

    whole = load_model("default").model
    loaded = load_model("default", stream=True, offload_dir=str(tmp_path))
    assert is_streamed(loaded.model) and "dequantized tensor by tensor" in loaded.provenance["weights"]
    src = source_of(loaded.model)
    assert src.ckpt.folder.is_relative_to(tmp_path)
    for name, t in whole.state_dict().items():
        key = src.ckpt.key(name) if name != "lm_head.weight" else src.ckpt.key("model.embed_tokens.weight")
        assert torch.equal(src.ckpt.tensor(key, torch.float32), t), name
    loaded.scratch.cleanup()
    assert list(tmp_path.iterdir()) == []  # the scratch folder is gone


def test_a_tilde_path_of_no_user_and_a_revision_of_a_local_model_are_one_line_errors():
    # regressions (fuzzed recipes): model '~0' raised RuntimeError from pathlib; load.revision on a local
    # model was silently ignored
    with pytest.raises(SmoothQuantError, match="names no user's home folder"):
        resolve_source("~0")
    with pytest.raises(SmoothQuantError, match="load.revision 'v1' selects a commit of a Hub repo"):
        load_model("default", revision="v1")
