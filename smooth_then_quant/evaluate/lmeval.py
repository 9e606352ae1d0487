"""Zero-shot accuracy with lm-eval (the `[eval]` extra), beside perplexity: `evaluation.tasks: [arc_easy, ...]`.

Each cell of the table (FP, and every scheme x smoothing state) is scored by lm-eval's own harness through its
`HFLM` wrapper on the model object as the table measured it (fake-quantized weights and activation quantizers
included), so the accuracy and the perplexity of a cell are of the same model.

Offline, the task `offline_cloze` (tasks/offline_cloze.yaml, lm-eval's YAML task format) finishes sentences of
the offline text's evaluation part; its jsonl is built here, deterministically, from that text. Any other name
is an lm-eval task (arc_easy, hellaswag, piqa, winogrande, lambada_openai: they need the Hub's datasets) or a
task in `evaluation.task_path` (a folder of lm-eval YAML tasks).
"""
from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import yaml
from torch import nn

from ..errors import SmoothQuantError
from ..extras import require
from ..load import load_text

log = logging.getLogger(__name__)
TASK_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_TASKS = {p.stem: p for p in TASK_DIR.glob("*.yaml")}  # tasks shipped with the package (offline)
METRICS = ("acc", "acc_norm", "exact_match", "word_perplexity")  # the first one a task reports is its headline


def build_offline_cloze(path: Path, items: int = 400, seed: int = 0) -> Path:
    """The offline cloze items: sentences of 10-40 words from the offline evaluation text; the context is the
    first 60 % of the words, the choices the true ending and three endings of other sentences of the same
    length (so length alone gives nothing away). -> `path` (jsonl: context, choices, label)."""
    text = load_text("offline", "evaluation").text
    sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    sentences = [s for s in dict.fromkeys(sentences) if 10 <= len(s.split()) <= 40 and s[0].isupper()]
    rng = random.Random(seed)
    rng.shuffle(sentences)
    by_len: dict[int, list[str]] = {}
    split = [(s.split()[: int(0.6 * len(s.split()))], s.split()[int(0.6 * len(s.split())):]) for s in sentences]
    for _, end in split:
        by_len.setdefault(len(end), []).append(" ".join(end))
    rows = []
    for head, end in split:
        pool = [e for e in by_len[len(end)] if e != " ".join(end)]
        if len(pool) < 3:
            continue
        choices = [" ".join(end), *rng.sample(pool, 3)]
        rng.shuffle(choices)
        rows.append({"context": " ".join(head), "choices": choices, "label": choices.index(" ".join(end))})
        if len(rows) == items:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def task_configs(tasks: list[str], scratch: Path) -> list:
    """lm-eval's task list: the shipped local tasks as their YAML config with data_files pointing at the jsonl
    built in `scratch`, every other name as it is."""
    out = []
    for name in tasks:
        if name in LOCAL_TASKS:
            cfg = yaml.safe_load(LOCAL_TASKS[name].read_text(encoding="utf-8"))
            data = build_offline_cloze(scratch / f"{name}.jsonl")
            cfg["dataset_kwargs"] = {"data_files": {"test": str(data)}}
            out.append(cfg)
        else:
            out.append(name)
    return out


def check_tasks(tasks: list[str], task_path: str | None = None) -> None:
    """Every task name is a shipped local task, an lm-eval task, or one in task_path (read from lm-eval's task
    index: no dataset is fetched)."""
    unknown = [t for t in tasks if t not in LOCAL_TASKS]
    if not unknown:
        return
    require("lm_eval", "eval", "evaluation.tasks (lm-eval accuracy)")
    from lm_eval.tasks import TaskManager

    known = set(TaskManager(include_path=task_path).all_tasks)
    missing = [t for t in unknown if t not in known]
    if missing:
        raise SmoothQuantError(f"evaluation.tasks: {', '.join(missing)} is not an lm-eval task (nor one of "
                               f"{', '.join(LOCAL_TASKS)}, nor in task_path); `lm-eval ls tasks` lists them.")


def accuracies(model: nn.Module, tokenizer, tasks: list[str], scratch: Path, *, limit: int | None = None,
               num_fewshot: int | None = None, batch_size: int = 8, task_path: str | None = None) -> dict[str, float]:
    """{task: headline metric (acc where the task has it)} for `model` as it is, through lm-eval's HFLM."""
    lm_eval = require("lm_eval", "eval", "evaluation.tasks (lm-eval accuracy)")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if getattr(tokenizer, "eos_token_id", None) is None:  # HFLM ends every request with it
        raise SmoothQuantError(f"lm-eval needs the tokenizer's end-of-text token, and "
                               f"{getattr(tokenizer, 'name_or_path', '') or 'this tokenizer'} has none (eos_token).")
    device = next(model.parameters()).device
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    manager = TaskManager(include_path=task_path) if task_path else TaskManager()
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=task_configs(tasks, scratch), task_manager=manager,
                                          limit=limit, num_fewshot=num_fewshot, log_samples=False,
                                          bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                          torch_random_seed=0, fewshot_random_seed=0)
    except (KeyError, ValueError, FileNotFoundError, ConnectionError, OSError) as e:
        raise SmoothQuantError(f"lm-eval could not run tasks {', '.join(tasks)}: {type(e).__name__}: "
                               f"{' '.join(str(e).split())[:240]}. Offline, use the local task offline_cloze (the "
                               "standard tasks need the Hub's datasets).") from None
    out = {}
    for task in tasks:
        got = results["results"].get(task, {})
        metric = next((f"{m},none" for m in METRICS if f"{m},none" in got), None)
        if metric is None:
            raise SmoothQuantError(f"lm-eval task {task} reported none of {', '.join(METRICS)} (got "
                                   f"{', '.join(got) or 'nothing'}).")
        out[task] = float(got[metric])
    return out
