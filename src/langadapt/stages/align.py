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

import shutil

from langadapt.errors import LangadaptError
from langadapt.files import atomic_path, write_json
from langadapt.stages import is_main_process, wait_for_everyone


def base_vocab_of(model, train_rows: str, where: str) -> int | None:
    """Rows before the tokenizer merge (``langadapt_base_vocab_size`` in the model's config)."""
    rows = getattr(model.config, "langadapt_base_vocab_size", None)
    if train_rows == "new" and rows is None:
        raise LangadaptError(f"train_rows: new needs to know which embedding rows are new, but {where}/config.json "
                             "has no 'langadapt_base_vocab_size' (was it made by the tokenizer stage?); "
                             "use train_rows: all")
    return rows


def unpeft(model):
    """A plain model: trainable-token deltas (new rows only) written back into the embedding rows."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def run(ctx) -> dict:
    from langadapt.data.parallel import read_parallel
    from langadapt.models import load_model_and_tokenizer
    from langadapt.train.bpc import read_heldout
    from langadapt.train.core import describe_bpc, load_dtype, train_model
    from langadapt.train.examples import bilingual_examples
    from langadapt.train.store import corpus_store
    from langadapt.train.freeze import apply_policy, stage_policy

    recipe = ctx.recipe
    cfg = recipe.align
    out = ctx.out_dir
    start = ctx.model_path("tokenizer")
    model, tokenizer = load_model_and_tokenizer(start, dtype=load_dtype(cfg.monolingual.precision))
    heldout = read_heldout(recipe)
    summary: dict = {"start_from": str(start)}

    # ---- step 1: monolingual
    mono = cfg.monolingual
    corpus = corpus_store(ctx.stage_dir("clean"), tokenizer, out / "tokens", limit=mono.max_examples)
    rows, _ = stage_policy(recipe, "align", "monolingual")
    frozen, counts = apply_policy(model, embeddings=rows, base_vocab=base_vocab_of(model, rows, start))
    ctx.log(f"align (monolingual): {corpus.documents:,} sentences ({corpus.total:,} tokens); trainable "
            f"{counts.trainable:,} of {counts.total:,} parameters ({counts.percent:.2f}%, embeddings/head rows: {rows})")
    r1 = train_model(frozen, tokenizer, corpus, mono, out, resume=ctx.resume,
                     heldout=heldout, log=ctx.log, name="monolingual", seed=recipe.seed)
    corpus.remove()
    model = unpeft(r1.model)
    summary["monolingual"] = _step_summary(r1, corpus.documents, counts.trainable)
    end_bpc = {k: v["end"] for k, v in r1.bpc.items()}

    # ---- step 2: bilingual
    bil = cfg.bilingual
    if bil.enabled:
        known = [s.name for s in recipe.data.parallel]
        unknown = [n for n in (bil.sources or []) if n not in known]
        if unknown:
            raise LangadaptError(f"align.bilingual.sources: {', '.join(unknown)} not in data.parallel "
                                 f"(known: {', '.join(known) or 'none'})", path=str(recipe.source_path or ""))
        pairs, reports = read_parallel(recipe, bil.sources)
        for rep in reports:
            ctx.log(f"align (bilingual): {rep.summary()}")
        if is_main_process():
            write_json(out / "parallel.json", [rep.as_dict() for rep in reports])
        if bil.max_examples is not None:
            pairs = pairs[: bil.max_examples]
        rows, _ = stage_policy(recipe, "align", "bilingual")
        frozen, counts = apply_policy(model, embeddings=rows, base_vocab=base_vocab_of(model, rows, start))
        ctx.log(f"align (bilingual): {len(pairs):,} pairs, {bil.order.replace('_', ' ')}"
                f"{f', {bil.reverse_share:.0%} reversed' if bil.reverse_share else ''}; trainable "
                f"{counts.trainable:,} parameters (embeddings/head rows: {rows})")
        r2 = train_model(frozen, tokenizer, bilingual_examples(tokenizer, pairs, bil, seed=recipe.seed), bil, out,
                         resume=ctx.resume, heldout=heldout, log=ctx.log, name="bilingual", seed=recipe.seed,
                         bpc_start=end_bpc)
        model = unpeft(r2.model)
        summary["bilingual"] = _step_summary(r2, len(pairs), counts.trainable)
        summary["parallel"] = {rep.name: {"kept": rep.kept, "skipped": rep.skipped_count} for rep in reports}

    # ---- output (frozen weights were loaded in the precision's dtype; trained ones were fp32)
    model = model.to(load_dtype(cfg.monolingual.precision))
    if is_main_process():
        with atomic_path(out / "model") as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # model/ holds the result now
    wait_for_everyone()
    bpc_path = out / "bpc.json"
    if bpc_path.is_file():
        from langadapt.files import read_json

        bpc = read_json(bpc_path)
        summary["bpc"] = {k: {"start": v["start"], "end": v["end"]} for k, v in bpc.items()}
        ctx.log("align: held-out bits per character, before -> after the stage\n" + describe_bpc(bpc))
    else:
        ctx.log("align: no held-out text in data.heldout; bits per character not measured")
    ctx.log(f"align: saved {out / 'model'}")
    return summary


def _step_summary(result, examples: int, trainable: int) -> dict:
    return {"examples": examples, **result.summary(), "trainable": trainable}
