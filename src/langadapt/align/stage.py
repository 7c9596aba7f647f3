"""Stage 3, align (paper 4.2.1): embeddings and head only, monolingual then bilingual.

Starts from the tokenizer stage's model (merged vocabulary, initialised new rows). Every
transformer block stays frozen; the input embeddings and output head train, all rows (the
paper) or only the rows the merge added (``train_rows: new``; old rows stay bit-identical).

1. Monolingual: the clean stage's target-language sentences, next-token prediction, packed.
2. Bilingual: each example is a target-language sentence, the separator, and its English
   translation (order and share of reversed examples from the recipe), loss on the whole
   sequence, so new target-language embeddings are tied to the English ones the model knows.

Writes ``model/`` (a plain transformers folder with the tokenizer; trainable-token deltas are
merged back), ``bpc.json``, ``metrics.jsonl``, ``parallel.json`` (what the parallel readers
kept and skipped); checkpoints live in ``checkpoints/`` while the stage runs.
"""

from __future__ import annotations

from langadapt.distributed import is_main_process
from langadapt.files import write_json


def run(ctx) -> dict:
    from langadapt.data.parallel import read_parallel
    from langadapt.models import load_model_and_tokenizer
    from langadapt.train.bpc import read_heldout
    from langadapt.train.core import load_dtype, lr_note, train_model
    from langadapt.train.examples import bilingual_examples
    from langadapt.train.finish import base_vocab_of, finish_stage, unpeft
    from langadapt.train.freeze import apply_policy, stage_policy
    from langadapt.train import replay
    from langadapt.train.store import corpus_store

    recipe = ctx.recipe
    cfg = recipe.align
    out = ctx.out_dir
    start = ctx.model_path("tokenizer")
    model, tokenizer = load_model_and_tokenizer(start, dtype=load_dtype(cfg.monolingual.precision))
    heldout = read_heldout(recipe)
    summary: dict = {"start_from": str(start)}

    # ---- step 1: monolingual
    mono = cfg.monolingual
    corpus = corpus_store(ctx.layout.clean_shards(), tokenizer, out / "tokens", limit=mono.max_examples,
                          replay=replay.for_stage(recipe, mono, recipe.seed))
    rows, _ = stage_policy(recipe, "align", "monolingual")
    frozen, counts = apply_policy(model, embeddings=rows, base_vocab=base_vocab_of(model, rows, start))
    ctx.log(f"align (monolingual): {corpus.documents:,} documents ({corpus.total:,} tokens{replay.describe(corpus.replay)}); "
            f"trainable {counts.trainable:,} of {counts.total:,} parameters ({counts.percent:.2f}%, embeddings/head "
            f"rows: {rows}{lr_note(mono)})")
    r1 = train_model(frozen, tokenizer, corpus, mono, out, resume=ctx.resume,
                     heldout=heldout, log=ctx.log, name="monolingual", seed=recipe.seed,
                     report_to=recipe.report_to, project=recipe.name)
    corpus.remove()
    model = unpeft(r1.model)
    summary["monolingual"] = {**_step_summary(r1, corpus.documents, counts.trainable),
                              **({"replay": corpus.replay} if corpus.replay else {})}
    end_bpc = {k: v["end"] for k, v in r1.bpc.items()}

    # ---- step 2: bilingual
    bil = cfg.bilingual
    if bil.enabled:
        pairs, reports = read_parallel(recipe, bil.sources)
        for rep in reports:
            ctx.log(f"align (bilingual): {rep.summary()}")
        if is_main_process():
            write_json(out / "parallel.json", [rep.as_dict() for rep in reports])
        if bil.max_examples is not None:
            pairs = pairs[: bil.max_examples]
        rows, _ = stage_policy(recipe, "align", "bilingual")
        frozen, counts = apply_policy(model, embeddings=rows, base_vocab=base_vocab_of(model, rows, start))
        examples, mixed = bilingual_examples(tokenizer, pairs, bil, seed=recipe.seed), None
        wanted = replay.for_stage(recipe, bil, recipe.seed)
        if wanted:
            examples, mixed = replay.mix_examples(examples, tokenizer, wanted[0], wanted[1])
        ctx.log(f"align (bilingual): {len(pairs):,} pairs, {bil.order.replace('_', ' ')}"
                f"{f', {bil.reverse_share:.0%} reversed' if bil.reverse_share else ''}{replay.describe(mixed)}; trainable "
                f"{counts.trainable:,} parameters (embeddings/head rows: {rows}{lr_note(bil)})")
        r2 = train_model(frozen, tokenizer, examples, bil, out,
                         resume=ctx.resume, heldout=heldout, log=ctx.log, name="bilingual", seed=recipe.seed,
                         bpc_start=end_bpc, report_to=recipe.report_to, project=recipe.name)
        model = unpeft(r2.model)
        summary["bilingual"] = {**_step_summary(r2, len(pairs), counts.trainable), **({"replay": mixed} if mixed else {})}
        summary["parallel"] = {rep.name: {"kept": rep.kept, "skipped": rep.skipped_count} for rep in reports}

    # ---- output (frozen weights were loaded in the precision's dtype; trained ones were fp32)
    finish_stage(ctx, model.to(load_dtype(cfg.monolingual.precision)), tokenizer)
    bpc = ctx.layout.bpc("align")
    if bpc:
        summary["bpc"] = {k: {"start": v["start"], "end": v["end"]} for k, v in bpc.items()}
    return summary


def _step_summary(result, examples: int, trainable: int) -> dict:
    return {"examples": examples, **result.summary(), "trainable": trainable}
