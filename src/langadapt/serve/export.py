"""``langadapt export``: a run's stage output as a plain transformers model folder.

A LoRA adapter (pretrain, sft) is loaded onto its base, merged into the weights, and saved with
``save_pretrained`` together with the merged tokenizer, so the folder loads with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` alone (no langadapt,
no PEFT). A ``README.md`` model card lists the recipe, the data and the evaluation table when
the run has them, with a front matter the Hugging Face hub reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from langadapt import stages
from langadapt.errors import LangadaptError
from langadapt.layout import COMPLETE, STARTED, RunLayout, stage_artifact
from langadapt.files import atomic_path, remove_leftovers
from langadapt.serve.source import ModelRef, resolve_ref

DTYPES = ("float32", "bfloat16", "float16")
# Hub ids of the short model names langadapt accepts, for the card's base_model field.
_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
EXPORT_MARKER = "langadapt-export.json"
"""Written into every export folder: ``--force`` replaces a folder only when it holds this file."""


def _stages_with_models(run_dir: Path) -> list[str]:
    return RunLayout(run_dir).stages_with_models(stages.ORDER)


def resolve_export_source(source: str, stage: str | None) -> ModelRef:
    """The model to export: ``source`` with ``--stage``, a stage folder, or a model/adapter folder."""
    p = Path(os.path.expanduser(source))
    if stage is None and p.is_dir() and not (p / "config.json").exists() and not (p / "adapter_config.json").exists() \
            and stage_artifact(p) is None:
        stages = _stages_with_models(p)
        if stages:
            raise LangadaptError(f"{source} is a run folder: choose the stage to export with --stage "
                                 f"({', '.join(stages)})")
    if stage is None and p.is_file() and p.suffix in (".yaml", ".yml"):
        raise LangadaptError(f"{source} is a recipe: choose the stage to export with --stage (for example --stage sft)")
    return resolve_ref(source, stage)


def merge(model):
    """A PEFT model with its LoRA (and trainable-token) deltas folded into plain weights."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def export_model(source: str, *, stage: str | None = None, out: str | os.PathLike | None = None,
                 dtype: str = "float32", card: bool = True, recipe: str | os.PathLike | None = None,
                 force: bool = False, log=print) -> Path:
    """Export ``source`` (see ``resolve_export_source``) to ``out``; return the folder written."""
    import torch

    from langadapt.models import load_model, load_tokenizer, resolve_model

    if dtype not in DTYPES:
        raise LangadaptError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype})")
    ref = resolve_export_source(source, stage)
    if out is None:
        if ref.run_dir is None or ref.stage is None:
            raise LangadaptError(f"{source} is not a run's stage output: say where to write with --out DIR")
        out = ref.run_dir / "export" / ref.stage
    out = check_output_folder(out, force=force, source=ref.path)

    src = resolve_model(ref.path)
    log(f"loading {ref.path} …")
    model = load_model(src, dtype=torch.float32)  # merge in float32, cast afterwards: no rounding of the sum
    tokenizer = load_tokenizer(src)
    was_adapter = hasattr(model, "merge_and_unload")
    model = merge(model)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise LangadaptError(f"{ref.path}: the tokenizer has {len(tokenizer):,} tokens but the model only {rows:,} "
                             "embedding rows; the stage output is inconsistent")
    model = model.to(getattr(torch, dtype))
    config = model.config
    for attr in ("auto_map", "_name_or_path"):
        if hasattr(config, attr):
            setattr(config, attr, None if attr == "auto_map" else "")
    run_recipe = _find_recipe(ref, recipe)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / EXPORT_MARKER).write_text(json.dumps({"source": str(ref.path), "stage": ref.stage, "dtype": dtype},
                                                    indent=2) + "\n", encoding="utf-8")
        if card:
            (tmp / "README.md").write_text(model_card(ref, out_name=str(out), recipe=run_recipe, dtype=dtype,
                                                      merged=was_adapter, vocab=len(tokenizer),
                                                      params=sum(p.numel() for p in model.parameters())),
                                           encoding="utf-8")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"wrote {out}/ ({size / 2**20:,.1f} MiB{', LoRA merged' if was_adapter else ''})")
    return out


def _holds_runs(folder: Path) -> bool:
    """A stage folder, a run folder (stage folders with markers) or a folder of runs (``runs/``)."""
    if (folder / COMPLETE).is_file() or (folder / STARTED).is_file():
        return True
    for child in folder.iterdir():
        if child.is_dir() and ((child / COMPLETE).is_file() or (child / STARTED).is_file()):
            return True
        if child.is_dir() and any((child / st / m).is_file() for st in stages.ORDER for m in (COMPLETE, STARTED)):
            return True
    return False


def check_output_folder(out: str | os.PathLike, *, force: bool, source: str | os.PathLike) -> Path:
    """The absolute folder to export ``source`` into, refused unless writing there loses nothing.

    An existing folder is replaced only with ``force`` and only when it is an earlier export (it holds
    ``EXPORT_MARKER`` and files only); never the current folder, a run folder, a parent of either, or
    the folder the exported model lives in. Leftovers of an export killed while writing are removed.
    """
    out = Path(os.path.abspath(os.path.expanduser(str(out))))
    real = out.resolve()
    src = Path(os.path.abspath(os.path.expanduser(str(source)))).resolve()
    if real == src or real in src.parents:
        raise LangadaptError(f"--out {out} holds the model being exported ({source}); choose another folder")
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise LangadaptError(f"--out {out} is the current folder or one above it; choose a new folder, e.g. --out export/model")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise LangadaptError(f"--out {out}: {parent} is a file, not a folder")
    if out.exists():
        if out.is_symlink() or not out.is_dir():
            raise LangadaptError(f"--out {out} is a file, not a folder; choose a new folder")
        entries = list(out.iterdir())
        earlier_export = (out / EXPORT_MARKER).is_file() and all(e.is_file() and not e.is_symlink() for e in entries)
        if entries and not earlier_export:
            what = ("holds the outputs of a langadapt run" if _holds_runs(out) else
                    f"is not empty and is not an earlier langadapt export (no {EXPORT_MARKER})")
            raise LangadaptError(f"--out {out} {what}; export replaces only its own earlier exports, even with "
                                 "--force: choose a new folder")
        if not force:
            raise LangadaptError(f"{out} already exists; use --force to replace it or --out to choose another folder")
    remove_leftovers(out.parent, name=out.name, recursive=False)
    return out


def _find_recipe(ref: ModelRef, recipe: str | os.PathLike | None):
    from langadapt.recipe import load_recipe

    candidates = [Path(recipe)] if recipe else []
    if ref.recipe_path is not None:
        candidates.append(ref.recipe_path)
    if ref.run_dir is not None:
        candidates += [ref.run_dir / "recipe.yaml", ref.run_dir / "recipe.yml"]
    for c in candidates:
        if c.is_file():
            return load_recipe(c, check_files=False)
    if recipe:
        raise LangadaptError(f"{recipe}: recipe file not found")
    return None


# ---------------------------------------------------------------------------- the model card


def _front_matter(recipe, merged: bool) -> str:
    base = recipe.base_model if recipe is not None else None
    base = _HUB_IDS.get(base.lower(), base) if base else None
    lines = ["---"]
    if base and base.count("/") == 1 and not Path(base).exists():
        lines.append(f"base_model: {base}")
    langs = [recipe.language.code, "en"] if recipe is not None else ["en"]
    lines.append("language:")
    lines += [f"- {code}" for code in dict.fromkeys(langs)]
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:", "- langadapt",
              "- vocabulary-extension"]
    if merged:
        lines.append("- lora-merged")
    lines.append("---")
    return "\n".join(lines)


def _settings_line(section) -> str:
    d = section.model_dump(mode="json", exclude_defaults=True)
    d.pop("enabled", None)
    flat = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}{k}.", x)
        else:
            flat.append(f"`{prefix[:-1]}={json.dumps(v, ensure_ascii=False)}`")

    walk("", d)
    return ", ".join(flat) if flat else "defaults"


def _size(path: Path) -> str:
    if not path.exists():
        return "missing"
    n = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


def _recipe_section(recipe, upto: str | None) -> list[str]:
    out = ["## How it was made", "",
           f"Recipe `{recipe.name}`: base model `{recipe.base_model}`, target language {recipe.language.name} "
           f"(`{recipe.language.code}`), seed {recipe.seed}. Stages (settings that differ from langadapt's defaults):", "",
           "| stage | settings |", "| --- | --- |"]
    last = stages.ORDER.index(upto) if upto in stages.ORDER else len(stages.ORDER) - 1
    for st in stages.ORDER[: last + 1]:
        if recipe.enabled(st):
            out.append(f"| {st} | {_settings_line(getattr(recipe, st))} |")
    out.append("")
    rows = []
    for kind in ("corpus", "parallel", "instructions"):
        for item in getattr(recipe.data, kind):
            paths = [getattr(item, k, None) for k in ("path", "target", "english")]
            paths = [p for p in paths if p]
            sizes = ", ".join(f"`{p}` ({_size(recipe.resolve(p))})" for p in paths)
            extra = getattr(item, "language", None) or getattr(item, "type", None) or ""
            rows.append(f"| {kind} | {item.name} | {item.format} | {extra} | {sizes} |")
    if rows:
        out += ["## Data", "", "| kind | name | format | language / type | files (size on disk) |",
                "| --- | --- | --- | --- | --- |", *rows, ""]
    return out


def _marker_section(run_dir: Path) -> list[str]:
    layout = RunLayout(run_dir)
    rows = []
    for st in stages.ORDER:
        marker = layout.marker(st)
        if marker is None:
            continue
        summary = marker.get("summary") or {}
        nums = [f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:.4g}"
                for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if nums:
            rows.append(f"| {st} | {', '.join(nums)} |")
    if not rows:
        return []
    return ["## Stage summaries", "", "Numbers each stage recorded when it finished (`COMPLETE.json`).", "",
            "| stage | summary |", "| --- | --- |", *rows, ""]


def model_card(ref: ModelRef, *, out_name: str, recipe=None, dtype: str = "float32", merged: bool = True,
               vocab: int | None = None, params: int | None = None) -> str:
    """README.md text for an exported model (hub front matter, recipe, data, evaluation, usage)."""
    title = ref.name.replace("/", "-")
    lines = [_front_matter(recipe, merged), "", f"# {title}", ""]
    what = f"The `{ref.stage}` stage of the langadapt run `{ref.run_dir.name}`" if ref.run_dir and ref.stage \
        else f"The model `{ref.path}`"
    lang = recipe.language.name if recipe is not None else "a new language"
    steps = {"tokenizer": "vocabulary extension", "align": "embedding alignment", "pretrain": "LoRA continued pre-training",
             "sft": "bilingual instruction tuning"}
    if recipe is not None:
        upto = stages.ORDER.index(ref.stage) if ref.stage in stages.ORDER else len(stages.ORDER)
        done = [steps[st] for st in stages.ORDER[: upto + 1] if st in steps and recipe.enabled(st)]
    else:
        done = []
    lines.append(f"{what}, exported as a plain transformers model: a causal language model taught {lang} with "
                 "langadapt" + (f" ({', '.join(done)})" if done else "") +
                 (", its LoRA weights merged into the base" if merged else "") +
                 f". Weights in {dtype}" + (f", {params:,} parameters" if params else "") +
                 (f", a vocabulary of {vocab:,} tokens" if vocab else "") + ".")
    lines.append("")
    if recipe is not None:
        lines += _recipe_section(recipe, ref.stage)
    else:
        lines += ["The run's recipe was not available when this card was written (pass `--recipe`).", ""]
    if ref.run_dir is not None:
        lines += _marker_section(ref.run_dir)
        results = RunLayout(ref.run_dir).results()
        if results is not None:
            from langadapt.eval.results import markdown_tables, rows_table

            full = isinstance(results, dict) and results.get("tasks") and results.get("models")
            table = markdown_tables(results).split("\n") if full else rows_table(results)  # the eval stage's, or bare rows
            lines += ["## Evaluation", ""]
            lines += (table or ["`eval/results.json` exists but is not in a format this card can tabulate."]) + [""]
    lines += ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'tokenizer = AutoTokenizer.from_pretrained("{out_name}")',
              f'model = AutoModelForCausalLM.from_pretrained("{out_name}")',
              'messages = [{"role": "user", "content": "سلام! خودت را معرفی کن."}]',
              "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",",
              "                                       return_dict=True)",
              "out = model.generate(**inputs, max_new_tokens=200, do_sample=True, temperature=0.7, top_p=0.9,",
              "                     repetition_penalty=1.1, no_repeat_ngram_size=12)",
              "print(tokenizer.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))", "```", "",
              "Sampling with a repetition penalty avoids the loops the paper's appendix shows with greedy decoding.",
              ""]
    return "\n".join(lines)


def run_export(args) -> int:
    """The ``langadapt export`` command."""
    from rich.console import Console

    console = Console(stderr=True)
    out = export_model(args.source, stage=args.stage, out=args.out, dtype=args.dtype, card=not args.no_card,
                       recipe=args.recipe, force=args.force, log=lambda m: console.print(m, highlight=False))
    console.print(f"load it with: AutoModelForCausalLM.from_pretrained(\"{out}\")", highlight=False)
    return 0


def add_parser(sub) -> None:
    """Register ``langadapt export`` on the CLI's subparsers."""
    p = sub.add_parser(
        "export", help="merge a stage's LoRA into the weights and save a plain transformers model folder",
        description="Export a run's stage output (for example the sft adapter) as a plain transformers model "
        "folder: the LoRA adapter is loaded onto its base, merged into the weights, and saved with the merged "
        "tokenizer, so AutoModelForCausalLM/AutoTokenizer.from_pretrained load it without langadapt or PEFT. "
        "A README.md model card lists the recipe, data sizes and the evaluation table (when eval/results.json "
        "exists). SOURCE is a run folder or recipe with --stage, a stage folder (runs/NAME/STAGE), or a "
        "model/adapter folder with --out.",
        epilog="Example: langadapt export runs/demo --stage sft      (writes runs/demo/export/sft/)")
    p.add_argument("source", metavar="SOURCE", help="run folder (runs/NAME), recipe file, stage folder, or model/adapter folder")
    p.add_argument("--stage", help="which stage's model to export (align, pretrain, sft)")
    p.add_argument("--out", help="output folder (default: RUN/export/STAGE)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="precision of the saved weights (default float32)")
    p.add_argument("--recipe", help="the run's recipe, for the model card (found automatically when SOURCE is a recipe)")
    p.add_argument("--no-card", action="store_true", help="do not write README.md")
    p.add_argument("--force", action="store_true", help="replace the output folder if it is an earlier export "
                   "(other folders are never replaced)")
    p.set_defaults(func=run_export)
