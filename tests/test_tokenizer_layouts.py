"""The merge on the layouts real bases ship (issue 13), built small in the test.

Each stand-in copies how a family lays out its hub ``tokenizer.json`` and its model's rows:

- llama2 / mistral: SentencePiece BPE with byte fallback, specials and control tokens inside the vocabulary;
- gemma: SentencePiece BPE without a prefix space, turn markers inside the vocabulary, model rows padded;
- llama3: byte-level BPE with its split regex, specials *only* in ``added_tokens`` after the vocabulary,
  a template post-processor adding ``<|begin_of_text|>``, untied head;
- qwen2: byte-level BPE with an NFC normalizer, specials only in ``added_tokens``, more model rows than
  tokens (151,936 rows for 151,665 tokens in the real one), untied head;
- gpt2: byte-level BPE, ``<|endoftext|>`` as the last vocabulary entry;
- gguf: byte-level with specials inside the vocabulary plus one added token that is not (what a
  GGUF file's tokenizer looks like once transformers has read it and a pad token was added);
- gap: added tokens with a hole in their ids.
"""

from __future__ import annotations

import json

import pytest

from test_tokenizer import CHAT, EN, ENGLISH_PROBES, FA, LLAMA3_PATTERN, MIXED, persian_sp, sentencepiece_base  # noqa: F401

from langadapt.tokenizer.merge import BYTE_LEVEL, merge_pieces, read_sentencepiece

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|reserved_special_token_4|>",
                   "<|eot_id|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>"]
LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] }}<|eot_id|>{% endfor %}")
EXTRA_PROBES = ["a\u200cb and a\u200db", "family: 👨\u200d👩\u200d👧 and 🏳\ufe0f\u200d🌈", "x\u200c"]
"""Zero-width (non-)joiners without a target letter: emoji sequences, a stray ZWNJ between Latin letters."""
CURLY = ["“Curly” quotes — and dashes – that real byte-level vocabularies know… ‘well’."]
"""Real byte-level BPEs hold E2 80 (first two bytes of these marks and of the ZWNJ) as one token."""
RAW_FA = ["كتاب‌هاي زيادي در كتابخانه‌ي شهر ما وجود دارد.", "ما مي‌خواهيم فردا به كوه برويم."]
"""FA sentences as they are often typed: Arabic kaf (ك) and yeh (ي) instead of Persian ک and ی."""


def _added(content: str, i: int, special: bool = True) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": not special, "special": special}


def _byte_level_json(pattern: str | None, specials_in_vocab: list[str] = ()) -> dict:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if pattern is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials_in_vocab),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(EN * 3 + CURLY * 5, trainer)
    return json.loads(tok.to_str())


def _append_added(tj: dict, names: list[str], start: int) -> None:
    """Specials Llama-3/Qwen2-style: in ``added_tokens`` only, at ids from ``start``."""
    tj["added_tokens"] += [_added(n, start + k) for k, n in enumerate(names)]


def _wrap(tj: dict, **kw):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tj)), **kw)


def build_layout(name: str, tmp_path):
    """(base tokenizer, model rows, tied head) for one layout."""
    if name in ("llama2", "mistral", "gemma"):
        sp = sentencepiece_base(tmp_path, "json")
        tj = json.loads(sp.backend_tokenizer.to_str())
        vocab = tj["model"]["vocab"]
        extra = {"mistral": ["[INST]", "[/INST]"], "gemma": ["<start_of_turn>", "<end_of_turn>"]}.get(name, [])
        for n in extra:  # control tokens inside the vocabulary, as both ship them
            vocab[n] = len(vocab)
            tj["added_tokens"].append(_added(n, vocab[n]))
        if name == "gemma":  # no prefix space: a Replace normalizer and no pre-tokenizer
            tj["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
            tj["pre_tokenizer"] = None
            tj["decoder"]["decoders"] = [d for d in tj["decoder"]["decoders"] if d["type"] != "Strip"]
        chat = CHAT.replace("<|im_start|>", extra[0] if extra else "<s>").replace("<|im_end|>", extra[1] if extra else "</s>")
        tok = _wrap(tj, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=chat)
        return tok, len(tok) + (38 if name == "gemma" else 0), name == "gemma"
    if name in ("llama3", "qwen2"):
        tj = _byte_level_json(LLAMA3_PATTERN if name == "llama3" else QWEN2_PATTERN)
        n = len(tj["model"]["vocab"])
        specials = LLAMA3_SPECIALS if name == "llama3" else QWEN2_SPECIALS
        _append_added(tj, specials, n)
        if name == "llama3":
            tj["post_processor"] = {"type": "TemplateProcessing",
                                    "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                               {"Sequence": {"id": "A", "type_id": 0}}],
                                    "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                             {"Sequence": {"id": "A", "type_id": 0}},
                                             {"Sequence": {"id": "B", "type_id": 1}}],
                                    "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [n],
                                                                             "tokens": ["<|begin_of_text|>"]}}}
            tok = _wrap(tj, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_CHAT)
            return tok, len(tok), False
        tj["normalizer"] = {"type": "NFC"}
        tok = _wrap(tj, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT)
        return tok, len(tok) + 59, False  # Qwen pads its rows well past its tokens
    if name == "gpt2":
        tj = _byte_level_json(None)
        vocab = tj["model"]["vocab"]
        vocab["<|endoftext|>"] = len(vocab)
        tj["added_tokens"].append(_added("<|endoftext|>", vocab["<|endoftext|>"]))
        tok = _wrap(tj, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
        return tok, len(tok), True
    if name == "gguf":
        tj = _byte_level_json(None, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        _append_added(tj, ["<|pad|>"], len(tj["model"]["vocab"]))
        tok = _wrap(tj, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|pad|>", chat_template=CHAT)
        return tok, len(tok) - 1, True  # the added pad token has no model row (tokens > rows)
    if name == "gap":
        tj = _byte_level_json(QWEN2_PATTERN)
        n = len(tj["model"]["vocab"])
        tj["added_tokens"] += [_added("<|im_start|>", n), _added("<|im_end|>", n + 1), _added("<|tool|>", n + 3)]
        tok = _wrap(tj, eos_token="<|im_end|>", chat_template=CHAT)
        return tok, n + 4, False
    raise KeyError(name)


LAYOUTS = ["llama2", "mistral", "gemma", "llama3", "qwen2", "gpt2", "gguf", "gap"]


def merge_layout(name: str, tmp_path, sp_model):
    """(name, base, merged HF tokenizer loaded from its folder, MergedTokenizer, base rows)."""
    from transformers import AutoTokenizer

    from langadapt.tokenizer.stage import save_tokenizer

    base, rows, _ = build_layout(name, tmp_path)
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), read_sentencepiece(sp_model), base_rows=rows)
    out = tmp_path / "merged"
    out.mkdir()
    save_tokenizer(base, merged.tokenizer_json, out, pad_token=None, pad_id=None)
    return name, base, AutoTokenizer.from_pretrained(out), merged, rows


@pytest.fixture(params=LAYOUTS)
def layout(request, tmp_path, persian_sp):
    return merge_layout(request.param, tmp_path, persian_sp)


def _added_tokens(tok) -> dict[int, tuple[str, bool]]:
    return {i: (t.content, t.special) for i, t in tok.backend_tokenizer.get_added_tokens_decoder().items()}


def test_every_base_token_and_added_token_keeps_its_id(layout):
    _, base, tok, merged, _ = layout
    vocab = tok.get_vocab()
    assert all(vocab.get(t) == i for t, i in base.get_vocab().items())
    after = _added_tokens(tok)
    assert all(after.get(i) == v for i, v in _added_tokens(base).items())
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if getattr(base, attr) is not None:
            assert (getattr(tok, attr), getattr(tok, attr + "_id")) == (getattr(base, attr), getattr(base, attr + "_id"))


def test_no_id_is_shared_and_every_id_maps_back(layout):
    _, base, tok, merged, rows = layout
    vocab = tok.get_vocab()
    assert sorted(vocab.values()) == list(range(len(tok))) == list(range(merged.size))
    strings = tok.convert_ids_to_tokens(list(range(len(tok))))
    assert len(set(strings)) == len(strings)
    assert tok.convert_tokens_to_ids(strings) == list(range(len(tok)))


def test_new_ids_come_after_every_id_and_row_the_base_uses(layout):
    _, base, tok, merged, rows = layout
    base_ids = max(base.get_vocab().values()) + 1
    assert merged.first_new_id == max(base_ids, rows)
    assert merged.stats["new_ids"] == [[merged.first_new_id, merged.size - 1]]
    new = set(range(merged.first_new_id, merged.size))
    assert all(t not in base.get_vocab() for t in tok.convert_ids_to_tokens(sorted(new)))
    # Every id below the new ones that the base did not use is a reserved filler, marked special.
    fillers = set(range(merged.first_new_id)) - set(base.get_vocab().values())
    assert set(merged.reserved_ids) == fillers
    assert all(_added_tokens(tok)[i][1] for i in fillers)


def test_english_and_other_scripts_keep_their_ids(layout):
    name, base, tok, _, _ = layout
    joiners = EXTRA_PROBES if tok.backend_tokenizer.decoder.__class__.__name__ == "ByteLevel" else []
    for text in ENGLISH_PROBES + joiners:  # SentencePiece family: a joiner the pieces use is a character of theirs
        assert tok(text)["input_ids"] == base(text)["input_ids"], text
    assert tok(ENGLISH_PROBES)["input_ids"] == base(ENGLISH_PROBES)["input_ids"]


def test_persian_roundtrips_and_never_decodes_as_a_special_token(layout):
    _, base, tok, merged, _ = layout
    for text in MIXED:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == base.decode(base(text, add_special_tokens=False)["input_ids"]), text
        assert tok.decode(ids, skip_special_tokens=True) == tok.decode(ids), text
        if merged.family == BYTE_LEVEL:
            assert tok.decode(ids) == text
    assert sum(len(tok(t)["input_ids"]) for t in FA) < sum(len(base(t)["input_ids"]) for t in FA) / 2


@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "gpt2"])  # GPT-2 ships no chat template
def test_chat_template_renders_the_same_special_ids(name, tmp_path, persian_sp):
    _, base, tok, _, _ = merge_layout(name, tmp_path, persian_sp)
    chat = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi!"}]
    text = base.apply_chat_template(chat, tokenize=False)
    assert tok.apply_chat_template(chat, tokenize=False) == text
    assert tok(text, add_special_tokens=False)["input_ids"] == base(text, add_special_tokens=False)["input_ids"]
    specials = set(base.all_special_ids) | set(_added_tokens(base))
    assert specials & set(base(text, add_special_tokens=False)["input_ids"])  # the template does use them


# --------------------------------------------------------------------------- the normalizer


@pytest.mark.parametrize("name", ["llama2", "llama3", "qwen2"])
def test_normalizer_makes_arabic_yeh_and_kaf_cost_what_persian_ones_do(name, tmp_path, persian_sp):
    from langadapt.clean.normalize import char_map, normalize
    from langadapt.tokenizer.merge import add_normalizer, target_characters
    from langadapt.tokenizer.stage import save_tokenizer
    from transformers import AutoTokenizer

    base, rows, _ = build_layout(name, tmp_path)
    pieces = read_sentencepiece(persian_sp)
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), pieces, base_rows=rows)
    rewrites = add_normalizer(merged.tokenizer_json, char_map("fa"), target_characters(pieces)[0])
    assert {"\u064a", "\u0643", "\u0649"} <= set(rewrites)  # ي ك ى
    assert not any(k.isdigit() for k in rewrites)  # digits and punctuation keep their ids
    out = tmp_path / "merged"
    out.mkdir()
    save_tokenizer(base, merged.tokenizer_json, out, pad_token=None, pad_id=None)
    tok = AutoTokenizer.from_pretrained(out)
    for raw in RAW_FA:
        clean = normalize(raw, "fa")
        assert clean != raw
        assert tok(raw)["input_ids"] == tok(clean)["input_ids"]
        assert len(tok(raw)["input_ids"]) < len(base(raw)["input_ids"]) / 2
    joiners = EXTRA_PROBES if merged.family == BYTE_LEVEL else []  # SentencePiece family: see merge.py
    for text in ENGLISH_PROBES + joiners + ["Привет мир", "日本語のテキスト", "١٢٣ ، ؛ ؟"]:
        assert tok(text)["input_ids"] == base(text)["input_ids"], text


def test_normalizer_is_only_for_letters_near_the_target_script():
    from langadapt.clean.normalize import char_map
    from langadapt.tokenizer.merge import add_normalizer

    tj = {"normalizer": None}
    assert add_normalizer(tj, char_map("hi"), set("हिन्दी")) == {} and tj["normalizer"] is None  # Arabic tatweel: not Hindi's business
    assert set(add_normalizer(tj, char_map("fa", "latin"), set("فارسی"))) == set("\u0640يىكة")


# --------------------------------------------------------------------------- embeddings of the new rows


def test_anagram_pieces_get_different_rows():
    """ان and نا are spelled by the same two tokens; position weights keep their rows apart."""
    import torch

    from langadapt.tokenizer.embeddings import mean_rows, position_weights

    w = torch.randn(10, 8)
    rows = mean_rows(w, [[3, 7], [7, 3], [3, 7, 7], [5], []])
    assert not torch.allclose(rows[0], rows[1])
    assert torch.allclose(rows[0] + rows[1], w[3] + w[7])  # still a mean, only weighted
    assert torch.allclose(rows[3], w[5]) and torch.allclose(rows[4], w.mean(0))
    assert abs(sum(position_weights(5)) - 1) < 1e-9 and position_weights(3)[0] < position_weights(3)[2]


@pytest.mark.parametrize("name", ["qwen2", "gguf"])
def test_stage_resizes_rows_and_tokens_that_differ(name, tmp_path, persian_sp):
    """Rows > tokens (Qwen2, untied): new rows start after the model's rows. Tokens > rows (an added token
    without a row): the base's token gets a row, new ones follow. Old rows stay bit-identical."""
    import torch

    from conftest import tiny_llama
    from langadapt.tokenizer.embeddings import resize_and_init

    base, rows, tied = build_layout(name, tmp_path)
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), read_sentencepiece(persian_sp), base_rows=rows)
    model = tiny_llama(vocab_size=rows, tied=tied)
    old = model.get_input_embeddings().weight.detach().clone()
    spellings = {merged.first_new_id + i: s for i, s in enumerate(merged.spellings)}
    resize_and_init(model, merged.size, spellings, init="mean")
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == merged.size and torch.equal(emb[:rows], old)
    assert torch.isfinite(emb).all() and torch.isfinite(model.get_output_embeddings().weight).all()
    assert merged.first_new_id == max(rows, len(base))
    if name == "gguf":
        assert merged.reserved_ids == [] and merged.first_new_id == rows + 1
    else:
        assert merged.reserved_ids == list(range(len(base), rows))


# --------------------------------------------------------------------------- transformers 4.x

LOAD_IN_4X = """
import json, sys
import transformers
from transformers import AutoTokenizer
cases = json.load(open(sys.argv[1], encoding="utf-8"))
out = {"version": transformers.__version__}
for folder, case in cases.items():
    tok = AutoTokenizer.from_pretrained(folder)
    chat = tok.apply_chat_template(case["chat"], tokenize=False) if case["chat"] else None
    out[folder] = {"ids": [tok(t)["input_ids"] for t in case["texts"]], "chat": chat,
                   "class": type(tok).__name__, "eos": tok.eos_token_id, "len": len(tok)}
json.dump(out, open(sys.argv[2], "w", encoding="utf-8"))
"""


def transformers4_python(tmp_path_factory) -> str:
    """A Python with transformers 4.x (no torch): LANGADAPT_TF4_PYTHON, or a venv made once under ~/.cache."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    given = os.environ.get("LANGADAPT_TF4_PYTHON")
    if given:
        return given
    venv = Path.home() / ".cache" / "langadapt-tests" / "transformers4"
    python = venv / "bin" / "python"
    if not (venv / "ready").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "transformers>=4.44,<5", "jinja2"],
                             capture_output=True, text=True)
        if pip.returncode != 0:
            pytest.skip(f"cannot install transformers 4.x from PyPI here: {pip.stderr.strip()[-300:]}")
        (venv / "ready").write_text("ok", encoding="utf-8")
    return str(python)


@pytest.mark.slow
def test_merged_folders_load_with_the_same_ids_in_transformers_4(tmp_path, tmp_path_factory, persian_sp):
    """vLLM, TGI and GGUF converters often run transformers 4.x: its AutoTokenizer must load the folder
    (5.x writes a class name 4.x does not know) and give the ids 5.x gives."""
    import subprocess

    from transformers import AutoTokenizer

    from langadapt.tokenizer.stage import save_tokenizer

    python = transformers4_python(tmp_path_factory)
    cases, expected = {}, {}
    chat = [{"role": "user", "content": "سلام، حالت چطور است؟"}, {"role": "assistant", "content": "Fine!"}]
    for name in ("llama2", "llama3", "qwen2"):
        (tmp_path / name).mkdir()
        base, rows, _ = build_layout(name, tmp_path / name)
        merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), read_sentencepiece(persian_sp),
                              base_rows=rows)
        out = tmp_path / name / "merged"
        out.mkdir()
        save_tokenizer(base, merged.tokenizer_json, out, pad_token="<|langadapt_pad|>", pad_id=merged.size)
        tok = AutoTokenizer.from_pretrained(out)
        texts = ENGLISH_PROBES[:4] + FA[:6] + MIXED[-3:]
        cases[str(out)] = {"texts": texts, "chat": chat}
        expected[str(out)] = {"ids": [tok(t)["input_ids"] for t in texts],
                              "chat": tok.apply_chat_template(chat, tokenize=False), "eos": tok.eos_token_id,
                              "len": len(tok)}
    (tmp_path / "cases.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    run = subprocess.run([python, "-c", LOAD_IN_4X, str(tmp_path / "cases.json"), str(tmp_path / "got.json")],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads((tmp_path / "got.json").read_text(encoding="utf-8"))
    assert got.pop("version").startswith("4.")
    for folder, want in expected.items():
        assert got[folder]["class"] == "PreTrainedTokenizerFast"
        assert {k: got[folder][k] for k in want} == want, folder
