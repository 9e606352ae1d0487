"""GPTQModel (the GPTQ backend of issue 4) installs by scripts/setup.sh, quantizes on CPU, and
keeps our runtime smoothing active while it collects its calibration statistics."""
import os

import torch

from planting import record_removals, save_tiny

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # GPTQModel stops on 2-core machines without it


def test_runtime_removal_is_active_during_gptq_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # its tokenizer helper writes under HF_HOME
    import gptqmodel  # scripts/setup.sh installs it: missing is a failure, not a skip
    from smooth_then_quant.smooth import MassiveRemoval, attach_runtime_

    save_tiny(tmp_path / "m", "llama")  # planted TMA at y6 of layer 1, triggered by "\n" (id 10)
    seen = record_removals(monkeypatch)
    qmodel = gptqmodel.GPTQModel.load(str(tmp_path / "m"), gptqmodel.QuantizeConfig(bits=4, group_size=32,
                                                                                   desc_act=False), device="cpu")
    attach_runtime_(qmodel.model, [MassiveRemoval(1, "y6", (5,), "mean")])
    ids = torch.randint(11, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 10
    qmodel.quantize([{"input_ids": r[None], "attention_mask": torch.ones(1, 32, dtype=torch.long)} for r in ids],
                    batch_size=1)
    assert seen, "the runtime hook never ran during GPTQ calibration"
    assert max(b for b, _ in seen) > 1000 and max(a for _, a in seen) < 100  # it saw the TMA and removed it


def test_builtin_gptq_matches_gptqmodel_and_the_wrapper_keeps_smoothing(tmp_path, monkeypatch):
    """Same model, data and config: our solver lands on GPTQModel's grid points for (nearly) every
    weight of the first projections, and the model outputs agree. The gptqmodel backend wrapper
    runs our runtime removal during GPTQModel's calibration."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from smooth_then_quant.load import load_model
    from smooth_then_quant.quantize.fake import weight_view
    from smooth_then_quant.quantize.gptq import GPTQWeights, gptq_
    from smooth_then_quant.quantize.gptqmodel import gptqmodel_
    from smooth_then_quant.smooth import MassiveRemoval, attach_runtime_, clone_model

    save_tiny(tmp_path / "m", "llama", init=0.05)
    loaded = load_model(str(tmp_path / "m"))
    attach_runtime_(loaded.model, [MassiveRemoval(1, "y6", (5,), "mean")])
    ids = torch.randint(11, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 10
    cfg = GPTQWeights(bits=4, group_size=32)
    ours, theirs = clone_model(loaded.model), clone_model(loaded.model)
    gptq_(ours, ids, cfg)
    seen = record_removals(monkeypatch)
    rep = gptqmodel_(theirs, loaded.tokenizer, ids, cfg)
    assert seen and rep["backend"] == "gptqmodel"
    q0 = "model.layers.0.self_attn.q_proj"
    a, b = (weight_view(m.get_submodule(q0)) for m in (ours, theirs))
    # GPTQModel stores fp16 scales: equal up to that rounding, except where one grid step flipped
    assert ((a - b).abs() <= 0.01 * a.abs() + 1e-6).float().mean() > 0.95
    with torch.no_grad():
        la, lb, lf = (m(input_ids=ids).logits for m in (ours, theirs, loaded.model))
    assert (lf - la).norm() < 1.1 * (lf - lb).norm()  # no further from the float model than GPTQModel


def test_gptqmodel_backend_weights_export_to_the_same_checkpoint(tmp_path, monkeypatch):
    """The gptqmodel backend reads GPTQModel's integers back with their grids, so export_quantized
    writes them again and our loader returns the same model."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from smooth_then_quant.export import export_quantized
    from smooth_then_quant.load import load_model
    from smooth_then_quant.quantize.gptq import GPTQWeights
    from smooth_then_quant.quantize.gptqmodel import gptqmodel_

    save_tiny(tmp_path / "m", "llama", init=0.05, plant=False)
    loaded = load_model(str(tmp_path / "m"))
    ids = torch.randint(11, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    gptqmodel_(loaded.model, loaded.tokenizer, ids, GPTQWeights(bits=4, group_size=32))
    export_quantized(loaded.model, loaded.tokenizer, tmp_path / "q")
    back = load_model(str(tmp_path / "q")).model
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, back(input_ids=ids).logits)
