"""Data-parallel runs on torch.distributed (gloo, 2 CPU processes started by torchrun): every reduced statistic
equals the single-process value, the same plan and table come out, only rank 0 writes, and a failing or killed
rank ends the job with rank 0's one-line error and no output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from planting import save_tiny

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SMALL = ["calibration.samples=6", "calibration.seq_len=48", "calibration.batch_size=1", "evaluation.seq_len=48",
         "evaluation.max_windows=5", "evaluation.batch_size=1", "evaluation.evidence_samples=3",
         "smoothing.migrate.search_samples=2", "smoothing.migrate.target.group_size=32", "analysis.plots=false",
         "quantization.batch_size=1", "quantization.schemes={W4A16: {weights: {bits: 4, group_size: 32}}, "
         "W4A8-static: {weights: {bits: 4, group_size: 32}, activations: {granularity: per_tensor}}}",
         "export.quantized={scheme: W4A8-static, state: smoothed}"]


def _launch(cmd, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=TESTS)


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(((a - b).abs() / b.abs().clamp(min=1e-30)).max()) if a.numel() else 0.0


def test_every_reduced_statistic_equals_the_single_process_value(tmp_path):
    from dist_worker import measure

    save_tiny(tmp_path / "m", "llama", init=0.05)
    one = measure(str(tmp_path / "m"))
    proc = _launch([*TORCHRUN, str(TESTS / "dist_worker.py"), str(tmp_path / "m"), str(tmp_path / "two.pt")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for key, a in one["probe"].items():
        b = two["probe"][key]
        for f in ("mean", "std", "mean_ex", "std_ex", "absmax"):
            assert _rel(b[f], a[f]) <= 1e-6, (key, f)
        for f in ("count", "calls", "median_abs", "top", "massive"):  # pooled medians, merged top-k and records: exact
            assert b[f] == a[f], (key, f)
    assert any(one["probe"][k]["massive"] for k in one["probe"])  # the planted massive activation was seen
    assert one["attention"].keys() == two["attention"].keys() == set(range(4))  # x6/x7, every layer
    for li, a in one["attention"].items():
        b = two["attention"][li]
        for f in ("mean_share", "entropy", "score_max"):
            assert _rel(b[f], a[f]) <= 1e-6, (li, f)
        for f in ("score_max_at", "top", "windows", "sinks"):  # positions and records: exact
            assert b[f] == a[f], (li, f)
    for what in ("absmax", "ranges"):
        assert one[what].keys() == two[what].keys() and all(_rel(two[what][k], one[what][k]) <= 1e-6 for k in one[what])
    assert _rel(two["nll"], one["nll"]) <= 1e-6 and two["nll"].shape == one["nll"].shape == (7,)
    assert len(one["hessians"]) == len(two["hessians"]) == 16  # 4 groups x 4 layers, solved by their owner ranks
    assert all(_rel(b[1], a[1]) <= 1e-6 for a, b in zip(one["hessians"], two["hessians"]))
    assert all(abs(b - a) <= 1e-6 * abs(a) for a, b in zip(one["losses"], two["losses"]))
    assert all(torch.equal(one["weights"][k], two["weights"][k]) for k in one["weights"])  # GPTQ: same H, same Q


def _recipe(tmp_path, out) -> Path:
    recipe = tmp_path / f"{out.name}.yaml"
    recipe.write_text(f"model: {tmp_path / 'm'}\nsmoothing: {{enabled: true}}\nquantization: {{enabled: true}}\n"
                      f"output_dir: {out}\n")
    return recipe


def _args(recipe):
    return [str(recipe), "-q", *[a for kv in SMALL for a in ("--set", kv)]]


def _tensors(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_torchrun_gives_the_single_process_report_and_only_rank_0_writes(tmp_path):
    save_tiny(tmp_path / "m", "llama", init=0.05)
    one, two = tmp_path / "one", tmp_path / "two"
    proc = _launch([sys.executable, "-m", "smooth_then_quant", *_args(_recipe(tmp_path, one))])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _launch([*TORCHRUN, "-m", "smooth_then_quant", *_args(_recipe(tmp_path, two))])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert (a["distributed"]["world_size"], b["distributed"]["world_size"], b["distributed"]["backend"]) == (1, 2, "gloo")
    ranks = b["distributed"]["ranks"]
    assert len(ranks) == 2 and all(r["peak_rss_bytes"] > 0 and r["traffic_bytes"]["quantize"] > 0 for r in ranks)
    assert set(b["timing"]["stage_seconds"]) >= {"load", "analyze", "smooth", "quantize"}
    assert b["smoothing"]["plan"] == a["smoothing"]["plan"] and a["smoothing"]["plan"]["interventions"]
    assert b["analysis"] == a["analysis"]
    assert len(a["quantization"]["rows"]) == 9
    for x, y in zip(a["quantization"]["rows"], b["quantization"]["rows"]):
        assert (x["scheme"], x["state"]) == (y["scheme"], y["state"])
        assert y["ppl"]["offline"] == pytest.approx(x["ppl"]["offline"], rel=1e-4), (x["scheme"], x["state"])
    for sub in ("model", "quantized"):
        ta, tb = _tensors(one / sub), _tensors(two / sub)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), sub
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "one", "one.yaml", "two", "two.yaml"]  # nothing else


@pytest.mark.parametrize("how,rank", [("raise", 1), ("kill", 1), ("raise", 0)])
def test_a_failing_or_killed_rank_ends_the_job_with_one_error_and_no_output(tmp_path, how, rank):
    save_tiny(tmp_path / "m", "llama", init=0.05)
    out = tmp_path / "out"
    proc = _launch([*TORCHRUN, str(TESTS / "dist_fault.py"), how, str(rank), *_args(_recipe(tmp_path, out))],
                   timeout=300)  # no hung process: the job ends well inside the timeout
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("smooth-quant:")]
    assert len(errors) == 1, proc.stderr[-3000:]  # one line, from rank 0
    if rank == 0:
        assert errors[0] == "smooth-quant: error: planted failure in the quantization stage"
    elif how == "raise":
        assert "another process of this torchrun job failed (rank 1: planted failure in the quantization stage)" in errors[0]
    else:
        assert "another process of this torchrun job failed (killed or crashed without a message" in errors[0]
    assert "nothing was written" in errors[0] or rank == 0
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m", "out.yaml"]  # no partial output
