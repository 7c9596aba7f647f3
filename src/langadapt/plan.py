"""`langadapt plan`: parameter counts and training memory per stage, from the config alone.

The model is built on the meta device (no weights, no network) and frozen by the same
component the training stages use, so the counts here are the counts training reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from langadapt.recipe import Recipe, check_against_base
from langadapt.train.freeze import ParamCounts, apply_policy, stage_policy

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class StagePlan:
    stage: str
    vocab_rows: int
    counts: ParamCounts
    precision: str
    memory: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def memory_total(self) -> int:
        return sum(self.memory.values())


@dataclass
class VocabPlan:
    base: int
    merged: int
    how: str
    base_params: int = 0  # parameters of the base model before the merge


def _precision(p: str) -> str:
    # `plan` describes the GPU run; on a CPU, 'auto' trains in fp32 (see the training core).
    return "bf16" if p == "auto" else p


def memory_estimate(total: int, trainable: int, precision: str) -> dict[str, int]:
    """Bytes for weights, gradients and AdamW states; activations are not included.

    fp32: every weight 4 bytes, gradients 4, AdamW 8 (two fp32 moments) per trainable parameter.
    bf16/fp16 (mixed precision): frozen weights held in 2 bytes, trainable weights kept in fp32
    (4 bytes), fp32 gradients (4) and AdamW moments (8) per trainable parameter.
    """
    if precision == "fp32":
        weights = 4 * total
    else:
        weights = BYTES[precision] * (total - trainable) + 4 * trainable
    return {"weights": weights, "gradients": 4 * trainable, "optimizer": 8 * trainable}


def vocab_plan(recipe: Recipe, base_vocab: int) -> VocabPlan:
    """Rows of the embedding matrix after the tokenizer stage (measured, declared or estimated)."""
    if not recipe.enabled("tokenizer"):
        return VocabPlan(base_vocab, base_vocab, "no tokenizer stage: base vocabulary")
    done = recipe.run_dir / "tokenizer" / "model" / "config.json"
    if done.is_file() and (recipe.run_dir / "tokenizer" / "COMPLETE.json").is_file():
        rows = json.loads(done.read_text(encoding="utf-8"))["vocab_size"]
        return VocabPlan(base_vocab, rows, f"measured: {done}")
    tok = recipe.tokenizer
    check_against_base(recipe, base_vocab)
    if tok.merged_vocab_size is not None:
        rows, how = tok.merged_vocab_size, "declared in tokenizer.merged_vocab_size"
    else:
        rows = base_vocab + tok.new_pieces + (1 if tok.add_pad_token else 0)
        how = f"upper bound: base + {tok.new_pieces:,} new pieces (pieces the base already has are skipped)"
    if tok.pad_to_multiple_of:
        m = tok.pad_to_multiple_of
        padded = -(-rows // m) * m
        if padded != rows:
            how += f", padded to a multiple of {m}"
        rows = padded
    return VocabPlan(base_vocab, rows, how)


def build_meta_model(config, vocab_rows: int):
    """The model on the meta device with ``vocab_rows`` embedding rows: shapes, no memory."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    cfg.vocab_size = vocab_rows
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def make_plan(recipe: Recipe, config) -> tuple[VocabPlan, list[StagePlan]]:
    """Counts and memory for every enabled training stage of ``recipe``, given the base ``config``."""
    vocab = vocab_plan(recipe, config.vocab_size)
    vocab.base_params = sum(p.numel() for p in build_meta_model(config, vocab.base).parameters())
    plans: list[StagePlan] = []
    steps: list[tuple[str, str | None, object]] = []
    if recipe.enabled("align"):
        steps.append(("align", "monolingual", recipe.align.monolingual))
        if recipe.align.bilingual.enabled and recipe.align.bilingual.train_rows != recipe.align.monolingual.train_rows:
            steps.append(("align (bilingual)", "bilingual", recipe.align.bilingual))
    if recipe.enabled("pretrain"):
        steps.append(("pretrain", None, recipe.pretrain))
    if recipe.enabled("sft"):
        steps.append(("sft", None, recipe.sft))
    for label, step, settings in steps:
        stage = label.split(" ")[0]
        rows = vocab.base if stage == "sft" and recipe.sft.start_from == "base" else vocab.merged
        embeddings, lora = stage_policy(recipe, stage, step)
        model = build_meta_model(config, rows)
        _, counts = apply_policy(model, embeddings=embeddings, lora=lora, base_vocab=vocab.base)
        precision = _precision(settings.precision)
        plans.append(StagePlan(label, rows, counts, precision, memory_estimate(counts.total, counts.trainable, precision)))
    return vocab, plans


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB"


def print_plan(recipe: Recipe, config, vocab: VocabPlan, plans: list[StagePlan], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]{recipe.name}[/bold]: {recipe.base_model} ({config.model_type}, "
                  f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                  f"{'tied' if getattr(config, 'tie_word_embeddings', False) else 'untied'} embeddings)")
    console.print(f"vocabulary: base {vocab.base:,} -> {vocab.merged:,} rows ({vocab.how})")
    if not plans:
        console.print("no training stage is enabled in this recipe")
        return
    counts = Table(title="parameters per stage")
    for col in ("stage", "all", "trainable", "percentage"):
        counts.add_column(col, justify="left" if col == "stage" else "right")
    memory = Table(title="training memory per stage (one process, no sharding)")
    for col in ("stage", "precision", "weights", "gradients", "optimizer", "total"):
        memory.add_column(col, justify="left" if col in ("stage", "precision") else "right")
    for p in plans:
        m = p.memory
        counts.add_row(p.stage, f"{p.counts.total:,}", f"{p.counts.trainable:,}", f"{p.counts.percent:.2f}%")
        memory.add_row(p.stage, p.precision, _gib(m["weights"]), _gib(m["gradients"]), _gib(m["optimizer"]), _gib(p.memory_total))
    console.print(counts)
    console.print(memory)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for p in plans:
        added = p.vocab_rows - vocab.base
        per_row = config.hidden_size * (1 if tied else 2)
        lora = p.counts.total - vocab.base_params - added * per_row
        parts = [f"{vocab.base_params:,} base model"]
        if added:
            parts.append(f"{added:,} new rows x {config.hidden_size} x {1 if tied else 2} "
                         f"({'tied embeddings' if tied else 'embeddings + untied head'}) = {added * per_row:,}")
        if lora:
            parts.append(f"{lora:,} LoRA")
        console.print(f"[bold]{p.stage}[/bold] all {p.counts.total:,} = " + " + ".join(parts))
        console.print(f"[bold]{p.stage}[/bold] trainable {p.counts.trainable:,} =")
        for what, n, how in p.counts.lines:
            console.print(f"  {what:<28} {n:>14,}  {how}")
    console.print("memory: weights + gradients + AdamW states; activations "
                  "(which grow with batch size x sequence length) are not included. ZeRO-2 divides gradients and "
                  "optimizer states by the number of GPUs; ZeRO-3/FSDP also divides the weights.")
