"""Issue 15: documents survive cleaning, training reads documents (or a plain concatenation), English
replay mixed into the rows at the requested share, a separate learning rate for the embeddings and
head, and held-out bits per character of whole documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_llama
from test_clean_stage import S, _clean, _documents
from test_train_core import TEXT, settings, tiny_tokenizer

EN_DOCS = [
    "The farmers of the valley bring their apples to the market every Saturday morning.",
    "A quiet library is the best place to read when the weather outside is cold and wet.",
    "Our neighbours planted tomatoes, beans and a row of tall sunflowers behind the house.",
    "The last train of the evening leaves the old station a few minutes after ten o'clock.",
    "Children in the village learn to swim in the river during the long summer holidays.",
    "She wrote a letter to her grandmother and told her about the new school and friends.",
]
"""English text of our own, for replay sources."""


# --------------------------------------------------------------------------- documents survive cleaning


def test_a_dropped_sentence_leaves_a_gap_not_a_split(tmp_path):
    """One line, three sentences, the middle one too short: one document of the other two, in order."""
    doc = f"{S[0]} کوتاه است. {S[1]}"
    out, summary = _clean(tmp_path, [{"name": "a", "path": str(_write(tmp_path / "a.txt", [doc, S[2]]))}])
    docs = _documents(out)
    assert [d["text"] for d in docs] == [f"{S[0]} {S[1]}", S[2]]
    assert [d["sentences"] for d in docs] == [2, 1]
    assert summary["sentences_in"] == 4 and summary["sentences_out"] == 3 and summary["documents_out"] == 2
    assert summary["drops"]["too_short"] == 1


def test_runs_of_lines_make_documents_that_keep_their_line_breaks(tmp_path):
    """doc_per lines: consecutive verses up to doc_chars, a blank line also ending a run (poems)."""
    lines = [S[0], S[1], S[2], "", S[3], S[4], S[5]]
    path = _write(tmp_path / "poem.txt", lines)
    out, _ = _clean(tmp_path, [{"name": "p", "type": "poems", "path": str(path), "doc_per": "lines",
                                "doc_chars": 100}])
    docs = [d["text"] for d in _documents(out)]
    # about 45 characters a line: two fit in 100; the blank line ends the third run early
    assert docs == ["\n".join(S[0:2]), S[2], "\n".join(S[3:5]), S[5]]


def test_a_whole_file_is_one_document(tmp_path):
    path = _write(tmp_path / "story.txt", [S[0], S[1] + " " + S[2], S[3]])
    out, _ = _clean(tmp_path, [{"name": "f", "path": str(path), "doc_per": "file"}])
    assert [d["text"] for d in _documents(out)] == [f"{S[0]}\n{S[1]} {S[2]}\n{S[3]}"]


@pytest.mark.parametrize("fmt,doc_per", [("text", "record"), ("jsonl", "lines"), ("parquet", "file")])
def test_a_source_without_that_kind_of_document_boundary_is_refused_in_the_recipe(tmp_path, fmt, doc_per):
    from langadapt.errors import RecipeError
    from langadapt.recipe import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "base_model": "x/y", "data": {"corpus": [
        {"name": "c", "format": fmt, "path": "c", "doc_per": doc_per}]}}), encoding="utf-8")
    with pytest.raises(RecipeError, match=f"r.yaml:\\d+: .*doc_per '{doc_per}'"):
        load_recipe(p, check_files=False)


def test_old_runs_sentence_shards_are_still_read(tmp_path):
    from langadapt.layout import RunLayout

    old = tmp_path / "clean" / "sentences"
    old.mkdir(parents=True)
    (old / "00000.jsonl").write_text(json.dumps({"text": S[0]}) + "\n", encoding="utf-8")
    assert RunLayout(tmp_path).clean_shards() == [old / "00000.jsonl"]
    new = tmp_path / "clean" / "documents"
    new.mkdir()
    (new / "00000.jsonl").write_text(json.dumps({"text": S[1]}) + "\n", encoding="utf-8")
    assert RunLayout(tmp_path).clean_shards() == [new / "00000.jsonl"]


# --------------------------------------------------------------------------- packing documents


def _store(tmp_path, tok, texts, **kw):
    from langadapt.train.store import build

    return build(texts, tok, tmp_path / "store", **kw)


def test_document_boundaries_are_respected_in_the_packed_attention(tmp_path):
    """Two documents in one block: the second one's logits are those it gets alone (positions restart, so
    transformers masks attention block-diagonally); with pack_across_documents they are not."""
    import torch

    tok = tiny_tokenizer()
    model = tiny_llama(vocab_size=len(tok)).eval()
    store = _store(tmp_path, tok, TEXT[:2])
    first = len(tok(TEXT[0], add_special_tokens=False)["input_ids"]) + 2
    second = len(tok(TEXT[1], add_special_tokens=False)["input_ids"]) + 2
    batch = store.rows(64, tok.pad_token_id).batch(torch.tensor([0]))
    assert batch["position_ids"][0, first].item() == 0  # the second document starts over
    assert batch["labels"][0, first].item() == -100
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits[0, first:first + second]  # as the training core calls it
        alone = model(input_ids=batch["input_ids"][:, first:first + second], use_cache=False).logits[0]
        assert torch.allclose(packed, alone, atol=1e-5)
        across = store.rows(64, tok.pad_token_id, across=True).batch(torch.tensor([0]))
        assert across["position_ids"][0, first].item() == first and (across["labels"][0, :first + second] != -100).all()
        mixed = model(input_ids=across["input_ids"], position_ids=across["position_ids"],
                      use_cache=False).logits[0, first:first + second]
        assert not torch.allclose(mixed, alone, atol=1e-3)


def test_in_memory_packing_across_documents_is_a_plain_concatenation():
    from langadapt.train.packing import pack

    examples = [{"input_ids": [1, 5, 6, 2]}, {"input_ids": [1, 7, 8, 9, 2]}]
    docs = pack(examples, 6, 0)
    plain = pack(examples, 6, 0, across=True)
    assert docs.position_ids[0].tolist() == [0, 1, 2, 3, 0, 1] and docs.labels[0, 4].item() == -100
    assert plain.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5] and plain.labels[0, 4].item() == 1
    assert plain.position_ids[1].tolist()[:3] == [0, 1, 2]  # the next block starts its own positions


# --------------------------------------------------------------------------- replay


def test_replay_holds_the_requested_share_of_the_tokens_in_the_same_blocks(tmp_path):
    import torch

    tok = tiny_tokenizer(extra=EN_DOCS)
    target = [TEXT[i % len(TEXT)] + f" {i}" for i in range(400)]
    replay = (EN_DOCS[i % len(EN_DOCS)] for i in range(10_000))
    store = _store(tmp_path, tok, target, replay=(replay, 0.25))
    assert abs(store.replay["share"] - 0.25) < 0.01
    assert store.replay["tokens"] / store.total == pytest.approx(store.replay["share"], abs=1e-4)
    assert store.documents == 400 + store.replay["documents"]
    # replay and target documents share blocks: a block of 64 tokens holds both kinds
    rows = store.rows(64, tok.pad_token_id)
    english = {t for d in EN_DOCS for t in tok(d, add_special_tokens=False)["input_ids"]}
    target_ids = {t for d in TEXT for t in tok(d, add_special_tokens=False)["input_ids"]} - english
    mixed = 0
    for r in range(len(rows)):
        ids = set(rows.batch(torch.tensor([r]))["input_ids"][0].tolist())
        mixed += bool(ids & english) and bool(ids & target_ids)
    assert mixed > len(rows) / 2
    # and over any stretch of the store the share stays near the request: documents told apart by content
    replay_docs = {tuple(tok(d, add_special_tokens=False)["input_ids"]) for d in EN_DOCS}
    ends = list(store.starts[1:]) + [store.total]
    kinds = [tuple(int(t) for t in store.ids[a + 1:b - 1]) in replay_docs for a, b in zip(store.starts, ends)]
    lengths = [int(b - a) for a, b in zip(store.starts, ends)]
    for part in (slice(0, len(kinds) // 3), slice(len(kinds) // 3, 2 * len(kinds) // 3)):
        share = sum(n for n, k in zip(lengths[part], kinds[part]) if k) / sum(lengths[part])
        assert share == pytest.approx(0.25, abs=0.02)


def test_replay_in_examples_reaches_the_share(tmp_path):
    from langadapt.train.replay import mix_examples

    tok = tiny_tokenizer(extra=EN_DOCS)
    examples = [{"input_ids": [1] + tok(t, add_special_tokens=False)["input_ids"] + [2]} for t in TEXT * 100]
    mixed, info = mix_examples(examples, tok, iter(EN_DOCS * 1000), 0.1)
    assert abs(info["share"] - 0.1) < 0.01 and len(mixed) == len(examples) + info["documents"]
    assert all(m["labels"] == m["input_ids"] for m in mixed if "labels" in m)  # replay: loss on every token


def _replay_recipe(tmp_path, replay_lines, language="en", **extra):
    from langadapt.recipe import load_recipe

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "en.txt").write_text("\n".join(replay_lines) + "\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text(S[0] + "\n", encoding="utf-8")
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({
        "name": "t", "base_model": "x/y", "output_dir": str(tmp_path / "runs"),
        "data": {"corpus": [{"name": "c", "path": "c.txt"}],
                 "replay": [{"name": "en", "path": "en.txt", "language": language}]},
        "clean": {}, "tokenizer": {}, "align": {"bilingual": {"enabled": False}},
        "pretrain": {"replay": {"share": 0.1}, **extra}}, allow_unicode=True), encoding="utf-8")
    return load_recipe(p)


def test_replay_sources_are_checked_before_any_stage_runs(tmp_path):
    from langadapt.errors import LangadaptError
    from langadapt.train.replay import check_sources

    check_sources(_replay_recipe(tmp_path / "ok", EN_DOCS))  # English text, declared English: fine
    with pytest.raises(LangadaptError, match=r"data.replay\[0\] \('en'\): 100% .* target language 'fa'"):
        check_sources(_replay_recipe(tmp_path / "fa", S))
    with pytest.raises(LangadaptError, match=r"data.replay\[0\] \('en'\): no text"):
        check_sources(_replay_recipe(tmp_path / "empty", ["", "   "]))


def test_the_replay_text_is_part_of_the_training_stages_hashes(tmp_path, monkeypatch):
    import dataclasses

    from langadapt import stages
    from langadapt.recipe import load_recipe
    from langadapt.run import stage_hash

    recipe = _replay_recipe(tmp_path, EN_DOCS)
    before = {s: stage_hash(recipe, s) for s in ("clean", "align", "pretrain")}
    (tmp_path / "en.txt").write_text("\n".join(EN_DOCS[:2]) + "\n", encoding="utf-8")  # other replay text
    after = {s: stage_hash(load_recipe(tmp_path / "r.yaml"), s) for s in ("clean", "align", "pretrain")}
    assert after["clean"] == before["clean"]  # clean never reads the replay text
    assert after["align"] == before["align"]  # this recipe's align asks for no replay
    assert after["pretrain"] != before["pretrain"]
    # a recipe without replay hashes as before replay existed: older runs stay done
    raw = yaml.safe_load((tmp_path / "r.yaml").read_text(encoding="utf-8"))
    del raw["data"]["replay"], raw["pretrain"]["replay"]
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    plain = load_recipe(tmp_path / "plain.yaml")
    with_replay_kind = stage_hash(plain, "pretrain")
    spec = stages.BY_NAME["pretrain"]
    monkeypatch.setitem(stages.BY_NAME, "pretrain", dataclasses.replace(spec, data=tuple(
        k for k in spec.data if k != "replay")))
    assert stage_hash(plain, "pretrain") == with_replay_kind


def test_replay_names_must_be_data_replay_sources(tmp_path):
    from langadapt.errors import RecipeError

    with pytest.raises(RecipeError, match=r"pretrain.replay.sources: 'wiki' is not a name in data.replay \(known: en\)"):
        _replay_recipe(tmp_path, EN_DOCS, replay={"sources": ["wiki"], "share": 0.1})


# --------------------------------------------------------------------------- the embeddings' learning rate


def test_the_embedding_group_gets_its_own_rate(tmp_path):
    """One AdamW step moves each trained weight by about its rate (Adam's first step is lr * sign(grad)):
    LoRA weights by lr, embedding rows by embedding_lr."""

    from langadapt.recipe import LoraSettings
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    model, _ = apply_policy(tiny_llama(vocab_size=len(tok)), embeddings="all", lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                            seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    rows = []
    s = settings(max_steps=1, lr=1e-2, embedding_lr="0.1x", schedule="constant", max_grad_norm=None)
    examples = [{"input_ids": [1] + tok(t, add_special_tokens=False)["input_ids"] + [2]} for t in TEXT]
    train_model(model, tok, examples, s, tmp_path, callback=lambda step, m: rows.append(m))
    assert rows[-1]["lr"] == pytest.approx(1e-2) and rows[-1]["lr_embeddings"] == pytest.approx(1e-3)
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters() if n in before}
    emb = [v for n, v in moved.items() if "embed_tokens" in n]
    lora = [v for n, v in moved.items() if "lora_B" in n]  # lora_A's first step has zero gradient only if B is 0
    assert emb and max(emb) == pytest.approx(1e-3, rel=0.05)
    assert lora and max(lora) == pytest.approx(1e-2, rel=0.05)


def test_embedding_lr_in_a_stage_that_trains_no_embeddings_is_refused(tmp_path):
    from langadapt.errors import RecipeError

    with pytest.raises(RecipeError, match="embedding_lr: this stage trains no embeddings"):
        _replay_recipe(tmp_path, EN_DOCS, train_rows="none", embedding_lr=1e-5)


# --------------------------------------------------------------------------- held-out documents


def test_document_bits_per_character_predict_every_token_once_with_earlier_context():
    import math

    import torch

    from langadapt.train.bpc import bits_per_char_documents

    tok = tiny_tokenizer()
    model = tiny_llama(vocab_size=len(tok)).eval()
    doc = " ".join(TEXT)  # longer than one window of 16 tokens
    ids = [tok.eos_token_id] + tok(doc, add_special_tokens=False)["input_ids"]
    assert len(ids) > 40
    # by hand: windows of 16 tokens every 8, each scoring the tokens the window before did not
    total, scored, begin = 0.0, 1, 0
    with torch.no_grad():
        while scored < len(ids):
            end = min(begin + 16, len(ids))
            logp = torch.log_softmax(model(torch.tensor([ids[begin:end]])).logits[0].float(), -1)
            for i in range(scored, end):
                total -= float(logp[i - begin - 1, ids[i]])
            scored, begin = end, begin + 8
    expected = total / math.log(2) / len(doc)
    assert bits_per_char_documents(model, tok, [doc], window=16) == pytest.approx(expected, rel=1e-5)


def test_heldout_documents_are_read_from_jsonl_or_paragraphs(tmp_path):
    from langadapt.train.bpc import read_documents

    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a b", "c d"]), encoding="utf-8")
    (tmp_path / "d.txt").write_text("first line\nsecond line\n\n\nnext paragraph\n", encoding="utf-8")
    assert read_documents(tmp_path / "d.jsonl", 1000) == ["a b", "c d"]
    assert read_documents(tmp_path / "d.txt", 1000) == ["first line\nsecond line", "next paragraph"]
    assert read_documents(tmp_path / "d.txt", 5) == ["first line\nsecond line"]  # at least one


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
