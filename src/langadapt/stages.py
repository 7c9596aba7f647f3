"""The one table of stages: name, order, what each reads, whether it trains, and its help text.

Everything that needs to know the pipeline reads this table: the recipe (its sections and which
stage needs which), ``run`` (order, entry points, what a stage's hash covers), the CLI (one
subcommand per stage, the help), ``plan`` (the training stages) and the run report. Nothing else
spells the list of stages. The table is data: importing it costs nothing and imports no stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str
    paper: str  # section of the paper, or "" for a stage the paper does not have
    summary: str  # one line: what the stage does
    help: str  # the stage subcommand's description
    entry: str  # "module:function", imported only when the stage runs (keeps the CLI fast)
    inputs: Callable[[Any], tuple[str, ...]]  # earlier stages whose output it reads, given the recipe
    data: tuple[str, ...] = ()  # which parts of recipe.data it reads (for its hash)
    files: str | None = None  # "module:function(recipe) -> paths": other input files its output depends on
    trains: bool = False  # trains a model and measures held-out bits per character (bpc.json, metrics.jsonl)
    distributed: bool = False  # runs on every process of `accelerate launch`; otherwise on the main one only


def _pretrain_inputs(recipe) -> tuple[str, ...]:
    return ("clean", recipe.pretrain.start_from) if recipe.pretrain else ("clean",)


def _translate_inputs(recipe) -> tuple[str, ...]:
    t = recipe.translate
    return (t.stage,) if t is not None and t.translator == "stage" and t.stage != "base" else ()


def _sft_inputs(recipe) -> tuple[str, ...]:
    start = recipe.sft.start_from if recipe.sft else "pretrain"
    return (() if start == "base" else (start,)) + (("translate",) if recipe.enabled("translate") else ())


def _eval_inputs(recipe) -> tuple[str, ...]:
    return tuple(s.name for s in TABLE if s.name in MODEL_STAGES and recipe.enabled(s.name))


TABLE: tuple[Stage, ...] = (
    Stage("clean", "3.1", "documents -> clean, unique target-language sentences (datatrove)",
          "Clean the recipe's corpus into unique target-language sentences (paper 3.1).",
          "langadapt.clean.stage:run", lambda r: (), data=("corpus",)),
    Stage("tokenizer", "4.1", "train target-language pieces, merge them, resize embeddings",
          "Train target-language pieces, merge them into the base tokenizer, resize and initialise embeddings "
          "(paper 4.1).",
          "langadapt.tokenizer.stage:run", lambda r: ("clean",), data=("heldout",)),
    Stage("align", "4.2.1", "embeddings + head only, monolingual then bilingual",
          "Train embeddings and head only, on monolingual then bilingual text (paper 4.2.1).",
          "langadapt.align.stage:run", lambda r: ("clean", "tokenizer"), data=("parallel", "heldout", "replay"),
          trains=True, distributed=True),
    Stage("pretrain", "4.2.2", "LoRA continued pre-training on target-language text",
          "Continue pre-training with LoRA on every linear layer plus embeddings/head (paper 4.2.2).",
          "langadapt.pretrain.stage:run", _pretrain_inputs, data=("heldout", "replay"), trains=True,
          distributed=True),
    Stage("translate", "3.2", "(optional) machine-translate English instructions",
          "Translate English instruction data into the target language and clean the result.",
          "langadapt.translate.stage:run", _translate_inputs, data=("instructions",)),
    Stage("sft", "3.2", "bilingual instruction tuning, loss on responses only",
          "Instruction-tune on bilingual instructions, loss on responses only (paper 3.2).",
          "langadapt.sft.stage:run", _sft_inputs, data=("instructions", "parallel", "heldout", "replay"),
          trains=True, distributed=True),
    Stage("eval", "5", "five tasks in English and the target language",
          "Evaluate every stage's model on the five tasks in both languages (paper 5).",
          "langadapt.eval.stage:run", _eval_inputs, files="langadapt.eval.stage:input_files"),
)

ORDER: tuple[str, ...] = tuple(s.name for s in TABLE)
"""The pipeline, in order. ``translate`` (optional) makes target-language instructions for ``sft``."""
TRAINING: tuple[str, ...] = tuple(s.name for s in TABLE if s.trains)
"""The stages that train a model (align, pretrain, sft)."""
MODEL_STAGES: tuple[str, ...] = ("tokenizer",) + TRAINING
"""The stages whose output is a model (``model/`` or ``adapter/``) later stages can start from."""
BY_NAME: dict[str, Stage] = {s.name: s for s in TABLE}


def get(name: str) -> Stage:
    return BY_NAME[name]


def models_before(stage: str, *, base: bool = True) -> tuple[str, ...]:
    """The models a stage may start from or use: ('base',) and the model stages before ``stage`` in the
    pipeline (all of them for a stage after the last)."""
    upto = ORDER.index(stage) if stage in ORDER else len(ORDER)
    return (("base",) if base else ()) + tuple(s for s in MODEL_STAGES if ORDER.index(s) < upto)
