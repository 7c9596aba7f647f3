"""Stage 4, pretrain (paper 4.2.2): LoRA continued pre-training on target-language text.

Starts from the align stage's model (or the tokenizer stage's, ``pretrain.start_from``).
LoRA (rank and alpha from the recipe; paper r=8, alpha=32) goes on every linear layer of
every transformer block, found from the model (``freeze.lora_targets``), and the embeddings
and head train too: all rows (the paper) or only the rows the merge added. The text is the
clean stage's sentences, packed into ``seq_len`` blocks.

Writes ``adapter/``: a PEFT adapter folder holding the LoRA weights and the trained
embeddings/head (or the new rows' deltas), plus the tokenizer. Its ``base_model_name_or_path``
is the absolute path of the starting model, so ``PeftModel``/``AutoPeftModelForCausalLM`` load
it without langadapt; ``langadapt.models.load_model`` also accepts a path relative to the
adapter folder. Tied embeddings stay tied (the head is the embedding tensor, saved once per name).
"""

from __future__ import annotations

from pathlib import Path

from langadapt.errors import LangadaptError


def _start_bpc(ctx, start_from: str) -> dict[str, float] | None:
    """The starting model's held-out bits per character, when align measured them at its end on the
    same held-out text: a fresh LoRA (B = 0) leaves the model's outputs unchanged, so they are ours."""
    if start_from != "align":
        return None
    return ctx.layout.bpc_end(start_from) or None


def run(ctx) -> dict:
    from langadapt.models import load_model_and_tokenizer
    from langadapt.train.bpc import read_heldout
    from langadapt.train import replay
    from langadapt.train.core import load_dtype, lr_note, train_model
    from langadapt.train.finish import base_vocab_of, finish_stage
    from langadapt.train.freeze import apply_policy, lora_targets, stage_policy
    from langadapt.train.store import corpus_store

    recipe = ctx.recipe
    cfg = recipe.pretrain
    out = ctx.out_dir
    start = ctx.model_path(cfg.start_from)
    if (Path(start) / "adapter_config.json").is_file():
        raise LangadaptError(f"pretrain.start_from: {start} is an adapter; pretrain starts from a full model "
                             "(align or tokenizer)")
    model, tokenizer = load_model_and_tokenizer(start, dtype=load_dtype(cfg.precision))
    rows, lora = stage_policy(recipe, "pretrain")
    targets = lora_targets(model) if lora.targets == "all-linear" else list(lora.targets)
    frozen, counts = apply_policy(model, embeddings=rows, lora=lora, base_vocab=base_vocab_of(model, rows, start),
                                   seed=recipe.seed)
    corpus = corpus_store(ctx.layout.clean_shards(), tokenizer, out / "tokens", limit=cfg.max_examples,
                          replay=replay.for_stage(recipe, cfg, recipe.seed))
    ctx.log(f"pretrain: from {cfg.start_from} ({start}); {corpus.documents:,} documents ({corpus.total:,} tokens"
            f"{replay.describe(corpus.replay)}); LoRA r={lora.r} "
            f"alpha={lora.alpha:g} on {', '.join(targets)}; embeddings/head rows: {rows}{lr_note(cfg)}; trainable "
            f"{counts.trainable:,} of {counts.total:,} ({counts.percent:.2f}%)")

    result = train_model(frozen, tokenizer, corpus, cfg, out, resume=ctx.resume,
                         heldout=read_heldout(recipe), log=ctx.log, name="pretrain", seed=recipe.seed,
                         bpc_start=_start_bpc(ctx, cfg.start_from), report_to=recipe.report_to, project=recipe.name)
    corpus.remove()
    finish_stage(ctx, result.model, tokenizer, base=start)
    return {
        "start_from": cfg.start_from,
        "lora_targets": targets,
        "train_rows": rows,
        "documents": corpus.documents,
        **({"replay": corpus.replay} if corpus.replay else {}),
        **result.summary(),
        "trainable": counts.trainable,
        "total": counts.total,
    }
