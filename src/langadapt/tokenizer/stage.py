"""The `tokenizer` stage (paper 4.1): pieces from the cleaned corpus, merged into the base tokenizer,
and the base model's embeddings grown to match.

Reads ``<run>/clean/sentences/*.jsonl`` (or ``*.parquet``); writes ``model/`` (a ``save_pretrained`` model with the merged
tokenizer beside it), ``sp.model`` (the SentencePiece model) and ``report.json``.

When the sample supports fewer pieces than ``tokenizer.new_pieces`` (a small corpus), SentencePiece
stops where the data runs out; the stage warns, and the report records requested and learned sizes.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.files import atomic_path, read_json, write_json
from langadapt.layout import REPORT

ENGLISH_CHECK = [
    "The quick brown fox jumps over the lazy dog. It's 3:45 p.m.; isn't it?",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # code, too",
    "Naïve café façade — “quoted” ‘text’… 100€ ±5% → ∞ 🚀 日本語 Привет",
]
"""Checked on every run besides the held-out English text: base and merged ids must be equal."""

PAD_NAMES = ("<pad>", "<|pad|>", "<|langadapt_pad|>")

PRIOR_SENTENCES = 200_000
"""Sentences of the sample the ``calibrated`` init counts new tokens in (millions add nothing but time)."""


def padded(n: int, multiple: int | None) -> int:
    return -(-n // multiple) * multiple if multiple else n


def save_tokenizer(base_tok, tokenizer_json: dict, out_dir: Path, *, pad_token: str | None, pad_id: int | None):
    """Write the merged tokenizer as a Hugging Face folder and load it back.

    The folder starts as the base tokenizer's own (special tokens, chat template, settings), then
    gets the merged ``tokenizer.json``. Its class becomes ``PreTrainedTokenizerFast``, which loads
    ``tokenizer.json`` as written in transformers 4.x and 5.x alike (5.x's name for it,
    ``TokenizersBackend``, does not exist in 4.x); classes such as ``LlamaTokenizer`` rebuild their
    pre-tokenizer from code on load and would drop ours.
    """
    from transformers import AutoTokenizer

    base_tok.save_pretrained(out_dir)
    for stale in ("tokenizer.model", "vocab.json", "merges.txt", "spiece.model", "vocab.txt"):
        (out_dir / stale).unlink(missing_ok=True)
    tj = json.loads(json.dumps(tokenizer_json))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("vocab_file", "merges_file", "tokenizer_file", "legacy", "add_prefix_space"):
        cfg.pop(key, None)
    # transformers 4.x reads extra special tokens from a list named additional_special_tokens (5.x
    # writes a list named extra_special_tokens, which 4.x takes for a dict and fails on), and the
    # chat template from tokenizer_config.json (4.x before 4.50 knows no chat_template.jinja).
    if isinstance(cfg.get("extra_special_tokens"), list):
        cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens")
    if isinstance(getattr(base_tok, "chat_template", None), str):
        cfg["chat_template"] = base_tok.chat_template
    if pad_token is not None:
        tj["model"]["vocab"][pad_token] = pad_id
        tj["added_tokens"].append({"id": pad_id, "content": pad_token, "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": True})
        cfg["pad_token"] = pad_token
    (out_dir / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return AutoTokenizer.from_pretrained(str(out_dir))


def _check_identical(base_tok, merged_tok, lines: list[str]) -> int:
    """How many of ``lines`` get different ids (with special tokens) from the merged tokenizer."""
    return sum(base_tok(x)["input_ids"] != merged_tok(x)["input_ids"] for x in lines)


def run(ctx) -> dict:
    from langadapt.models import load_model_and_tokenizer
    from langadapt.tokenizer.embeddings import resize_and_init
    from langadapt.tokenizer.fertility import fertility, read_lines
    from langadapt.clean.normalize import char_map
    from langadapt.tokenizer.merge import add_normalizer, merge_pieces, read_sentencepiece, target_characters
    from langadapt.tokenizer.train import train_sentencepiece
    from langadapt.train.bpc import read_heldout
    from langadapt.weights import save_pretrained_shared

    recipe, cfg, out = ctx.recipe, ctx.recipe.tokenizer, ctx.out_dir
    seed = cfg.seed if cfg.seed is not None else recipe.seed
    timings: dict[str, float] = {}
    files = ctx.layout.clean_shards()

    # 1. SentencePiece on a reservoir sample (reused when resuming after a later step was killed).
    sp_model, sp_info = out / "sp.model", out / "sp.json"
    sample_path = out / ".work" / "sample.txt"
    if ctx.resume and sp_model.is_file() and sp_info.is_file():
        info = read_json(sp_info)
        ctx.log(f"tokenizer: reusing {sp_model} ({info['learned']:,} pieces)")
    else:
        t0 = time.perf_counter()
        sample = _sample(files, cfg.sample_sentences, sample_path, seed, ctx)
        ctx.log(f"tokenizer: sampled {sample.sentences_kept:,} of {sample.sentences_seen:,} sentences; "
                f"training SentencePiece ({cfg.model_type}, {cfg.new_pieces:,} pieces)")
        trained = train_sentencepiece(sample.path, sp_model, vocab_size=cfg.new_pieces, model_type=cfg.model_type,
                                      character_coverage=cfg.character_coverage, seed=seed)
        info = {"model_type": cfg.model_type, "requested": cfg.new_pieces, "learned": trained.learned,
                "sentences_seen": sample.sentences_seen, "sentences_sampled": sample.sentences_kept,
                "characters_sampled": sample.characters, "character_coverage": cfg.character_coverage, "seed": seed}
        write_json(sp_info, info)
        timings["sentencepiece"] = round(time.perf_counter() - t0, 2)
    if cfg.init != "calibrated":  # only `calibrated` reads the sample again (its token counts)
        shutil.rmtree(sample_path.parent, ignore_errors=True)
    if info["learned"] < info["requested"]:
        ctx.log(f"[yellow]warning[/yellow]: tokenizer.new_pieces is {info['requested']:,} but the sample of "
                f"{info['sentences_sampled']:,} sentences supports only {info['learned']:,} pieces; using "
                f"{info['learned']:,} (more text, or a smaller new_pieces, removes this warning)")
    pieces = read_sentencepiece(sp_model)

    # 2. Merge into the base tokenizer.
    t0 = time.perf_counter()
    model, base_tok = load_model_and_tokenizer(recipe.base_model)
    timings["load_base"] = round(time.perf_counter() - t0, 2)
    base_rows = model.get_input_embeddings().weight.shape[0]
    t0 = time.perf_counter()
    merged = merge_pieces(json.loads(base_tok.backend_tokenizer.to_str()), pieces, base_rows=base_rows,
                          extend_pre_tokenizer=cfg.pre_tokenizer == "extend")
    rewrites: dict[str, str] = {}
    if cfg.normalize:  # raw text meets the pieces as the clean stage's normalized text did
        digits = recipe.clean.digits if recipe.clean is not None else "keep"
        rewrites = add_normalizer(merged.tokenizer_json, char_map(recipe.language.code, digits),
                                  target_characters(pieces)[0])
    timings["merge"] = round(time.perf_counter() - t0, 2)
    pad_token = pad_id = None
    if cfg.add_pad_token:
        if base_tok.pad_token is None or base_tok.pad_token == base_tok.eos_token:
            vocab = base_tok.get_vocab()
            pad_token = next((p for p in PAD_NAMES if p not in vocab), None)
            if pad_token is None:
                raise LangadaptError(f"tokenizer.add_pad_token: the base vocabulary already has {', '.join(PAD_NAMES)}")
            pad_id = merged.size
        else:
            ctx.log(f"tokenizer: the base already has a padding token ({base_tok.pad_token!r}); none added")
    tokens = merged.size + (pad_token is not None)
    rows = padded(tokens, cfg.pad_to_multiple_of)
    if cfg.merged_vocab_size is not None and cfg.merged_vocab_size != rows:
        ctx.log(f"[yellow]warning[/yellow]: tokenizer.merged_vocab_size is {cfg.merged_vocab_size:,} but the merge "
                f"gives {rows:,} rows; `plan` used the recipe's number before this stage ran (set it to {rows:,})")

    heldout = recipe.data.heldout
    texts = {}
    for which in ("target", "english"):
        path = getattr(heldout, which)
        if path is not None and not isinstance(path, str):  # a dataset
            from langadapt.data.hub import dataset_lines

            texts[which] = dataset_lines(path, recipe.resolve(path.path), max_chars=heldout.max_chars,
                                         what=f"data.heldout.{which}", seed=recipe.seed)
            continue
        texts[which] = read_lines(recipe.resolve(path), heldout.max_chars) if path else None
    english = ENGLISH_CHECK + (texts["english"] or [])
    heldout_text = read_heldout(recipe)
    bpc: dict[str, dict[str, float]] = {}

    # 3. The model folder: merged tokenizer (checked on English before anything else is written),
    #    resized and initialised embeddings; held-out bits per character of the base and of the
    #    resized model before any training (step 0).
    with atomic_path(out / "model") as model_dir:
        model_dir.mkdir()
        tok = save_tokenizer(base_tok, merged.tokenizer_json, model_dir, pad_token=pad_token, pad_id=pad_id)
        if len(tok) != tokens:
            raise RuntimeError(f"the saved tokenizer has {len(tok)} tokens, expected {tokens}")
        differing = _check_identical(base_tok, tok, english)
        if differing:
            raise RuntimeError(f"the merged tokenizer changed the ids of {differing} English lines; "
                               "this is a bug in langadapt")
        if heldout_text:
            t0 = time.perf_counter()
            bpc = {k: {"base": round(_bpc(model, base_tok, v), 4)} for k, v in heldout_text.items()}
            timings["bpc_base"] = round(time.perf_counter() - t0, 2)
        spellings = {merged.first_new_id + i: s for i, s in enumerate(merged.spellings)}
        prior = None
        if cfg.init == "calibrated":
            t0 = time.perf_counter()
            prior = _prior(model, base_tok, tok, files, sample_path, cfg, seed, merged.first_new_id, rows, ctx)
            timings["prior"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        resized = resize_and_init(model, rows, spellings, init=cfg.init, seed=seed, prior=prior)
        timings["init"] = round(time.perf_counter() - t0, 2)
        if resized.calibration and not resized.calibration["applied"]:
            ctx.log(f"[yellow]warning[/yellow]: tokenizer.init calibrated: {resized.calibration['reason']}; "
                    "the new rows keep the mean init")
        if heldout_text:  # the same text under the merged tokenizer and the new rows, before any training
            t0 = time.perf_counter()
            for k, v in heldout_text.items():
                bpc[k]["init"] = round(_bpc(model, tok, v), 4)
                bpc[k]["change"] = round(bpc[k]["init"] / bpc[k]["base"] - 1, 4)
            timings["bpc_init"] = round(time.perf_counter() - t0, 2)
        model.config.langadapt_base_vocab_size = base_rows
        if pad_id is not None:
            model.config.pad_token_id = pad_id
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.pad_token_id = pad_id
        t0 = time.perf_counter()
        save_pretrained_shared(model, model_dir)  # body and embeddings apart: align's model links the body
        timings["save"] = round(time.perf_counter() - t0, 2)
    shutil.rmtree(out / ".work", ignore_errors=True)

    # 4. Round trips and fertility on the held-out text.
    target_lines = texts["target"] or []
    table = str.maketrans(rewrites)  # decoding gives the normalized text back
    roundtrip = sum(tok.decode(tok(x, add_special_tokens=False)["input_ids"]) !=
                    base_tok.decode(base_tok(x.translate(table), add_special_tokens=False)["input_ids"])
                    for x in target_lines)
    fert = {}
    for which, lines in texts.items():
        if lines:
            fert[which] = {"base": fertility(base_tok, lines), "merged": fertility(tok, lines)}

    report = {
        "base_model": recipe.base_model,
        "family": merged.family,
        "base_vocab_size": base_rows,
        "base_tokenizer_size": merged.base_ids,
        "merged_tokenizer_size": tokens,
        "merged_vocab_size": rows,
        "pad_token": pad_token,
        "pad_to_multiple_of": cfg.pad_to_multiple_of,
        "sentencepiece": info,
        **{k: v for k, v in merged.stats.items() if k != "family"},
        "pre_tokenizer": cfg.pre_tokenizer,
        "normalizer": {f"U+{ord(k):04X}": f"U+{ord(v):04X}" if v else "" for k, v in rewrites.items()},
        "merged_vocab_size_declared": cfg.merged_vocab_size,
        "init": cfg.init,
        **({"calibration": {**prior.describe(), **resized.calibration}} if prior is not None else {}),
        "tied_embeddings": resized.tied,
        "english_lines_checked": len(english),
        "english_identical": True,
        "target_roundtrip_failures": roundtrip,
        "fertility": fert,
        "bpc": bpc,
        "seconds": timings,
    }
    write_json(out / REPORT, report)
    summary = f"{report['new_pieces']:,} new pieces, vocabulary {base_rows:,} -> {rows:,}"
    if "target" in fert:
        summary += (f"; target tokens/word {fert['target']['base']['tokens_per_word']} -> "
                    f"{fert['target']['merged']['tokens_per_word']}")
    ctx.log(f"tokenizer: {summary}")
    if bpc:
        ctx.log(f"tokenizer: held-out bits per character, base model -> after the merge and init ({cfg.init}), "
                "before any training\n" + describe_step0(bpc))
    return report


def _bpc(model, tok, text: str | list[str]) -> float:
    """Held-out bits per character as the training stages measure them: lines as one text, documents whole."""
    from langadapt.train.bpc import bits_per_char, bits_per_char_documents

    return bits_per_char_documents(model, tok, text) if isinstance(text, list) else bits_per_char(model, tok, text)


def describe_step0(bpc: dict) -> str:
    """One line per held-out text: base -> init (change)."""
    return "\n".join(f"  {k:18s} {v['base']:.3f} -> {v['init']:.3f} ({v['change']:+.1%})" for k, v in bpc.items())


def _prior(model, base_tok, tok, files, sample_path: Path, cfg, seed: int, first_new: int, rows: int, ctx):
    """`calibrate.corpus_prior` over the SentencePiece sample (drawn again when a resumed run lost it)."""
    from langadapt.tokenizer.calibrate import corpus_prior
    from langadapt.tokenizer.train import DELIMITER

    if not sample_path.is_file():
        _sample(files, cfg.sample_sentences, sample_path, seed, ctx)
    with open(sample_path, encoding="utf-8") as f:
        texts = [line.rstrip("\n").replace(DELIMITER, "") for line in f]
    texts = [t for t in texts if t.strip()]
    if len(texts) > PRIOR_SENTENCES:
        import random

        texts = random.Random(seed).sample(texts, PRIOR_SENTENCES)
    prior = corpus_prior(model, base_tok, tok, texts, first_new, rows - first_new, seed=seed)
    ctx.log(f"tokenizer: calibrated init: new tokens are {prior.share:.1%} of the merged sample's tokens; "
            f"{prior.contexts.shape[0]:,} base-model contexts")
    return prior


def _sample(files: list[Path], k: int, path: Path, seed: int, ctx):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from langadapt.tokenizer.train import reservoir_sample

    total = sum(f.stat().st_size for f in files)
    with Progress(TextColumn("sampling sentences"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=ctx.console, transient=True) as progress:
        task = progress.add_task("sample", total=total)
        return reservoir_sample(files, k, path, seed=seed, progress=lambda n: progress.advance(task, n))
