"""The tokenizer stage's parts: sampling and SentencePiece training, the merge into both families of
base tokenizer, embedding resizing and initialisation. Tiny tokenizers are trained in the tests."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_llama

from langadapt.tokenizer.merge import (
    BYTE_LEVEL,
    SENTENCEPIECE,
    SpPiece,
    byte_chars,
    merge_pieces,
    read_sentencepiece,
    to_byte_level,
)

# Our own text (nobody else's): English to train the stand-in base tokenizers, Persian for the pieces.
EN = [
    "The morning train left the station a little after seven, full of people going to work.",
    "She opened the window, looked at the rain, and decided to stay at home with a good book.",
    "Our team wrote the tests first, then the code, and then the tests again when they failed.",
    "A small cat sat on the wall and watched the birds that were looking for bread in the garden.",
    "If you mix blue and yellow paint you get green; if you add white, it becomes lighter.",
    "He said: 'I'll be there at 10:30, don't wait for me if I'm late.'",
    "Numbers like 2024, 3.14 and 1,000,000 appear in reports, tables and old letters.",
    "def add(a, b):\n    return a + b  # the simplest function there is",
    "They're building a new bridge over the river; it should be finished next year.",
    "Children learn languages quickly when they play with friends who speak them.",
]
FA = [
    "من هر روز صبح یک فنجان چای می‌نوشم و کتاب می‌خوانم.",
    "کتاب‌های زیادی در کتابخانه‌ی شهر ما وجود دارد.",
    "دانش‌آموزان امروز درباره‌ی تاریخ ایران صحبت کردند.",
    "هوا امروز سرد است، اما آفتاب می‌تابد.",
    "ما می‌خواهیم فردا به کوه برویم و از طبیعت لذت ببریم.",
    "این رستوران غذاهای خوشمزه و ارزانی دارد.",
    "برادرم در دانشگاه تهران مهندسی کامپیوتر می‌خواند.",
    "لطفاً در را ببندید؛ باد سردی می‌وزد.",
    "آیا شما هم این فیلم را دیده‌اید؟",
    "زبان فارسی زبانی زیبا با ادبیاتی غنی است.",
    "بچه‌ها در پارک بازی می‌کنند و می‌خندند.",
    "او نامه‌ای برای دوستش نوشت و آن را پست کرد.",
    "قیمت میوه‌ها در بازار این هفته بالا رفته است.",
    "مادربزرگم داستان‌های قدیمی را برای ما تعریف می‌کند.",
    "هر کس که تلاش کند، به هدف خود می‌رسد.",
    "شب‌ها ستاره‌ها در آسمان کویر می‌درخشند.",
    "ما در کلاس زبان انگلیسی شعر می‌خوانیم.",
    "این کتاب را دوستم به من هدیه داد.",
    "در تابستان میوه‌های تازه فراوان است.",
    "پدرم هر شب اخبار را از رادیو می‌شنود.",
]
ENGLISH_PROBES = EN + [
    "Naïve café façade, Ærøskøbing, São Paulo — “curly” ‘quotes’… and an em dash — here.",
    "Emoji 🚀🙂, math ∑ x² ≤ ∞, currency 100€ £5 ¥300, arrows → ←, CJK 日本語, Cyrillic Привет.",
    "Arabic-script punctuation and digits without letters: ، ؛ ؟ « » ۱۲۳۴ ٥٦.",
    "  leading and trailing spaces, tabs\tand\nnew lines  ",
]
MIXED = FA + [
    "I read «کتاب‌ها» every day, 3 times; then I say: خداحافظ!",
    "سلام\u200cدنیا   با  فاصله‌های   زیاد\tو tab",
    "  فارسی در ابتدا با فاصله",
]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


# --------------------------------------------------------------------------- stand-in base tokenizers


def byte_level_base(kind: str = "gpt2"):
    """A 400-token byte-level BPE trained on English: GPT-2/SmolLM2-style or Llama-3-style pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(EN * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", chat_template=CHAT)


def sentencepiece_base(tmp_path, form: str = "model"):
    """A Llama-2 stand-in: SentencePiece BPE with byte fallback trained on English.

    form "model": a folder with tokenizer.model; "json": the tokenizer.json transformers converts it
    to; "legacy-json": the older Llama-2 tokenizer.json layout (Prepend/Replace normalizer, no pre-tokenizer).
    """
    import sentencepiece as spm
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    (tmp_path / "en.txt").write_text("\n".join(EN * 3), encoding="utf-8")
    folder = tmp_path / "llama-sp"
    folder.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "en.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=420, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity", split_digits=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, hard_vocab_limit=False, minloglevel=2)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "chat_template": CHAT}), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(folder)
    if form == "model":
        return tok
    saved = tmp_path / "llama-json"
    tok.save_pretrained(saved)
    if form == "json":
        return AutoTokenizer.from_pretrained(saved)
    tj = json.loads((saved / "tokenizer.json").read_text(encoding="utf-8"))
    tj["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    tj["pre_tokenizer"] = None
    (saved / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    return PreTrainedTokenizerFast(tokenizer_file=str(saved / "tokenizer.json"), bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", chat_template=CHAT)


@pytest.fixture(scope="module")
def persian_sp(tmp_path_factory):
    """Pieces trained on our Persian sentences through the stage's own sampling and training."""
    from langadapt.tokenizer.train import reservoir_sample, train_sentencepiece

    d = tmp_path_factory.mktemp("sp")
    corpus = d / "part-0.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in FA * 2), encoding="utf-8")
    sample = reservoir_sample([corpus], 10_000, d / "sample.txt", seed=0)
    trained = train_sentencepiece(sample.path, d / "sp.model", vocab_size=250, model_type="bpe",
                                  character_coverage=1.0, seed=0)
    return trained.model_path


BASES = ["byte-level-gpt2", "byte-level-split", "sp-model", "sp-json", "sp-legacy-json"]


@pytest.fixture(params=BASES)
def merged_pair(request, tmp_path, persian_sp):
    """(base HF tokenizer, merged HF tokenizer loaded from its saved folder, MergedTokenizer)."""
    from langadapt.tokenizer.stage import save_tokenizer

    name = request.param
    if name.startswith("byte-level"):
        base = byte_level_base("gpt2" if name.endswith("gpt2") else "llama3")
    else:
        base = sentencepiece_base(tmp_path, {"sp-model": "model", "sp-json": "json"}.get(name, "legacy-json"))
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), read_sentencepiece(persian_sp))
    out = tmp_path / "merged"
    out.mkdir()
    tok = save_tokenizer(base, merged.tokenizer_json, out, pad_token=None, pad_id=None)
    return base, tok, merged


# --------------------------------------------------------------------------- sampling and training


def test_reservoir_sample_keeps_k_sentences_from_the_corpus_reproducibly(tmp_path):
    """JSONL (with blank lines) and Parquet shards, as the clean stage writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from langadapt.tokenizer.train import reservoir_sample

    p = tmp_path / "part-0.jsonl"
    p.write_text("".join(json.dumps({"text": f"جمله 0-{i}"}, ensure_ascii=False) + "\n" + ("\n" if i % 7 == 0 else "")
                         for i in range(300)), encoding="utf-8")
    q = tmp_path / "part-1.parquet"
    pq.write_table(pa.table({"text": [f"جمله 1-{i}" for i in range(300)], "source": ["x"] * 300}), q, row_group_size=64)
    files = [p, q]
    everything = {f"جمله {f}-{i}" for f in range(2) for i in range(300)}

    def draw(seed, k=50):
        s = reservoir_sample(files, k, tmp_path / f"s{seed}-{k}.txt", seed=seed)
        return s, (tmp_path / f"s{seed}-{k}.txt").read_text(encoding="utf-8").splitlines()

    s, lines = draw(1)
    assert (s.sentences_seen, s.sentences_kept, len(lines), len(set(lines))) == (600, 50, 50, 50)
    assert set(lines) <= everything
    assert {ln.split()[1][0] for ln in lines} == {"0", "1"}  # both files contribute
    assert draw(1)[1] == lines and draw(2)[1] != lines
    s, lines = draw(3, k=1000)
    assert s.sentences_kept == 600 and set(lines) == everything


def test_sentencepiece_pieces_never_mix_letters_and_punctuation(persian_sp):
    import unicodedata

    pieces = [p.text for p in read_sentencepiece(persian_sp)]
    assert "\u241f" not in "".join(pieces)
    for p in pieces:
        body = p.lstrip("\u2581")
        letters = [unicodedata.category(c)[0] in "LM" or c == "\u200c" for c in body]
        assert all(letters) or not any(letters), p


def test_train_lowers_new_pieces_to_what_a_small_sample_supports(tmp_path):
    from langadapt.tokenizer.train import train_sentencepiece

    (tmp_path / "s.txt").write_text("\n".join(FA[:3]), encoding="utf-8")
    trained = train_sentencepiece(tmp_path / "s.txt", tmp_path / "sp.model", vocab_size=5000, model_type="bpe",
                                  character_coverage=1.0, seed=0)
    assert trained.requested == 5000 and 30 < trained.learned < 5000


# --------------------------------------------------------------------------- the merge, both families


def test_merge_detects_the_family(merged_pair):
    base, _, merged = merged_pair
    expected = BYTE_LEVEL if "ByteLevel" in base.backend_tokenizer.to_str() else SENTENCEPIECE
    assert merged.family == expected
    assert merged.stats["new_pieces"] > 50


def test_merge_keeps_english_tokenization_identical(merged_pair):
    base, tok, _ = merged_pair
    for text in ENGLISH_PROBES:
        assert tok(text)["input_ids"] == base(text)["input_ids"], text
    batch = [x for x in ENGLISH_PROBES]
    assert tok(batch)["input_ids"] == base(batch)["input_ids"]


def test_merge_roundtrips_every_string(merged_pair):
    base, tok, merged = merged_pair
    for text in MIXED + ENGLISH_PROBES:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == base.decode(base(text, add_special_tokens=False)["input_ids"]), text
        if merged.family == BYTE_LEVEL:
            assert tok.decode(ids) == text


def test_merge_gives_new_ids_after_the_base_and_no_shared_strings(merged_pair):
    base, tok, merged = merged_pair
    base_vocab, vocab = base.get_vocab(), tok.get_vocab()
    assert len(tok) == len(base) + merged.stats["new_tokens"]
    assert sorted(vocab.values()) == list(range(len(tok)))  # every id has exactly one token string
    assert all(vocab[t] == i for t, i in base_vocab.items())  # base ids unchanged
    new_ids = range(len(base), len(tok))
    assert min(new_ids) == merged.first_new_id
    strings = tok.convert_ids_to_tokens(list(range(len(tok))))
    assert len(set(strings)) == len(strings)
    if merged.family == BYTE_LEVEL:  # and the bytes each token stands for
        inverse = {c: b for b, c in enumerate(byte_chars())}
        as_bytes = [bytes(inverse[c] for c in t) for t in strings if t in merged.new_tokens or t in base_vocab
                    and not base.convert_tokens_to_ids(t) in base.all_special_ids]
        assert len(set(as_bytes)) == len(as_bytes)


def test_merge_keeps_special_tokens_and_chat_template(merged_pair):
    base, tok, _ = merged_pair
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == (base.bos_token, base.eos_token, base.unk_token)
    assert tok.convert_tokens_to_ids(tok.eos_token) == base.convert_tokens_to_ids(base.eos_token)
    chat = [{"role": "user", "content": "Hello there"}]
    assert tok.apply_chat_template(chat) == base.apply_chat_template(chat)


def test_merge_shortens_persian_text(merged_pair):
    base, tok, _ = merged_pair
    before = sum(len(base(t)["input_ids"]) for t in FA)
    after = sum(len(tok(t)["input_ids"]) for t in FA)
    assert after < before / 2


def test_byte_level_merge_reproduces_the_sentencepiece_segmentation(persian_sp):
    """Merges in front of the base's replay SentencePiece's BPE inside Persian words."""
    import sentencepiece as spm

    base = byte_level_base("gpt2")
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), read_sentencepiece(persian_sp))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(merged.tokenizer_json))
    sp = spm.SentencePieceProcessor(model_file=str(persian_sp))
    words = {w.strip(".،؛؟") for line in FA for w in line.split()}
    for word in sorted(words):
        expected = [p.replace("\u2581", " ") for p in sp.encode(word, out_type=str)]
        got = [tok.decode([i]) for i in tok.encode(" " + word, add_special_tokens=False).ids]
        assert got == expected, word


def test_byte_level_merge_keeps_a_zwnj_word_in_one_pre_token():
    """SmolLM2's GPT-2 pattern cuts می‌خواهم at the ZWNJ; the extended pattern does not, in Persian only."""
    from tokenizers import Tokenizer

    base = byte_level_base("gpt2")
    pieces = [SpPiece(t, -i) for i, t in enumerate(["\u2581م", "\u2581می", "ی\u200c", "\u2581می\u200c", "خو",
                                                     "اه", "خواه", "خواهم", "\u2581می\u200cخواهم"])]
    pieces += [SpPiece(c, -100 - i) for i, c in enumerate("\u2581میخواهم\u200c")]
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), pieces)
    tok = Tokenizer.from_str(json.dumps(merged.tokenizer_json))
    pre = tok.pre_tokenizer.pre_tokenize_str
    assert [w for w, _ in pre("I said می\u200cخواهم now")] == [
        "I", "Ġsaid", to_byte_level(" می\u200cخواهم"), "Ġnow"]
    assert [w for w, _ in pre("a\u200cb it's")] == [w for w, _ in base.backend_tokenizer.pre_tokenizer.pre_tokenize_str("a\u200cb it's")]
    assert tok.encode("I said می\u200cخواهم").tokens[-1] == to_byte_level(" می\u200cخواهم")


def test_merge_fills_spare_model_rows_with_reserved_ids():
    """A base model with more rows than tokenizer ids (Qwen-style) gets new ids after its rows."""
    base = byte_level_base("gpt2")
    pieces = [SpPiece("\u2581سلام", 0), SpPiece("\u2581س", -1), SpPiece("لام", -2), SpPiece("لا", -3)]
    pieces += [SpPiece(c, -10 - i) for i, c in enumerate("\u2581سلام")]
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), pieces, base_rows=len(base) + 5)
    assert merged.reserved == 5
    vocab = merged.tokenizer_json["model"]["vocab"]
    assert vocab[to_byte_level(" سلام")] >= len(base) + 5
    assert sorted(set(vocab.values()) | {t["id"] for t in merged.tokenizer_json["added_tokens"]}) == list(range(merged.size))


def test_merge_refuses_pieces_without_target_letters():
    from langadapt.errors import LangadaptError

    base = byte_level_base("gpt2")
    with pytest.raises(LangadaptError, match="no non-ASCII letters"):
        merge_pieces(json.loads(base.backend_tokenizer.to_str()), [SpPiece("\u2581the", 0), SpPiece("t", -1)])


# --------------------------------------------------------------------------- embeddings


def _hand_base():
    """A byte-level tokenizer whose id for each byte is the byte's value, plus the merge Ġ+t."""
    chars = byte_chars()
    vocab = {chars[b]: b for b in range(256)}
    vocab["Ġt"] = 256
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                                "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": [["Ġ", "t"]]}}


@pytest.mark.parametrize("tied", [True, False])
def test_mean_initialisation_matches_a_hand_computed_case(tied):
    """ب is bytes D8 A8 (ids 216, 168); " ب" adds the space (id 32). Row i of the base is i everywhere,
    row i of an untied head is -i, so the new rows are the position-weighted means (weights 0.9:1.1 and
    0.9:1.0:1.1, normalized) 0.45*216 + 0.55*168 = 189.6 and 0.3*32 + 216/3 + 1.1*168/3 = 143.2, negated in the head."""
    import torch

    from langadapt.tokenizer.embeddings import resize_and_init

    merged = merge_pieces(_hand_base(), [SpPiece("\u2581ب", 0), SpPiece("\u2581", -1), SpPiece("ب", -2)])
    assert merged.new_tokens == ["Ø¨", "ĠØ¨"] and merged.first_new_id == 257
    assert merged.spellings == [[216, 168], [32, 216, 168]]
    model = tiny_llama(vocab_size=257, tied=tied)
    with torch.no_grad():
        model.get_input_embeddings().weight[:] = torch.arange(257.0)[:, None]
        if not tied:
            model.get_output_embeddings().weight[:] = -torch.arange(257.0)[:, None]
    spellings = {merged.first_new_id + i: s for i, s in enumerate(merged.spellings)}
    resized = resize_and_init(model, 259, spellings, init="mean")
    emb = model.get_input_embeddings().weight
    assert resized.tied == tied and emb.shape[0] == 259 and model.config.vocab_size == 259
    assert torch.allclose(emb[257], torch.full_like(emb[257], 189.6))
    assert torch.allclose(emb[258], torch.full_like(emb[258], 143.2))
    head = model.get_output_embeddings().weight
    if tied:
        assert head.data_ptr() == emb.data_ptr()
    else:
        assert torch.allclose(head[257], torch.full_like(head[257], -189.6))
        assert torch.allclose(head[258], torch.full_like(head[258], -143.2))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("init", ["mean", "plain"])
def test_resize_keeps_existing_rows_bit_identical(tied, init):
    import torch

    from langadapt.tokenizer.embeddings import resize_and_init

    model = tiny_llama(vocab_size=100, tied=tied)
    emb = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    resize_and_init(model, 192, {100: [1, 2], 101: [3]}, init=init, seed=1)
    assert torch.equal(model.get_input_embeddings().weight[:100], emb)
    assert torch.equal(model.get_output_embeddings().weight[:100], head)
    new = model.get_input_embeddings().weight[100]
    if init == "mean":
        assert torch.allclose(new, 0.45 * emb[1] + 0.55 * emb[2])
    else:
        assert not torch.allclose(new, 0.45 * emb[1] + 0.55 * emb[2])
        assert new.std() < 0.1  # the model's own small-normal initialisation
    assert torch.allclose(model.get_input_embeddings().weight[150], emb.mean(0))  # padding row: no spelling
    out = model(torch.tensor([[1, 100, 191]]))
    assert out.logits.shape == (1, 3, 192)


def test_every_word_splitting_step_of_a_byte_level_pre_tokenizer_is_extended():
    """A pre-tokenizer with two splitting steps (a regex Split, then ByteLevel with its own regex)."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    base = byte_level_base("gpt2")
    base.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d"), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    pieces = [SpPiece("\u2581آن\u200cگونه", 0), SpPiece("\u2581آن", -1), SpPiece("\u200cگونه", -2), SpPiece("گونه", -3),
              SpPiece("گو", -4), SpPiece("نه", -5), SpPiece("\u2581آ", -6)]
    pieces += [SpPiece(c, -10 - i) for i, c in enumerate("\u2581آنگوه\u200c")]
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), pieces)
    tok = Tokenizer.from_str(json.dumps(merged.tokenizer_json))
    assert tok.encode("x1 آن\u200cگونه").tokens == ["x", "1", to_byte_level(" آن\u200cگونه")]
    for text in ENGLISH_PROBES:
        assert tok.encode(text).ids == base.backend_tokenizer.encode(text).ids


def test_unigram_pieces_merge_too(tmp_path):
    """model_type: unigram has no merge order; pieces are built from any split into known pieces."""
    from tokenizers import Tokenizer

    from langadapt.tokenizer.train import train_sentencepiece

    (tmp_path / "fa.txt").write_text("\n".join(FA * 2), encoding="utf-8")
    sp = train_sentencepiece(tmp_path / "fa.txt", tmp_path / "sp.model", vocab_size=200, model_type="unigram",
                             character_coverage=1.0, seed=0)
    base = byte_level_base("gpt2")
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), read_sentencepiece(sp.model_path))
    tok = Tokenizer.from_str(json.dumps(merged.tokenizer_json))
    assert merged.stats["new_pieces"] > 50
    for text in ENGLISH_PROBES:
        assert tok.encode(text).ids == base.backend_tokenizer.encode(text).ids
    for text in FA:
        assert tok.decode(tok.encode(text).ids) == text
    assert sum(len(tok.encode(t).ids) for t in FA) < sum(len(base.backend_tokenizer.encode(t).ids) for t in FA) / 2
