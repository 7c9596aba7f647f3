"""The align stage on a tiny Llama: only embeddings and head change, new-rows-only keeps old rows,
bilingual examples in the right order with the right loss mask, parallel readers refuse or report
misaligned input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama
from langadapt.errors import DataError
from langadapt.recipe import parse_recipe

ENGLISH = ["the cat sat on the mat", "a dog ran in the park", "birds fly over the sea", "we walk to the old town",
           "rain falls on the roof", "she reads a long book", "they sing in the hall", "the sun is warm today"]
PERSIAN = ["امروز هوا خیلی خوب است", "من هر روز چای می‌نوشم", "کتاب روی میز بزرگ است", "ما به خانه برمی‌گردیم",
           "باران روی سقف می‌بارد", "او یک کتاب بلند می‌خواند", "آنها در سالن آواز می‌خوانند", "خورشید امروز گرم است"]


def tokenizers():
    """(base tokenizer: English words only, merged tokenizer: + every Persian word as a new token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(ENGLISH, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    kw = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    base = PreTrainedTokenizerFast(tokenizer_object=tk, **kw)
    merged = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tk.to_str()), **kw)
    words = list(dict.fromkeys(w for s in PERSIAN for w in s.split()))
    merged.add_tokens(words)
    return base, merged


def make_workspace(root: Path, *, tied: bool = True) -> Path:
    """A run folder as clean and tokenizer would leave it, plus data files and a recipe dict."""
    from langadapt.weights import save_pretrained_shared

    base_tok, tok = tokenizers()
    base_rows = len(base_tok)
    model = tiny_llama(vocab_size=base_rows, tied=tied)
    model.save_pretrained(root / "base")
    base_tok.save_pretrained(root / "base")
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.config.langadapt_base_vocab_size = base_rows
    run = root / "runs" / "t"
    save_pretrained_shared(model, run / "tokenizer" / "model")  # as the tokenizer stage writes it
    tok.save_pretrained(run / "tokenizer" / "model")
    (run / "clean" / "sentences").mkdir(parents=True)
    with open(run / "clean" / "sentences" / "part-0.jsonl", "w", encoding="utf-8") as f:
        for s in PERSIAN * 3:
            f.write(json.dumps({"text": s, "source": "demo", "type": "other", "lang_prob": 0.99}, ensure_ascii=False) + "\n")
    (root / "pairs.tsv").write_text("".join(f"{fa}\t{en}\n" for fa, en in zip(PERSIAN, ENGLISH)), encoding="utf-8")
    (root / "held_fa.txt").write_text("\n".join(PERSIAN[:4]) + "\n", encoding="utf-8")
    (root / "held_en.txt").write_text("\n".join(ENGLISH[:4]) + "\n", encoding="utf-8")
    return root


def recipe_for(ws: Path, *, rows: str = "all", stages: tuple[str, ...] = ("align",), **extra):
    step = {"max_steps": 4, "batch_size": 2, "seq_len": 16, "lr": 3e-2, "warmup_ratio": 0.0, "train_rows": rows}
    data = {
        "name": "t", "base_model": str(ws / "base"), "output_dir": str(ws / "runs"),
        "data": {"corpus": [{"name": "c", "path": str(ws / "pairs.tsv")}],
                 "parallel": [{"name": "p", "format": "tsv", "path": str(ws / "pairs.tsv")}],
                 "heldout": {"target": str(ws / "held_fa.txt"), "english": str(ws / "held_en.txt")}},
        "clean": {}, "tokenizer": {},
    }
    if "align" in stages:
        data["align"] = {"monolingual": dict(step), "bilingual": dict(step)}
    if "pretrain" in stages:
        data["pretrain"] = {**step, "lora": {"r": 2, "alpha": 8, "dropout": 0.0}}
    data.update(extra)
    return parse_recipe(data)


def mark_done(recipe, *stages: str) -> None:
    """Completion markers as `langadapt run` writes them, so run_stage accepts the stage's inputs."""
    from langadapt.files import write_json
    from langadapt.layout import COMPLETE
    from langadapt.run import stage_hash

    for stage in stages:
        write_json(recipe.run_dir / stage / COMPLETE, {"stage": stage, "hash": stage_hash(recipe, stage)})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_align_stage_trains_only_embeddings_and_head(tmp_path, capsys):
    from langadapt.models import load_model
    from langadapt.run import run_stage

    ws = make_workspace(tmp_path, tied=False)
    recipe = recipe_for(ws)
    mark_done(recipe, "clean", "tokenizer")
    summary = run_stage(recipe, "align", resume=False)
    out = ws / "runs" / "t" / "align"

    before, after = weights(ws / "runs" / "t" / "tokenizer" / "model"), weights(out / "model")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.embed_tokens.weight", "lm_head.weight"}
    # the frozen blocks are the tokenizer stage's file, not a second copy (issue 16)
    body = [os.stat(d / "model" / "model-body.safetensors").st_ino for d in (out, ws / "runs" / "t" / "tokenizer")]
    assert body[0] == body[1]

    config = json.loads((out / "model" / "config.json").read_text())
    rows = len(tokenizers()[0])
    assert config["langadapt_base_vocab_size"] == rows and config["vocab_size"] > rows
    assert (out / "model" / "tokenizer.json").is_file()
    assert load_model(str(out / "model")).get_input_embeddings().weight.shape[0] == config["vocab_size"]
    assert not (out / "checkpoints").exists()

    bpc = json.loads((out / "bpc.json").read_text())
    assert list(bpc["target"]) == ["monolingual", "steps", "start", "end", "bilingual"]
    assert bpc["target"]["end"] < bpc["target"]["start"]
    assert bpc["target"]["bilingual"]["start"] == bpc["target"]["monolingual"]["end"]
    assert summary["monolingual"]["steps"] == 4 and summary["bilingual"]["examples"] == len(PERSIAN)
    printed = capsys.readouterr().out
    assert "held-out bits per character, before -> after" in printed
    assert "target" in printed and "english" in printed


def test_align_new_rows_only_keeps_old_rows_bit_identical(tmp_path):
    from langadapt.run import StageContext
    from langadapt.align.stage import run

    ws = make_workspace(tmp_path, tied=True)
    recipe = recipe_for(ws, rows="new")
    out = ws / "runs" / "t" / "align"
    run(StageContext(recipe=recipe, stage="align", out_dir=out))
    before, after = weights(ws / "runs" / "t" / "tokenizer" / "model"), weights(out / "model")
    key, rows = "model.embed_tokens.weight", len(tokenizers()[0])
    assert torch.equal(before[key][:rows], after[key][:rows])
    assert not torch.equal(before[key][rows:], after[key][rows:])
    assert all(torch.equal(before[k], after[k]) for k in before if k != key)
    assert "lm_head.weight" not in after  # still tied: the head is the embedding tensor


def test_bilingual_examples_put_target_first_and_train_on_every_token():
    from langadapt.data.parallel import Pair
    from langadapt.recipe import BilingualSettings
    from langadapt.train.examples import bilingual_examples, bilingual_texts
    from langadapt.train.packing import IGNORE, pack

    _, tok = tokenizers()
    pairs = [Pair("p", fa, en, i + 1) for i, (fa, en) in enumerate(zip(PERSIAN, ENGLISH))]
    examples = bilingual_examples(tok, pairs[:2], BilingualSettings(separator=" | "))
    first = examples[0]
    assert tok.decode(first["input_ids"][1:-1]) == tok.decode(tok(f"{PERSIAN[0]} | {ENGLISH[0]}")["input_ids"])
    fa_ids = tok(PERSIAN[0], add_special_tokens=False)["input_ids"]
    assert first["input_ids"][1 : 1 + len(fa_ids)] == fa_ids  # the Persian side comes first
    assert first["input_ids"][0] == tok.eos_token_id and first["input_ids"][-1] == tok.eos_token_id
    assert first["labels"] == first["input_ids"]  # loss on the whole sequence
    rows = pack(examples, seq_len=64, pad_id=tok.pad_token_id)
    labels = rows.labels[0].tolist()
    n0, n1 = len(examples[0]["input_ids"]), len(examples[1]["input_ids"])
    masked = [i for i, v in enumerate(labels[: n0 + n1]) if v == IGNORE]
    assert masked == [0, n0]  # only each example's boundary token is not a target

    english_first = bilingual_texts(pairs, order="english_first", separator="\n")
    assert english_first[0] == f"{ENGLISH[0]}\n{PERSIAN[0]}"
    mixed = bilingual_texts(pairs, reverse_share=0.25, seed=3)
    assert sum(t.startswith(tuple(ENGLISH)) for t in mixed) == 2
    assert mixed == bilingual_texts(pairs, reverse_share=0.25, seed=3)


# --------------------------------------------------------------------------- parallel readers


def source(**kw):
    from langadapt.recipe import ParallelSource

    return ParallelSource(name="s", **kw)


def test_parallel_readers_read_tsv_pair_files_and_datasets(tmp_path):
    from langadapt.data.parallel import read_source

    (tmp_path / "a.tsv").write_text(" سلام دنیا\thello world\r\nخانه\thouse\n", encoding="utf-8")
    pairs, report = read_source(source(format="tsv", path=str(tmp_path / "a.tsv")))
    assert [(p.target, p.english, p.line) for p in pairs] == [("سلام دنیا", "hello world", 1), ("خانه", "house", 2)]
    (tmp_path / "b.tsv").write_text("id1\thello\tسلام\n", encoding="utf-8")
    pairs, _ = read_source(source(format="tsv", path=str(tmp_path / "b.tsv"), target_column=2, english_column=1))
    assert (pairs[0].target, pairs[0].english) == ("سلام", "hello")

    (tmp_path / "fa.txt").write_text("یک\nدو\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("one\ntwo\n", encoding="utf-8")
    pairs, _ = read_source(source(format="pair", target=str(tmp_path / "fa.txt"), english=str(tmp_path / "en.txt")))
    assert [(p.target, p.english) for p in pairs] == [("یک", "one"), ("دو", "two")]

    rows = [{"translation": {"fa": "یک", "en": "one"}}, {"translation": {"fa": "دو", "en": "two"}}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pairs, _ = read_source(source(format="hf", path=str(tmp_path / "d.jsonl"), target_field="translation.fa",
                                  english_field="translation.en"))
    assert [(p.target, p.english) for p in pairs] == [("یک", "one"), ("دو", "two")]


def test_line_aligned_files_of_different_length_are_refused(tmp_path):
    from langadapt.data.parallel import read_source

    (tmp_path / "fa.txt").write_text("یک\nدو\nسه\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"has 3 lines, .*en.txt has 2; line 3 has no partner"):
        read_source(source(format="pair", target=str(tmp_path / "fa.txt"), english=str(tmp_path / "en.txt")))


def test_empty_sides_are_skipped_and_reported_with_line_numbers(tmp_path):
    from langadapt.data.parallel import read_source

    lines = [f"جمله {i}\tsentence {i}" for i in range(1, 31)]
    lines[4] = "جمله ۵\t "
    lines[11] = "\tsentence 12"
    lines[20] = "only one column"
    (tmp_path / "a.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs, report = read_source(source(format="tsv", path=str(tmp_path / "a.tsv"), max_bad_share=0.1))
    assert len(pairs) == 27 and report.lines == 30
    assert report.skipped == {"empty english": [5], "empty target": [12], "fewer than 2 tab-separated columns": [21]}
    assert "empty english: 1 (line 5)" in report.summary()
    assert 5 not in [p.line for p in pairs]

    lines[1] = lines[2] = lines[3] = "\t"
    (tmp_path / "a.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.tsv:2: refusing parallel source 's'.*lines 2, 3, 4.*probably misaligned"):
        read_source(source(format="tsv", path=str(tmp_path / "a.tsv"), max_bad_share=0.1))


def test_undecodable_parallel_line_is_named(tmp_path):
    from langadapt.data.parallel import read_source

    (tmp_path / "a.tsv").write_bytes("یک\tone\n".encode() + b"\xff\xfe\ttwo\n")
    with pytest.raises(DataError, match=r"a.tsv:2: not UTF-8"):
        read_source(source(format="tsv", path=str(tmp_path / "a.tsv")))


def test_a_diverging_align_stage_leaves_no_model_and_no_completion_marker(tmp_path):
    """Issue 17 item 4: a NaN run saved 29 million NaN weights, wrote COMPLETE.json and exited 0."""
    from langadapt.errors import DivergedError
    from langadapt.run import run_stage, stage_status

    ws = make_workspace(tmp_path)
    recipe = recipe_for(ws)
    recipe.align.monolingual.lr = 1e30
    mark_done(recipe, "clean", "tokenizer")
    with pytest.raises(DivergedError, match="monolingual: .*NaN or infinite"):
        run_stage(recipe, "align", resume=False)
    out = recipe.run_dir / "align"
    assert not (out / "COMPLETE.json").exists() and not (out / "model").exists()
    assert stage_status(recipe, "align") == "partial"
