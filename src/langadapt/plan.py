"""`langadapt plan`: parameter counts and training memory per stage, from the config alone.

The model is built on the meta device (no weights, no network) and frozen by the same
component the training stages use, so the counts here are the counts training reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from langadapt import stages
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
    settings: object = None  # the stage's TrainSettings (micro-batch, sequence length, fast paths)
    block_params: int = 0  # parameters of one transformer block (what FSDP gathers at a time)

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
    made = recipe.layout.model("tokenizer")
    if made is not None and recipe.layout.marker("tokenizer") is not None and (made / "config.json").is_file():
        rows = json.loads((made / "config.json").read_text(encoding="utf-8"))["vocab_size"]
        return VocabPlan(base_vocab, rows, f"measured: {made / 'config.json'}")
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
    steps: list[tuple[str, str, str | None, object]] = []
    for stage in stages.TRAINING:
        if not recipe.enabled(stage):
            continue
        section = getattr(recipe, stage)
        if hasattr(section, "monolingual"):  # align: two steps, shown apart when they train other rows
            steps.append((stage, stage, "monolingual", section.monolingual))
            if section.bilingual.enabled and section.bilingual.train_rows != section.monolingual.train_rows:
                steps.append((f"{stage} (bilingual)", stage, "bilingual", section.bilingual))
        else:
            steps.append((stage, stage, None, section))
    for label, stage, step, settings in steps:
        rows = vocab.base if stage == "sft" and recipe.sft.start_from == "base" else vocab.merged
        embeddings, lora = stage_policy(recipe, stage, step)
        model = build_meta_model(config, rows)
        _, counts = apply_policy(model, embeddings=embeddings, lora=lora, base_vocab=vocab.base)
        precision = _precision(settings.precision)
        plans.append(StagePlan(label, rows, counts, precision, memory_estimate(counts.total, counts.trainable, precision),
                               settings=settings, block_params=_block_params(model)))
    return vocab, plans


def _block_params(model) -> int:
    """Parameters of the first transformer block (a module list's first item) of a meta model."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "0" and any(p.ndim >= 2 for p in module.parameters()):
            return sum(p.numel() for p in module.parameters())
    return 0


# --------------------------------------------------------------------------- memory per GPU

STRATEGIES = {
    "ddp": "DDP (multi-gpu-ddp.yaml)",
    "zero2": "ZeRO-2 (deepspeed-zero2-*.yaml)",
    "fsdp": "FSDP full shard (fsdp.yaml)",
}


def activation_estimate(config, settings, *, lora: bool, precision: str) -> dict[str, int]:
    """Bytes of activations kept for backward for one micro-batch (``batch_size x seq_len`` tokens).

    Per token and transformer block, under bf16/fp16 autocast with fp32 trainable embeddings (so an
    fp32 residual stream) and SDPA/flash attention: frozen blocks 12h + 6i + 4kv bytes, blocks with
    LoRA on every linear layer 24h + 8i + 4kv (h hidden size, i MLP width, kv key/value width). These
    were fitted to the tensors PyTorch saves (counted with saved-tensor hooks on six Llama shapes; within
    1% of the count for SmolLM2-135M's and Llama-2-7B's blocks; bench/README.md). With gradient
    checkpointing a block keeps only its fp32 input (4h) and one block is recomputed at a time. Outside
    the blocks: about 9h per token, and the loss: the fused loss holds one ``loss_chunk`` of logits
    (about 12 bytes per entry while its gradient is made), the plain loss the whole micro-batch's.
    fp32 training (no autocast) is counted at twice these sizes.
    """
    h = config.hidden_size
    i = getattr(config, "intermediate_size", 4 * h)
    heads = getattr(config, "num_attention_heads", 1) or 1
    kv = (getattr(config, "num_key_value_heads", None) or heads) * (getattr(config, "head_dim", None) or h // heads)
    layers = config.num_hidden_layers
    tokens = settings.batch_size * settings.seq_len
    scale = 2 if precision == "fp32" else 1
    per_block = (24 * h + 8 * i + 4 * kv) if lora else (12 * h + 6 * i + 4 * kv)
    if getattr(settings, "gradient_checkpointing", False):
        blocks = layers * 4 * h * tokens + per_block * tokens * scale
    else:
        blocks = layers * per_block * tokens * scale
    logits_rows = min(tokens, settings.loss_chunk) if getattr(settings, "fused_loss", True) else tokens
    return {"blocks": blocks, "other": 9 * h * tokens * scale, "loss": 12 * logits_rows * config.vocab_size}


def per_gpu_memory(plan: StagePlan, config, gpus: int) -> dict[str, dict[str, int]]:
    """Bytes per GPU for each shipped multi-GPU configuration, with ``gpus`` GPUs.

    - DDP: every GPU holds what one process holds (``memory_estimate``), plus DDP's gradient buckets
      (a second copy of the trainable gradients).
    - ZeRO-2 (DeepSpeed): DeepSpeed casts the whole model to the half dtype (2 bytes per weight), keeps
      half-precision gradients and the fp32 master weights and AdamW moments (4 + 8 bytes per trainable
      parameter) partitioned over the GPUs.
    - FSDP full shard: weights, gradients and optimizer states of ``memory_estimate`` divided over the
      GPUs, plus two gathered blocks in the compute dtype (the one running and the one prefetched).
    Activations (``activation_estimate``) come on top of each, per GPU, for one micro-batch.
    """
    total, trainable = plan.counts.total, plan.counts.trainable
    half = 4 if plan.precision == "fp32" else BYTES[plan.precision]
    m = plan.memory
    act = sum(activation_estimate(config, plan.settings, lora=_has_lora(plan), precision=plan.precision).values())
    out = {
        "ddp": {"weights": m["weights"], "gradients": m["gradients"], "optimizer": m["optimizer"],
                "buffers": m["gradients"] if gpus > 1 else 0, "activations": act},
        "zero2": {"weights": half * total, "gradients": half * trainable // gpus, "optimizer": 12 * trainable // gpus,
                  "buffers": 0, "activations": act},
        "fsdp": {"weights": m["weights"] // gpus, "gradients": m["gradients"] // gpus,
                 "optimizer": m["optimizer"] // gpus, "buffers": 2 * half * plan.block_params, "activations": act},
    }
    return out


def _has_lora(plan: StagePlan) -> bool:
    return any(what.startswith("LoRA") for what, _, _ in plan.counts.lines)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB"


def print_plan(recipe: Recipe, config, vocab: VocabPlan, plans: list[StagePlan], console=None, *,
               gpus: int | None = None, gpu_memory: float | None = None) -> None:
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
    if gpus:
        print_per_gpu(config, plans, gpus, gpu_memory, console)


def print_per_gpu(config, plans: list[StagePlan], gpus: int, gpu_memory: float | None, console) -> None:
    """The per-GPU table: each stage under each shipped multi-GPU configuration."""
    from rich.table import Table

    table = Table(title=f"memory per GPU with {gpus} GPU{'s' if gpus > 1 else ''} (estimate, one micro-batch)")
    cols = ["stage", "configuration", "weights", "gradients", "optimizer", "buffers", "activations", "total"]
    if gpu_memory:
        cols.append(f"fits {gpu_memory:g} GiB")
    for col in cols:
        table.add_column(col, justify="left" if col in ("stage", "configuration") else "right")
    for p in plans:
        for key, parts in per_gpu_memory(p, config, gpus).items():
            total = sum(parts.values())
            row = [p.stage, STRATEGIES[key]] + [_gib(parts[k]) for k in cols[2:7]] + [_gib(total)]
            if gpu_memory:
                row.append("yes" if total <= gpu_memory * 2**30 else "no")
            table.add_row(*row)
    console.print(table)
    for p in plans:
        s = p.settings
        fast = ", ".join(x for x, on in (("fused loss", s.fused_loss), ("gradient checkpointing", s.gradient_checkpointing))
                         if on) or "no fast paths"
        console.print(f"[bold]{p.stage}[/bold]: micro-batch {s.batch_size} x {s.seq_len} tokens per GPU, {p.precision}, "
                      f"{fast}; global batch {s.batch_size} x {s.grad_accum} accumulation x {gpus} GPU{'s' if gpus > 1 else ''} = "
                      f"{s.batch_size * s.grad_accum * gpus} sequences")
    console.print("per GPU: DDP holds everything on every GPU (+ its gradient buckets); ZeRO-2 (DeepSpeed) keeps the "
                  "model in the half dtype and divides gradients, fp32 master weights and AdamW moments over the GPUs; "
                  "FSDP divides weights, gradients and AdamW moments and gathers two blocks at a time. Activations: "
                  "fitted to what PyTorch saves for Llama-style blocks under autocast with SDPA (see "
                  "plan.activation_estimate); CUDA context, allocator slack and fragmentation (often 1-3 GiB) come on top.")
