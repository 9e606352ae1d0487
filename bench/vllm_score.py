"""Score token windows with vLLM: runs INSIDE .venv-vllm (scripts/setup_vllm.sh), imports nothing of ours.

    .venv-vllm/bin/python bench/vllm_score.py FOLDER WINDOWS.json DTYPE  -> one JSON line on stdout

WINDOWS.json is a list of token-id lists (the evaluation windows). Perplexity is exp of the mean
next-token NLL of each window, averaged over windows, as smooth_then_quant.evaluate.nll.perplexity
computes it: the logprob vLLM reports for every prompt token after the first (prompt_logprobs=0).
"""
import json
import math
import os
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; the default (4) is more than a 2 x 512 run needs


def main(folder: str, windows_json: str, dtype: str) -> dict:
    from vllm import LLM, SamplingParams
    windows = json.load(open(windows_json))
    t0 = time.perf_counter()
    llm = LLM(model=folder, dtype=dtype, max_model_len=len(windows[0]) + 16, enforce_eager=True,
              seed=0, max_num_seqs=4)
    load_s = time.perf_counter() - t0
    method = llm.llm_engine.model_config.quantization
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": w} for w in windows], params, use_tqdm=False)
    score_s = time.perf_counter() - t0
    nlls = []
    for w, o in zip(windows, outs):
        lp = o.prompt_logprobs  # [None, {token: Logprob}, ...]; the prompt token is always included
        nlls.append(-sum(lp[i][w[i]].logprob for i in range(1, len(w))) / (len(w) - 1))
    return {"ppl": math.exp(sum(nlls) / len(nlls)), "window_nll": nlls, "quantization": method,
            "load_s": load_s, "score_s": score_s}


if __name__ == "__main__":
    print("VLLM_RESULT " + json.dumps(main(*sys.argv[1:4])), flush=True)
