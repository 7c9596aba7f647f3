"""The `langadapt` command: one subcommand per stage plus plan, run, report, chat, serve, export.

Handlers import their heavy dependencies (torch, transformers) lazily, so `--help` is instant.
User mistakes (LangadaptError) are printed as one line and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from langadapt import __version__, stages
from langadapt.errors import LangadaptError



def _epilog() -> str:
    lines = ["The pipeline, in order (each stage is also its own subcommand):"]
    for s in stages.TABLE:
        paper = f"(paper {s.paper})" if s.paper else ""
        lines.append(f"  {s.name:<10} {s.summary:<62} {paper}".rstrip())
    return "\n".join(lines + ["", "Start with:  langadapt run configs/demo.yaml     (outputs in runs/demo/)", ""])


def _console():
    from rich.console import Console

    return Console(stderr=False, soft_wrap=True)


def _load(args) -> object:
    from langadapt.recipe import load_recipe

    recipe = load_recipe(args.recipe, check_files=not getattr(args, "no_check_files", False))
    if getattr(args, "output_dir", None):
        recipe.output_dir = args.output_dir
    return recipe


def cmd_plan(args) -> int:
    from langadapt.models import load_config
    from langadapt.plan import make_plan, print_plan

    recipe = _load(args)
    config = load_config(recipe.base_model, recipe.resolve(recipe.base_config) if recipe.base_config else None)
    vocab, plans = make_plan(recipe, config)
    if args.gpus is not None and args.gpus < 1:
        raise LangadaptError(f"--gpus must be at least 1, not {args.gpus}")
    print_plan(recipe, config, vocab, plans, console=_console(), gpus=args.gpus, gpu_memory=args.gpu_memory)
    return 0


def cmd_run(args) -> int:
    from langadapt.run import run_recipe

    recipe = _load(args)
    console = _console()
    run_recipe(recipe, console=console, force=args.force)
    console.print(f"[bold green]done[/bold green]: outputs in {recipe.run_dir}/")
    return 0


def cmd_check(args) -> int:
    from langadapt.check import run_checks
    from langadapt.run import stage_status

    recipe = _load(args)
    console = _console()
    checked, seconds = run_checks(recipe, log=lambda line: console.print(f"[green]✓[/green] {line}", highlight=False))
    plan = {"done": "runs again (an earlier stage runs)", "stale": "runs again (settings or inputs changed)",
            "partial": "interrupted: resumes from its checkpoint if its settings are unchanged", "new": "runs (not run yet)"}
    cascade = False
    for stage in recipe.enabled_stages():
        status = stage_status(recipe, stage)
        cascade = cascade or status != "done"
        console.print(f"  {stage}: {plan[status] if cascade else 'up to date (skipped)'}", highlight=False)
    console.print(f"[bold green]ready[/bold green]: {len(checked)} inputs read and checked, and the base model's "
                  f"vocabulary against the recipe ({seconds:.1f} s)")
    return 0


def make_stage_command(stage: str) -> Callable:
    def handler(args) -> int:
        from langadapt.run import preflight, run_stage, stage_status

        if args.resume and args.restart:
            raise LangadaptError("--resume and --restart contradict each other; give one (resuming is the default)")
        recipe = _load(args)
        console = _console()
        if not recipe.enabled(stage):
            raise LangadaptError(f"stage '{stage}' is not enabled in {args.recipe}; add a '{stage}:' section")
        preflight(recipe)
        if stage_status(recipe, stage) == "done" and not args.force:
            console.print(f"[green]✓[/green] {stage}: up to date with the recipe (use --force to run it again)")
            return 0
        run_stage(recipe, stage, resume=not args.restart, console=console)
        console.print(f"[bold green]done[/bold green]: {recipe.layout.stage_dir(stage)}/")
        return 0

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="langadapt",
        description="Teach an English-centric causal language model a new language, following the recipe of "
        "'Extending LLMs to New Languages: A Case Study of Llama and Persian Adaptation'.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"langadapt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def recipe_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("recipe", metavar="RECIPE", help="the run's YAML recipe (for example configs/demo.yaml)")
        p.add_argument("--output-dir", help="override the recipe's output_dir (default: runs)")

    p = sub.add_parser("plan", help="parameter counts and training memory per stage, from the config alone",
                       description="Print, for each training stage (align, pretrain, sft), the total and trainable "
                       "parameter counts, the trainable percentage and an estimate of training memory (weights, "
                       "gradients, AdamW states), computed on the meta device: no weights are loaded and no network "
                       "is used when the recipe names a base_config or a local model. The recipe's data files need "
                       "not exist yet. With --gpus N, also the memory per GPU (weights, gradients, optimizer, "
                       "buffers, activations of one micro-batch) under each shipped accelerate configuration: "
                       "DDP, DeepSpeed ZeRO-2, FSDP.")
    recipe_arg(p)
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="also print the memory per GPU with N GPUs under DDP, ZeRO-2 and FSDP")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GIB",
                   help="with --gpus: mark which configurations fit a GPU of this many GiB (e.g. 80)")
    p.set_defaults(func=cmd_plan, no_check_files=True)

    p = sub.add_parser("run", help="run every enabled stage in order, skipping finished ones",
                       description="Run the recipe's enabled stages in order into <output_dir>/<name>/<stage>/. "
                       "Finished stages whose settings and inputs are unchanged are skipped; a changed stage reruns "
                       "with every stage after it; an interrupted stage resumes from its last checkpoint.")
    recipe_arg(p)
    p.add_argument("--force", action="store_true", help="rerun every stage even if it is up to date")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="read every input of the recipe's enabled stages now (first records), before a run",
                       description="Check a recipe before running it: besides the recipe itself, read the first records "
                       "of every input the enabled stages use (corpora, parallel text with its alignment checks, "
                       "instructions, held-out text), every evaluation suite and task file, and resolve Hugging Face hub "
                       "ids (one quick call each; with HF_HUB_OFFLINE=1 the local cache). `run` does the same before its "
                       "first stage. Prints one line per input and what `run` would do with each stage; any problem is "
                       "one line naming the file and line, exit status 2.")
    recipe_arg(p)
    p.set_defaults(func=cmd_check)

    for spec in stages.TABLE:
        stage = spec.name
        p = sub.add_parser(stage, help=spec.help.split(" (paper")[0].rstrip("."), description=spec.help +
                           " Reads the outputs of the earlier stages of the same run and writes "
                           f"<output_dir>/<name>/{stage}/.")
        recipe_arg(p)
        p.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its last complete checkpoint (the default)")
        p.add_argument("--restart", action="store_true",
                       help="discard an interrupted run's checkpoints and start the stage over")
        p.add_argument("--force", action="store_true", help="run even if the stage is up to date (from the start)")
        p.set_defaults(func=make_stage_command(stage))

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


EXTRA_COMMANDS: list[Callable] = []
"""Functions that add a subparser (report, chat, serve, export), appended as those land."""


def _add_chat(sub) -> None:
    from langadapt.serve.chat import add_parser

    add_parser(sub)


def _add_serve(sub) -> None:
    from langadapt.serve.server import add_parser

    add_parser(sub)


def _add_export(sub) -> None:
    from langadapt.serve.export import add_parser

    add_parser(sub)


EXTRA_COMMANDS += [_add_chat, _add_serve, _add_export]


def cmd_report(args) -> int:
    from pathlib import Path

    from langadapt.report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise LangadaptError(f"run folder not found: {run_dir} (a run writes to <output_dir>/<name>/, e.g. runs/demo)")
    out, markdown = write_report(run_dir, Path(args.out) if args.out else None)
    console = _console()
    console.print(markdown, markup=False, highlight=False)
    console.print(f"[bold green]report[/bold green]: {out}")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="render a run's report: one self-contained HTML page and the main table",
                       description="Read a run folder (cleaning report, tokenizer fertility, bits per character, "
                       "training loss, evaluation results; any missing part is shown as 'not run') and write one "
                       "self-contained HTML page (inline CSS and SVG plots, nothing fetched from the network) with "
                       "the task table laid out like the paper's Table 5. The main table is also printed as Markdown.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder, e.g. runs/demo")
    p.add_argument("--out", help="where to write the page (default: RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)


EXTRA_COMMANDS.append(_add_report)


def _add_clean_up(sub) -> None:
    from langadapt.cleanup import add_parser

    add_parser(sub)


EXTRA_COMMANDS.append(_add_clean_up)


def _quiet_libraries() -> None:
    """Library deprecation chatter is for developers, not for users of the command."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except LangadaptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
