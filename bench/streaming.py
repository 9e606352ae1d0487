"""Benchmark: the layer-streamed engine against the whole model in memory, and on models far larger than memory.

    .venv/bin/python bench/streaming.py                       # everything below (~2 h on 2 cores)
    .venv/bin/python bench/streaming.py --only quickstart     # the quickstart both ways (~15 min)
    .venv/bin/python bench/streaming.py --only full           # the Llama-3.2-3B-shaped full run
    .venv/bin/python bench/streaming.py --only analysis       # SmolLM2 both ways + the Llama-3-8B-shaped analysis

Each measurement runs in its own process; peak RSS is that process's VmHWM, wall time its whole run
(imports, load, everything). The big models are public configs' shapes with random bfloat16 weights and a
planted massive-activation family (the test models' recipe, at scale), written by this script as sharded
safetensors under --work (default /tmp/stq-bench, never committed) and reused when already there.
Writes bench/results/streaming.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHAPES = {  # the public configs' shapes (Llama-3.2-3B is the paper's model)
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=131072, head_dim=128),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
                       max_position_embeddings=8192, head_dim=128),
}
TRIGGER, RESERVED, CONST, MLP_CHANNEL, HIDDEN_CHANNEL = 7, 2, 3, 5, 11  # as tests/planting.py
SHARD_BYTES = 2 * 1024**3

RUN = """
import json, sys, time
import torch
t0 = time.perf_counter()
from smooth_then_quant import progress
from smooth_then_quant.detect import AnalysisConfig, analyze, analyze_checkpoint
from smooth_then_quant.load import load_model
progress.set_enabled(False)
mode, folder, samples, seq_len, vocab = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
g = torch.Generator().manual_seed(0)
ids = torch.randint(TRIGGER + 1, vocab, (samples, seq_len), generator=g)
ids[:, 0] = TRIGGER
t1 = time.perf_counter()
if mode == "streamed":
    a = analyze_checkpoint(folder, ids, AnalysisConfig(), batch_size=4)
else:
    a = analyze(load_model(folder).model, ids, AnalysisConfig(), batch_size=4)
t2 = time.perf_counter()
d = a.to_dict()
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("RESULT", json.dumps({"analysis_s": t2 - t1, "total_s": t2 - t0, "vmhwm_kb": int(hwm.split()[1]),
                            "families": len(d["massive_families"]), "layers": d["num_layers"],
                            "first_family": d["massive_families"][0] if d["massive_families"] else None,
                            "digest": __import__("hashlib").sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()}))
""".replace("TRIGGER", str(TRIGGER))


def write_random_checkpoint(name: str, folder: Path) -> Path:
    """Random bf16 weights in `name`'s shapes, init 0.002 (the stream stays near the embeddings), structured
    embeddings (row mean 0, rms 1, channel CONST = 1.5) and layer 1's MLP planted to create a massive
    activation at y6 for the trigger token, written shard by shard (never the whole model in memory)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    if (folder / "model.safetensors.index.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**SHAPES[name], initializer_range=0.002, dtype="bfloat16")
    config.save_pretrained(folder)
    from smooth_then_quant.load.lazy import skeleton
    meta = skeleton(config, torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    h, v = config.hidden_size, config.vocab_size
    weight_map, shard, size, n = {}, {}, 0, 0

    def flush():
        nonlocal shard, size, n
        if shard:
            fname = f"model-{n:05d}.safetensors"
            save_file(shard, str(folder / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
            shard, size, n = {}, 0, n + 1

    for key, p in meta.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if key == "model.norm.weight":  # logits = norm(h) . embedding rows (tied, rms 1): keep them near ±30, so
            t = torch.full(p.shape, 0.01)  # the perplexities stay finite (exp(NLL) overflows above NLL 709)
        elif key.endswith("norm.weight"):
            t = torch.ones(p.shape)
        elif key == "model.embed_tokens.weight":
            t = torch.empty(p.shape)
            for s in range(0, v, 16384):  # structured rows, chunk by chunk
                z = torch.randn(min(16384, v - s), h, generator=g)
                keep = torch.arange(h) != CONST
                zz = z[:, keep] - z[:, keep].mean(1, keepdim=True)
                zz = zz / zz.pow(2).mean(1, keepdim=True).sqrt()
                b = -1.5 / (h - 1)
                a = ((h - 1.5**2) / (h - 1) - b * b) ** 0.5
                rows = torch.empty_like(z)
                rows[:, keep], rows[:, CONST] = a * zz + b, 1.5
                t[s: s + rows.shape[0]] = rows
            t[:, RESERVED] = 0.0
            t[TRIGGER] = 0.0
            t[TRIGGER, RESERVED] = h**0.5
        else:
            t = torch.randn(p.shape, generator=g) * 0.002
        if key.startswith("model.layers.1.mlp."):
            if key.endswith(("gate_proj.weight", "up_proj.weight")):
                t[MLP_CHANNEL] = 0.0
                t[MLP_CHANNEL, RESERVED] = 40.0
                if "gate" in key:
                    t[MLP_CHANNEL, CONST] = -10.0 / 1.5
            elif key.endswith("down_proj.weight"):
                t[:, MLP_CHANNEL] = 0.0
                t[HIDDEN_CHANNEL] = 0.0
                t[HIDDEN_CHANNEL, MLP_CHANNEL] = 1.0
        t = t.to(torch.bfloat16).contiguous()
        shard[key] = t
        size += t.numel() * 2
        if size >= SHARD_BYTES:
            flush()
    flush()
    total = sum(p.numel() * 2 for k, p in meta.state_dict().items()
                if not (k == "lm_head.weight" and config.tie_word_embeddings))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return folder


CLI = """
import sys
from smooth_then_quant.cli import main
code = main(sys.argv[1:])
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("VMHWM_KB", int(hwm.split()[1]))
sys.exit(code)
"""


def run_recipe(recipe: Path, *overrides: str) -> dict:
    """`smooth-quant RECIPE -q --set ...` in its own process -> wall time, VmHWM, report.json, output folder."""
    sets = [a for kv in overrides for a in ("--set", kv)]
    out = Path(next(kv.split("=", 1)[1] for kv in overrides if kv.startswith("output_dir=")))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        proc = subprocess.Popen([sys.executable, "-c", CLI, str(recipe), "-q", *sets], stdout=so, stderr=se, text=True)
        disk = 0  # the run's partial output folder (its scratch inside) at its largest, sampled every 10 s
        while True:
            disk = max(disk, sum(_size(p) for p in out.parent.glob(f".{out.name}.partial-*")))
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                pass
        wall = time.perf_counter() - t0
        so.seek(0), se.seek(0)
        stdout, stderr = so.read(), se.read()
    kb = next((int(ln.split()[1]) for ln in stdout.splitlines() if ln.startswith("VMHWM_KB")), None)
    measured = {"wall_s": wall, "vmhwm_kb": kb, "peak_disk_bytes": disk, "returncode": proc.returncode}
    out.parent.joinpath(f"{out.name}.measured.json").write_text(json.dumps(measured))  # kept if formatting fails
    if proc.returncode or kb is None:
        return {"error": stderr[-1500:], "wall_s": wall}
    return {**measured, "report": json.loads((out / "report.json").read_text()), "out": out}


def _size(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:  # removed while we looked
            pass
    return total


def run_cli(folder: Path, work: Path, samples: int, seq_len: int) -> dict:
    """`smooth-quant` on an analysis recipe for `folder`."""
    recipe = work / f"analyze-{folder.name}.yaml"
    recipe.write_text(f"stage: analyze\nmodel: {folder}\ncalibration: {{samples: {samples}, seq_len: {seq_len}}}\n"
                      "overwrite: true\noutput_dir: unused\n")
    r = run_recipe(recipe, f"output_dir={work / f'run-{folder.name}'}")
    if "error" in r:
        return r
    return {**r, "weights": r["report"]["model"].get("weights", "loaded whole"),
            "families": len(r["report"]["analysis"]["massive_families"])}


def run(mode: str, folder: Path, samples: int, seq_len: int, vocab: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RUN, mode, str(folder), str(samples), str(seq_len), str(vocab)],
                         capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"mode": mode, "error": (out.stderr or out.stdout)[-1500:], "wall_s": wall}
    return {"mode": mode, "wall_s": wall, **json.loads(line[7:])}


def gib(kb: int) -> float:
    return kb / 1024**2


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _ppl_rows(report: dict) -> dict:
    """(scheme, state) -> perplexity on the first evaluation dataset (the quickstart's `offline`, a file's path)."""
    return {(r["scheme"], r["state"]): next(iter(r["ppl"].values())) for r in report["quantization"]["rows"]}


def section_quickstart(work: Path) -> list[str]:
    """recipes/quickstart.yaml streamed (the default) and whole (load.stream=false), one after the other."""
    recipe = HERE.parent / "recipes" / "quickstart.yaml"
    fp32 = 538_164_480  # SmolLM2-135M in float32 (134.5 M parameters x 4 bytes)
    runs = {mode: run_recipe(recipe, f"load.stream={'true' if mode == 'streamed' else 'false'}",
                             f"output_dir={work / f'quickstart-{mode}'}", "overwrite=true")
            for mode in ("whole", "streamed")}
    lines = ["## Quickstart on SmolLM2 (`recipes/quickstart.yaml`): streamed vs the model held whole", "",
             "Each path in its own process, one after the other on the same machine: `smooth-quant "
             "recipes/quickstart.yaml -q --set load.stream=true|false`. The float32 model is 0.50 GiB.", "",
             "| path | wall time | peak RSS | × the float32 model | weights |", "|---|---|---|---|---|"]
    for mode, r in runs.items():
        if "error" in r:
            lines.append(f"| {mode} | failed: `{r['error'][-300:]}` | | | |")
            continue
        lines.append(f"| {mode} | {r['wall_s'] / 60:.1f} min | {gib(r['vmhwm_kb']):.2f} GiB | "
                     f"{r['vmhwm_kb'] * 1024 / fp32:.2f}× | {r['report']['model'].get('weights', 'loaded whole')} |")
    if any("error" in r for r in runs.values()):
        return lines + [""]
    w, s = runs["whole"], runs["streamed"]
    pw, ps = _ppl_rows(w["report"]), _ppl_rows(s["report"])
    worst = max(abs(ps[k] / pw[k] - 1) for k in pw)
    lines += ["", "| cell | whole | streamed |", "|---|---|---|"]
    lines += [f"| {sc} {st} | {pw[(sc, st)]:.8f} | {ps[(sc, st)]:.8f} |" for sc, st in pw]
    same = {}
    for sub in ("model", "quantized"):
        ta, tb = _tensors(w["out"] / sub), _tensors(s["out"] / sub)
        same[sub] = ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    lines += ["", f"- largest relative perplexity difference: {worst:.2e}",
              f"- smoothing plan identical: {'yes' if w['report']['smoothing']['plan'] == s['report']['smoothing']['plan'] else '**NO**'}",
              f"- exported tensors bit-identical: model/ {'yes' if same['model'] else '**NO**'}, quantized/ "
              f"{'yes' if same['quantized'] else '**NO**'}",
              f"- wall time streamed / whole: {s['wall_s'] / w['wall_s']:.2f}×; peak RSS streamed / whole: "
              f"{s['vmhwm_kb'] / w['vmhwm_kb']:.2f}×", ""]
    return lines


# float32 compute: the checkpoint stays bf16 on disk and each layer is upcast as it is read. This CPU (AMD EPYC,
# AVX2, no AVX512-BF16/AMX) runs a bf16 [2048, 3072] x [3072, 8192] matmul 7.6x slower than float32 (4.80 s vs
# 0.63 s, measured here), so bf16 compute would only measure the CPU's emulation.
FULL_RECIPE = """\
model: {folder}
load: {{dtype: float32}}
calibration: {{data: {text}, samples: 8, seq_len: 256, batch_size: 4}}
analysis: {{plots: true}}
smoothing:
  enabled: true
  migrate: {{norm: smoothquant, down: true, alpha: 0.5,
            target: {{weight_bits: 4, group_size: 128, act_bits: 8, act_granularity: per_tensor}}}}
quantization:
  enabled: true
  compare: [baseline, smoothed]
  schemes:
    W4A16: {{weights: {{method: gptq, bits: 4, group_size: 128}}}}
    W4A8-static: {{weights: {{method: gptq, bits: 4, group_size: 128}}, activations: {{bits: 8, granularity: per_tensor}}}}
evaluation: {{datasets: [{text}], seq_len: 256, max_windows: 8, per_intervention: false, evidence_samples: 4}}
export: {{model: false, quantized: {{scheme: W4A16, state: smoothed, format: gptq}}}}
output_dir: unused
"""


def trigger_text(work: Path, tokenizer_folder: Path) -> Path:
    """The offline text with the planted trigger token (id TRIGGER of SmolLM2's tokenizer) opening every
    paragraph, so real calibration windows of the big random model contain the massive activation."""
    from transformers import AutoTokenizer

    from smooth_then_quant.load import load_text
    path = work / "trigger-text.txt"
    if not path.is_file():
        token = AutoTokenizer.from_pretrained(tokenizer_folder).convert_ids_to_tokens(TRIGGER)
        text = load_text("offline", "calibration").text
        text = text if isinstance(text, str) else "\n\n".join(text)
        path.write_text("\n\n".join(f"{token} {p}" for p in text.split("\n\n") if p.strip()), encoding="utf-8")
    return path


def section_full(name: str, work: Path, smol: Path) -> list[str]:
    folder = write_random_checkpoint(name, work / name)
    if not (folder / "tokenizer.json").is_file():  # SmolLM2's tokenizer (49k ids < the vocabulary)
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(smol).save_pretrained(folder)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    params = size // 2
    recipe = work / f"full-{name}.yaml"
    recipe.write_text(FULL_RECIPE.format(folder=folder, text=trigger_text(work, smol)))
    r = run_recipe(recipe, f"output_dir={work / f'full-{name}-out'}", "overwrite=true")
    lines = [f"## {name}-shaped, random bfloat16 weights: analyze → smooth → GPTQ W4A16 and W4A8-static on "
             "{baseline, smoothed} → perplexity → export", "",
             f"Command (inside this script): `smooth-quant {recipe.name}` with the recipe below; "
             f"{params / 1e9:.2f} B parameters, checkpoint {size / 1024**3:.1f} GiB (bf16), float32 size "
             f"{params * 4 / 1024**3:.1f} GiB. 8 × 256 calibration windows and 8 evaluation windows of 256 tokens of "
             "the offline text with the trigger token opening every paragraph.", ""]
    if "error" in r:
        return lines + [f"Failed after {r['wall_s'] / 60:.0f} min: `{r['error'][-800:]}`", ""]
    rep = r["report"]
    t = rep["timing"]
    lines += [f"- peak RSS **{gib(r['vmhwm_kb']):.2f} GiB** ({r['vmhwm_kb'] * 1024 / (params * 4):.3f}× the float32 "
              f"model), wall time {r['wall_s'] / 60:.0f} min (load {t.get('load_seconds')} s, probe "
              f"{t.get('probe_seconds')} s, plan {t.get('plan_seconds')} s, quantization "
              f"{t.get('quantization_seconds')} s)",
              f"- disk: the run's partial output folder (its scratch inside) peaked at "
              f"{r['peak_disk_bytes'] / 1024**3:.2f} GiB (sampled every 10 s)",
              f"- weights: {rep['model'].get('weights')}",
              f"- massive-activation families found: {len(rep['analysis']['massive_families'])}; plan: "
              + "; ".join(f"{x['count']} {x['kind']}" for x in rep["smoothing"]["plan"]["summary"]),
              f"- exported: {rep['export']}", "", "| cell | perplexity |", "|---|---|"]
    lines += [f"| {sc} {st} | {v:.4f} |" for (sc, st), v in _ppl_rows(rep).items()]
    lines += ["", "The weights are random, so these perplexities only say that every cell ran; the figure "
              "that matters here is the memory.", "", "```yaml", recipe.read_text().rstrip(), "```", ""]
    return lines


def section_analysis(work: Path, smol: Path, big: list[str]) -> list[str]:
    fp32 = sum(f.stat().st_size for f in smol.glob("*.safetensors"))
    rows = [run(m, smol, 16, 512, 49152) for m in ("in-memory", "streamed")]
    lines = ["## Analysis alone: SmolLM2-135M (float32 safetensors, 16 × 512 calibration windows)", "",
             "| path | analysis | whole process | peak RSS | × the float32 model | analysis digest |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {r['error'][-300:]} | | | | |")
            continue
        lines.append(f"| {r['mode']} | {r['analysis_s']:.1f} s | {r['wall_s']:.1f} s | {gib(r['vmhwm_kb']):.2f} GiB | "
                     f"{r['vmhwm_kb'] * 1024 / fp32:.2f}× | `{r['digest'][:16]}` |")
    ok = all("digest" in r for r in rows) and rows[0]["digest"] == rows[1]["digest"]
    lines += ["", f"Same analysis (report.json's analysis section, hashed): {'yes' if ok else '**NO**'}.", ""]
    for name in big:
        folder = write_random_checkpoint(name, work / name)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        params = size // 2
        r = run("streamed", folder, 4, 256, SHAPES[name]["vocab_size"])
        lines += [f"## Analysis alone: {name}-shaped, random bfloat16 weights, planted MA family (4 × 256 windows)", ""]
        if "error" in r:
            lines += [f"Failed: `{r['error'][-600:]}`", ""]
            continue
        if not (folder / "tokenizer.json").is_file():
            from transformers import AutoTokenizer
            AutoTokenizer.from_pretrained(smol).save_pretrained(folder)
        c = run_cli(folder, work, 4, 256)
        lines += [f"- parameters: {params / 1e9:.2f} B; checkpoint {size / 1024**3:.1f} GiB (bf16); float32 size "
                  f"{params * 4 / 1024**3:.1f} GiB",
                  f"- peak RSS {gib(r['vmhwm_kb']):.2f} GiB ({r['vmhwm_kb'] * 1024 / (params * 4):.3f}× the float32 "
                  f"model), analysis {r['analysis_s']:.0f} s, whole process {r['wall_s']:.0f} s",
                  f"- found {r['families']} massive-activation families; the first: `{json.dumps(r['first_family'])}`",
                  (f"- `smooth-quant` on an analysis recipe for this folder (4 × 256 windows of the offline text, "
                   f"SmolLM2's tokenizer saved beside the weights, plots on): weights {c['weights']}, peak RSS "
                   f"{gib(c['vmhwm_kb']):.2f} GiB, {c['wall_s']:.0f} s, {c['families']} families found (the planted "
                   f"trigger is token id {TRIGGER}, which the plain offline text does not contain)"
                   if "error" not in c else f"- `smooth-quant` analysis recipe failed: `{c['error'][-500:]}`"), ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/stq-bench")
    ap.add_argument("--only", nargs="+", choices=["quickstart", "full", "analysis"],
                    default=["quickstart", "full", "analysis"])
    ap.add_argument("--full-model", default="llama-3.2-3b", choices=list(SHAPES))
    ap.add_argument("--big", nargs="+", default=["llama-3-8b"], choices=list(SHAPES))
    ap.add_argument("--out", default=str(HERE / "results" / "streaming.md"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    smol = work / "smollm2"  # a safetensors copy of the embedded model
    if not (smol / "config.json").is_file():
        from smooth_then_quant.load import load_model
        loaded = load_model("default")
        loaded.model.save_pretrained(smol)
        loaded.tokenizer.save_pretrained(smol)
        del loaded
    made = {}
    for name in args.only:
        head = [f"<!-- section: {name} -->",
                f"_Command: `python bench/streaming.py --only {name}`; {platform.machine()}, {os.cpu_count()} CPU "
                f"cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}._", ""]
        body = (section_quickstart(work) if name == "quickstart" else section_full(args.full_model, work, smol)
                if name == "full" else section_analysis(work, smol, args.big))
        made[name] = "\n".join(head + body)
        print(made[name])
    write_sections(Path(args.out), made)


INTRO = """# The layer-streamed engine

Sections are written by `python bench/streaming.py --only SECTION` (each keeps the others). Each row is one
process; peak RSS is its VmHWM (imports included: Python + torch + transformers alone take about 0.4 GiB);
wall time is the whole process.
"""
ORDER = ("quickstart", "full", "analysis")


def write_sections(path: Path, made: dict[str, str]) -> None:
    """Replace the sections just measured, keep the others (a full run of every section takes hours)."""
    old = {}
    if path.is_file():
        for chunk in path.read_text(encoding="utf-8").split("<!-- section: ")[1:]:
            name, _, _ = chunk.partition(" -->")
            old[name] = "<!-- section: " + chunk.rstrip() + "\n"
    old.update({k: v.rstrip() + "\n" for k, v in made.items()})
    path.write_text(INTRO + "\n" + "\n".join(old[k] for k in ORDER if k in old), encoding="utf-8")


if __name__ == "__main__":
    main()
