"""Every broken model folder, tokenizer, safetensors file, quantization config, GGUF file and data file is a one-line
error naming the file and what is wrong (the library's own message under -v), never a traceback, and never a silently
different model (missing or reshaped tensors, NaN/inf weights, pickled weights): both load paths, streamed and whole."""
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from planting import save_tiny
from smooth_then_quant import SmoothQuantError, progress
from smooth_then_quant.detect import AnalysisConfig, analyze
from smooth_then_quant.load import load_model
from smooth_then_quant.load.model import default_model_path

cases: dict = {}
GG: dict = {}


def case(name):
    def deco(f):
        cases[name] = f
        return f
    return deco


def _config(d, f):
    c = json.loads((d / "config.json").read_text())
    f(c)
    (d / "config.json").write_text(json.dumps(c))


def _weights(d, f):
    from safetensors.torch import load_file, save_file
    t = load_file(d / "model.safetensors")
    f(t)
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})


def _bytes(d, f):
    p = d / "model.safetensors"
    b = p.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    p.write_bytes(f(b, n))


def _offsets(b, n):
    h = json.loads(b[8:8 + n])
    k = next(k for k in h if k != "__metadata__")
    h[k]["data_offsets"][1] += 10**9
    hb = json.dumps(h).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    return struct.pack("<Q", len(hb)) + hb + b[8 + n:]


def _key(t, part):
    return next(k for k in t if part in k)


def _set(t, part, index, value):
    t[_key(t, part)][index] = value


case("no model_type")(lambda d: _config(d, lambda c: c.pop("model_type")))
case("config a list")(lambda d: (d / "config.json").write_text("[1, 2]"))
case("config garbage")(lambda d: (d / "config.json").write_bytes(b"\xff\x00garbage"))
case("heads not dividing")(lambda d: _config(d, lambda c: c.update(num_attention_heads=3)))
case("kv heads not dividing")(lambda d: _config(d, lambda c: c.update(num_key_value_heads=3)))
case("unknown model_type")(lambda d: _config(d, lambda c: c.update(model_type="zzz")))
case("unsupported family")(lambda d: _config(d, lambda c: c.update(model_type="bert")))
case("safetensors truncated")(lambda d: _bytes(d, lambda b, n: b[: len(b) // 2]))
case("safetensors empty")(lambda d: (d / "model.safetensors").write_bytes(b""))
case("safetensors garbage header")(lambda d: _bytes(d, lambda b, n: b[:8] + b"{" * n + b[8 + n:]))
case("safetensors huge header length")(lambda d: _bytes(d, lambda b, n: struct.pack("<Q", 2**60) + b[8:]))
case("safetensors unknown dtype")(lambda d: _bytes(d, lambda b, n: b[:8] + b[8:8 + n].replace(b'"F32"', b'"Q99"')
                                                   + b[8 + n:]))
case("safetensors offsets out of range")(lambda d: _bytes(d, _offsets))
case("config/weights shape mismatch")(lambda d: _config(d, lambda c: c.update(intermediate_size=c["intermediate_size"] * 2)))
case("missing tensor")(lambda d: _weights(d, lambda t: t.pop(_key(t, "mlp.down_proj"))))
case("NaN weight")(lambda d: _weights(d, lambda t: _set(t, "mlp.down_proj", (0, 0), float("nan"))))
case("inf in the embedding")(lambda d: _weights(d, lambda t: _set(t, "embed", (1, 1), float("inf"))))
case("no weights")(lambda d: (d / "model.safetensors").unlink())
case("tokenizer missing")(lambda d: [f.unlink() for f in [*d.glob("tokenizer*"), *d.glob("special_tokens*")]])
case("tokenizer corrupt")(lambda d: (d / "tokenizer.json").write_text("{corrupt"))
case("GPTQ config without group_size")(lambda d: _config(d, lambda c: c.update(
    quantization_config={"quant_method": "gptq", "bits": 4})))
case("unknown quant_method")(lambda d: _config(d, lambda c: c.update(quantization_config={"quant_method": "zzq"})))
case("quantization_config not a mapping")(lambda d: _config(d, lambda c: c.update(quantization_config=[1])))


@case("pickled weights only")
def _pickle(d):
    from safetensors.torch import load_file
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()


@case("index names a missing shard")
def _index(d):
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00002.safetensors"}}))
    (d / "model.safetensors").rename(d / "model-00001.safetensors")


def gguf(name, mutate):
    def make(d):
        g = d / "m.gguf"
        g.write_bytes(mutate(default_model_path().read_bytes()))
        return g
    GG[name] = make


gguf("gguf empty", lambda b: b"")
gguf("gguf bad magic", lambda b: b"XXXX" + b[4:])
gguf("gguf truncated header", lambda b: b[:100])
gguf("gguf truncated data", lambda b: b[: len(b) // 2])
gguf("gguf unknown version", lambda b: b[:4] + struct.pack("<I", 99) + b[8:])
gguf("gguf huge tensor count", lambda b: b[:8] + struct.pack("<Q", 2**62) + b[16:])
gguf("gguf huge metadata count", lambda b: b[:16] + struct.pack("<Q", 2**62) + b[24:])
gguf("gguf garbage", lambda b: b[:24] + bytes(range(256)) * 40 + b[24 + 256 * 40:])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "base"
    save_tiny(folder, "llama")
    return folder


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("name", list(cases) + list(GG))
def test_a_broken_model_is_a_one_line_error(base, tmp_path, name, stream):
    if name.startswith("gguf") and not stream:
        pytest.skip("one load path is enough for the GGUF reader's failures (both read the header the same way)")
    d = tmp_path / "m"
    shutil.copytree(base, d)
    made = (cases.get(name) or GG.get(name))(d)
    target = made if isinstance(made, Path) else d
    progress.set_enabled(False)
    with pytest.raises(SmoothQuantError) as e:
        lm = load_model(str(target), stream=stream)
        analyze(lm.model, torch.randint(0, 60, (2, 16)), AnalysisConfig(), batch_size=2)  # streamed: reads the layers
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 700, msg
    assert str(tmp_path) in msg or name == "unsupported family", msg  # names the file or folder


def test_the_cli_reports_a_broken_model_in_one_line(base, tmp_path, capsys):
    from smooth_then_quant.cli import main
    d = tmp_path / "m"
    shutil.copytree(base, d)
    cases["NaN weight"](d)
    (tmp_path / "r.yaml").write_text(f"model: {d}\ncalibration: {{samples: 2, seq_len: 16}}\nstage: analyze\n"
                                     f"output_dir: {tmp_path / 'out'}\n")
    capsys.readouterr()
    assert main([str(tmp_path / "r.yaml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or inf" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,needle", [
    (b"\xff\xfe\x00binary", "not UTF-8 text"), (b"text\x00with NUL" * 10, "binary file"),
])
def test_a_data_file_that_is_not_text(tmp_path, content, needle):
    from smooth_then_quant.load import load_text
    f = tmp_path / "cal.txt"
    f.write_bytes(content)
    with pytest.raises(SmoothQuantError, match=needle):
        load_text(str(f), "calibration")
    j = tmp_path / "cal.jsonl"
    j.write_text('{"text": ' * 5000)
    with pytest.raises(SmoothQuantError, match="JSON object"):
        load_text(str(j), "calibration")


def test_gpt2_windows_longer_than_its_positions(tmp_path, capsys):
    from smooth_then_quant.cli import main
    save_tiny(tmp_path / "g", "gpt2")
    n = json.loads((tmp_path / "g" / "config.json").read_text())["n_positions"]
    (tmp_path / "r.yaml").write_text(f"model: {tmp_path / 'g'}\ncalibration: {{samples: 2, seq_len: {n + 1}}}\n"
                                     f"stage: analyze\noutput_dir: {tmp_path / 'out'}\n")
    capsys.readouterr()
    assert main([str(tmp_path / "r.yaml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"learned positions; set calibration.seq_len to at most {n}" in err and err.count("\n") == 1, err
