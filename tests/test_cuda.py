"""The CUDA path: the tiny-model pipeline on a GPU gives the CPU's results (skipped without a GPU; this
machine and CI have none, so these tests have not run here: see the README)."""
import json

import pytest
import torch

from planting import save_tiny, windows
from smooth_then_quant.cli import main
from smooth_then_quant.detect import AnalysisConfig, analyze_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = ["calibration.samples=8", "calibration.seq_len=64", "evaluation.seq_len=64", "evaluation.max_windows=3",
         "evaluation.evidence_samples=4", "smoothing.migrate.search_samples=2", "smoothing.migrate.target.group_size=32"]


def _run(tmp_path, folder, device, stream="true"):
    recipe = tmp_path / f"{device}.yaml"
    recipe.write_text(f"model: {folder}\nsmoothing: {{enabled: true}}\noutput_dir: {tmp_path / device}\n"
                      "quantization: {enabled: true, schemes: {W4A8-static: {weights: {bits: 4, group_size: 32}, "
                      "activations: {granularity: per_tensor}}}}\n"
                      "export: {model: true, quantized: {scheme: W4A8-static, state: smoothed}}\n")
    args = [str(recipe), "-q", "--set", f"load.device={device}", "--set", f"load.stream={stream}", "--set",
            "overwrite=true"] + [a for kv in SMALL for a in ("--set", kv)]
    assert main(args) == 0
    return json.loads((tmp_path / device / "report.json").read_text())


@pytest.mark.parametrize("stream", ["true", "false"])  # layers streamed to the GPU, or the model held there whole
def test_the_pipeline_on_cuda_matches_cpu(tmp_path, stream):
    save_tiny(tmp_path / "m", "llama")
    cpu, gpu = _run(tmp_path, tmp_path / "m", "cpu", stream), _run(tmp_path, tmp_path / "m", "cuda", stream)
    assert [r["kind"] for r in cpu["smoothing"]["plan"]["summary"]] == \
        [r["kind"] for r in gpu["smoothing"]["plan"]["summary"]]
    for a, b in zip(cpu["quantization"]["rows"], gpu["quantization"]["rows"]):
        assert (a["scheme"], a["state"]) == (b["scheme"], b["state"])
        assert b["ppl"]["offline"] == pytest.approx(a["ppl"]["offline"], rel=2e-2)  # GPU kernels round differently
    assert (tmp_path / "cuda" / "quantized" / "model.safetensors").is_file()


def test_the_streamed_analysis_on_cuda_matches_cpu(tmp_path):
    save_tiny(tmp_path / "m", "qwen2")
    ids = windows(4, 32, trigger_at=0)
    cpu = analyze_checkpoint(tmp_path / "m", ids, AnalysisConfig()).to_dict()
    gpu = analyze_checkpoint(tmp_path / "m", ids, AnalysisConfig(), device="cuda").to_dict()
    assert cpu["massive_families"] == gpu["massive_families"] and cpu["otc"] == gpu["otc"]
