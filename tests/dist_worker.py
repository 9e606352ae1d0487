"""Run by tests/test_distributed.py, in one process or under torchrun: every statistic the data-parallel engine
reduces, measured on the tiny planted model in `argv[1]`, written by rank 0 to `argv[2]`. Not a test module.

    python tests/dist_worker.py MODEL_DIR OUT.pt [fail-rank-1]
"""
import sys

import torch
from transformers import AutoModelForCausalLM

from planting import windows
from smooth_then_quant import dist
from smooth_then_quant.arch import adapter_for
from smooth_then_quant.evaluate.nll import window_nll
from smooth_then_quant.probe import ProbeConfig, probe_model
from smooth_then_quant.quantize import gptq as gptq_mod
from smooth_then_quant.quantize.fake import calibrate_ranges
from smooth_then_quant.quantize.gptq import GPTQWeights, gptq_
from smooth_then_quant.smooth.interventions.migrate import collect_absmax


def measure(folder: str) -> dict:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = windows(samples=7, seq_len=24, trigger_at=5)  # 7 windows: ranks get unequal shares (4 + 3 batches of 1)
    out = {}
    probe = probe_model(model, ids, ProbeConfig(batch_size=1, top_k=6))
    out["probe"] = {f"{k[0]}.{k[1]}": {
        "mean": s.mean, "std": s.std, "mean_ex": s.mean_ex, "std_ex": s.std_ex, "absmax": s.absmax,
        "count": s.count, "median_abs": s.median_abs, "top": s.top, "massive": [tuple(vars(r).values()) for r in s.massive],
        "calls": s.calls} for k, s in probe.stats.items()}
    out["attention"] = {li: {"mean_share": a.mean_share, "entropy": a.entropy, "score_max": a.score_max,
                             "score_max_at": a.score_max_at, "top": [t[1:] for t in a.top], "windows": a.windows,
                             "sinks": [(r.sample, r.head, r.key, r.token_id) for r in a.sinks]}
                        for li, a in probe.attention.items()}
    adapter = adapter_for(model)
    out["absmax"] = {f"{k[0]}.{k[1]}": v for k, v in collect_absmax(model, adapter, ids, {"y2", "y6"}, 2).items()}
    out["ranges"] = {k: torch.stack(v) for k, v in calibrate_ranges(model, ids, batch_size=1, progress=False).items()}
    out["nll"] = window_nll(model, ids, batch_size=2, progress=False)
    hessians = {}
    solve = gptq_mod._gptq_solve_

    def recording(w, h, cfg):  # the owner of each group records the H it solves with
        hessians[len(hessians) + 1000 * dist.rank()] = h.clone()
        return solve(w, h, cfg)
    gptq_mod._gptq_solve_ = recording
    try:
        rep = gptq_(model, ids, GPTQWeights(bits=4, group_size=32), batch_size=1)
    finally:
        gptq_mod._gptq_solve_ = solve
    out["hessians"] = sorted(((float(h.trace()), h) for part in dist.gather(hessians) for h in part.values()),
                             key=lambda t: t[0])
    out["losses"] = [m["loss"] for m in rep["modules"]]
    out["weights"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    out["world_size"] = dist.world_size()
    return out


if __name__ == "__main__":
    dist.init("cpu")
    result = measure(sys.argv[1])
    if dist.is_main():
        torch.save(result, sys.argv[2])
    dist.shutdown()
