"""GPTQModel (the GPTQ backend of issue 4) installs by scripts/setup.sh, quantizes on CPU, and
keeps our runtime smoothing active while it collects its calibration statistics."""
import os

import torch

from planting import save_tiny

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # GPTQModel stops on 2-core machines without it


def test_runtime_removal_is_active_during_gptq_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # its tokenizer helper writes under HF_HOME
    import gptqmodel  # scripts/setup.sh installs it: missing is a failure, not a skip
    import smooth_then_quant.smooth.runtime as rt
    from smooth_then_quant.smooth import MassiveRemoval, attach_runtime_

    save_tiny(tmp_path / "m", "llama")  # planted TMA at y6 of layer 1, triggered by "\n" (id 10)
    seen = []
    real = rt.remove_massive

    def recording(y, op):
        out = real(y, op)
        seen.append((float(y.abs().max()), float(out.abs().max())))
        return out
    monkeypatch.setattr(rt, "remove_massive", recording)
    qmodel = gptqmodel.GPTQModel.load(str(tmp_path / "m"), gptqmodel.QuantizeConfig(bits=4, group_size=32,
                                                                                   desc_act=False), device="cpu")
    attach_runtime_(qmodel.model, [MassiveRemoval(1, "y6", (5,), "mean")])
    ids = torch.randint(11, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 10
    qmodel.quantize([{"input_ids": r[None], "attention_mask": torch.ones(1, 32, dtype=torch.long)} for r in ids],
                    batch_size=1)
    assert seen, "the runtime hook never ran during GPTQ calibration"
    assert max(b for b, _ in seen) > 1000 and max(a for _, a in seen) < 100  # it saw the TMA and removed it
