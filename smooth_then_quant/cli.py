"""Command line: smooth-quant RECIPE.yaml|PRESET [--set KEY=VALUE ...] [--dry-run] [-v | -q]; --list-presets; --version"""
from __future__ import annotations

import argparse
import functools
import logging
import sys

import tqdm
import transformers

from . import dist, progress
from .errors import SmoothQuantError
from .output import Interrupted, handle_signals, hold
from .pipeline import dry_run, run
from .recipe import dump_recipe, load_recipe, preset_summary, presets, resolve_recipe
from .version import __version__


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smooth-quant",
        description="Find and remove the activation outliers that ruin low-bit quantization, then quantize and "
                    "report perplexity. Start with a preset: smooth-quant quickstart (offline, on the embedded "
                    "SmolLM2); smooth-quant --list-presets shows them all.")
    p.add_argument("recipe", nargs="?", help="a YAML recipe file, or a preset's name (smooth-quant --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key by dotted path, e.g. --set calibration.samples=8 (repeatable)")
    p.add_argument("--stage", choices=["analyze", "smooth", "full"],
                   help="stop after the analysis, after smoothing (and its export), or run everything "
                        "(same as --set stage=...)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe and the stages it would run, without loading any weights")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.list_presets:
        print("\n".join(f"{name:<18} {preset_summary(path)}" for name, path in presets().items()))
        print("\nRun one: smooth-quant NAME [--set key=value ...]; see its file: smooth-quant NAME --dry-run")
        return 0
    if args.recipe is None:
        ap.error("give a recipe file or a preset name (smooth-quant --list-presets)")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    if dist.env_rank() != 0:  # under torchrun, logs and bars come from rank 0 only
        level, args.quiet = logging.ERROR, True
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:
        # -q means no bars at all: ours, and those libraries draw with plain tqdm (transformers' GGUF loading)
        progress.set_enabled(False)
        if not isinstance(tqdm.tqdm.__dict__.get("__init__"), functools.partialmethod):  # once per process: each
            tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)  # wrap nests a call
        transformers.utils.logging.disable_progress_bar()
    with handle_signals():  # SIGINT, SIGTERM, SIGHUP, SIGQUIT: clean up, then say truly what is on disk
        try:
            overrides = args.overrides + ([f"stage={args.stage}"] if args.stage else [])
            recipe = load_recipe(args.recipe, overrides)
            if args.dry_run:
                lines = dry_run(recipe, resolve_recipe(args.recipe))
                if dist.env_rank() == 0:  # under torchrun, once
                    print(dump_recipe(recipe) + "\n# stages\n" + "\n".join(lines))
                return 0
            summary = run(recipe, source=resolve_recipe(args.recipe))
        except SmoothQuantError as e:
            line = " ".join(str(e).split("\n"))  # one paragraph, always
            dist.report_failure(line)  # under torchrun: for rank 0 to say which rank failed and why
            if dist.env_rank() == 0:
                print("smooth-quant: error: " + line, file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:  # Interrupted, or a KeyboardInterrupt from a thread's SIGINT
            what = e.name if isinstance(e, Interrupted) else "SIGINT"
            detail = getattr(e, "detail", None) or "nothing was written to output_dir"
            if dist.launched() and dist.env_rank() == 0 and dist.failure():  # torchrun stopped us: a peer failed
                print("smooth-quant: error: " + dist.stopped_message(), file=sys.stderr)
                return 2
            if dist.env_rank() == 0:
                print(f"smooth-quant: interrupted ({what}); {detail}.", file=sys.stderr)
            return 130
        finally:
            dist.shutdown()
        if dist.env_rank() != 0:
            return 0
        with hold() as late:
            if not args.quiet:
                print(render_summary(summary))
            elif summary.get("kept_beside"):
                print(f"smooth-quant: {summary['kept_beside']} was filled by something else during the run; it was "
                      f"left as it was and the outputs are in {summary['output_dir']}.", file=sys.stderr)
        if late:
            print(f"smooth-quant: interrupted ({Interrupted(late[0]).name}) after the run had completed: the outputs "
                  f"are in {summary['output_dir']}.", file=sys.stderr)
            return 130
    return 0


def render_summary(s: dict) -> str:
    out = s["output_dir"]
    lines = [f"done. Outputs in {out}/", f"  report            {s['report']} (and report.json)"]
    if s.get("kept_beside"):
        lines.insert(0, f"output_dir {s['kept_beside']} was filled by something else during the run: it was left as "
                        "it was, and the outputs were kept beside it.")
    if s.get("plots"):
        lines.append(f"  plots             {len(s['plots'])} PNG files in {out}/")
    if s.get("model"):
        lines.append(f"  smoothed model    {s['model']} (safetensors, model card README.md)")
    if s.get("quantized"):
        fmt = "GPTQ" if s.get("quantized_format", "gptq") == "gptq" else s["quantized_format"]
        lines.append(f"  quantized model   {s['quantized']} ({fmt} format, model card README.md)")
    if s.get("hub"):
        lines.append(f"  pushed to         {s['hub']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
