"""Merge SentencePiece pieces into a base Hugging Face tokenizer of either family.

How the merge works, and why
----------------------------
Two families of base tokenizer are in use, and both are a vocabulary plus an ordered merge list:

* SentencePiece-style BPE (Llama-2, Mistral, TinyLlama): spaces become "▁"; the BPE model works on
  characters and falls back to byte tokens (``<0xD8>``) for characters it does not know.
* byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM2): a regular expression cuts the text into
  pre-tokens, every byte is shown as a printable character ("Ġ" is the space), and the BPE model
  merges those.

We add (1) the target-language characters as tokens, (2) every new piece as a token, and (3) the
merges that build each piece from two smaller pieces, ordered as the SentencePiece model scores
them. These merges go *in front of* the base merges. BPE always applies the highest-priority merge
available, so inside a target-language word the merged tokenizer first replays the SentencePiece
segmentation; appended at the end instead, they would only see what the base merges left of the
word (byte pairs in arbitrary places) and most of them would never fire.

Putting merges in front cannot change English: every merge we put there produces a token holding a
whole target-language character, so it fires only in text that has that character. Base merges keep
their relative order; a base merge we need too (the one joining the two bytes of "ا", say) moves to
the front, which again only matters where that character occurs. Pieces without a target letter
("▁(", "!»") are skipped, since they would change English; pieces mixing letters with punctuation
or digits never form inside a byte-level pre-token, and `train` keeps SentencePiece from learning them.

Target-language characters are the non-ASCII letters and marks among the SentencePiece model's
characters, plus the zero-width non-joiner and joiner when it learned them (for Persian: the
Arabic-script letters and ZWNJ). Text with none of them tokenizes to exactly the base's ids. (One
exception, SentencePiece-family bases only: a joiner the pieces use becomes a character of the
vocabulary, so a stray U+200C in other text is one token instead of three byte tokens; byte-level
bases keep even that text identical.)

Ids
---
Every id the base uses keeps its token: the BPE vocabulary, the added and special tokens, and the
rows of the base model. New tokens start after the highest of them. Llama-3 and Qwen2 keep their
specials only in ``added_tokens`` (after the vocabulary), where `tokenizers` would renumber them
on load once anything follows the vocabulary; `pin_added_tokens` writes them into the vocabulary
at their own ids first. Ids no base token used below the new ones (a model padded to more rows
than tokens, as Qwen2's 151,936 rows for 151,665 tokens) get reserved special tokens, so no id is
empty and no new token takes a row that belonged to something else. `add_normalizer` gives the
merged tokenizer the clean stage's letter rewrites (Persian: Arabic yeh/kaf), so raw text costs
what the clean text the pieces were trained on costs.

The ZWNJ problem (byte-level bases)
-----------------------------------
SmolLM2's GPT-2 pattern (`` ?\\p{L}+``) ends a word at U+200C, the zero-width non-joiner Persian
writes inside words (می‌خواهم), so such a word costs at least three pre-tokens whatever merges we
add, and merges trained across the ZWNJ ("▁می‌") can never apply. For byte-level bases we therefore
put one alternative in front of the base pattern: a target letter followed by letters, marks and
joiners, with the optional leading space. A regex split takes matches left to right; where
the new alternative cannot match - everywhere in text without a target letter - the base pattern
matches exactly as before, so English pre-tokens, and hence ids, are unchanged, while a Persian word
becomes one pre-token in which the SentencePiece merges can build pieces across the ZWNJ.

The ZWNJ itself is three bytes (E2 80 8C) whose first two it shares with curly quotes and dashes,
so it cannot be built from its bytes ahead of the base merges. A piece holding it is built by taking
the ZWNJ's bytes one at a time onto the neighbouring part, which holds a letter ("ه" + E2, + 80,
+ 8C = "ه‌"), so every step yields a token with a whole Persian letter. A ZWNJ that no piece absorbs
keeps the base's tokens (SmolLM2: ``âĢ`` + ``Į``): a merge completing the bare character would hold
no letter and change text without one ("a\u200cb", ZWJ emoji sequences). For other 3- and
4-byte scripts a character is built from its byte prefix in front only when every character sharing
that prefix is a letter, mark or number (never for punctuation blocks).

Measured (bench/tokenizer_bench.py, 20,000 pieces from Persian poems and the Quran into SmolLM2):
1.44 tokens per word on ParsiNLU reviews at 69,289 tokens (base 4.76, SentencePiece alone 1.42),
English identical. Appending the merges instead: 2.36. Keeping the GPT-2 pattern: the same on the
reviews, which rarely write the ZWNJ, but 1.51 instead of 1.31 on verses that do.
"""

from __future__ import annotations

import copy
import itertools
import json
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from langadapt.errors import LangadaptError

BYTE_LEVEL = "byte-level"
SENTENCEPIECE = "sentencepiece"
SP_SPACE = "\u2581"  # SentencePiece's stand-in for a space
JOINERS = frozenset("\u200c\u200d")  # zero-width non-joiner and joiner: inside words in Persian, Indic scripts
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
"""The pattern tokenizers' ByteLevel pre-tokenizer applies when ``use_regex`` is true."""
RESERVED = "<|langadapt_reserved_{}|>"


@dataclass(frozen=True)
class SpPiece:
    text: str
    score: float


def read_sentencepiece(path: str | Path) -> list[SpPiece]:
    """The normal pieces of a SentencePiece model, best score first (for BPE: merge order)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    rows = []
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i):
            continue
        rows.append((-sp.get_score(i), i, sp.id_to_piece(i)))
    return [SpPiece(text, -neg) for neg, _, text in sorted(rows)]


# --------------------------------------------------------------------------- characters


@lru_cache(maxsize=1)
def byte_chars() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for themselves, the
    other 68 are moved, in byte order, to U+0100 and up (so the space, byte 32, is "Ġ")."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, moved = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(0x100 + moved))
            moved += 1
    return tuple(out)


def to_byte_level(text: str) -> str:
    table = byte_chars()
    return "".join(table[b] for b in text.encode("utf-8"))


def is_letter(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LM"


def target_characters(pieces: list[SpPiece]) -> tuple[frozenset[str], frozenset[str]]:
    """(letters, joiners): the non-ASCII letters and marks of the pieces, and the joiners among them."""
    chars = {c for p in pieces for c in p.text}
    letters = frozenset(c for c in chars if ord(c) > 0x7F and is_letter(c))
    return letters, frozenset(chars & JOINERS)


@lru_cache(maxsize=4096)
def _prefix_is_letters_only(prefix: bytes) -> bool:
    """Whether every character whose UTF-8 form starts with ``prefix`` is a letter, mark, number or
    unassigned: only then may a token for the prefix be built ahead of the base merges."""
    lead = prefix[0]
    length = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    for tail in itertools.product(range(0x80, 0xC0), repeat=length - len(prefix)):
        try:
            ch = (prefix + bytes(tail)).decode("utf-8")
        except UnicodeDecodeError:
            continue  # overlong forms and surrogates are not characters
        if unicodedata.category(ch)[0] not in "LMN" and unicodedata.category(ch) != "Cn":
            return False
    return True


def _char_class(chars) -> str:
    """A regex character class body for ``chars``, as Oniguruma ``\\x{...}`` ranges."""
    cps = sorted({ord(c) for c in chars})
    parts = []
    for _, run in itertools.groupby(enumerate(cps), key=lambda t: t[1] - t[0]):
        run = [cp for _, cp in run]
        parts.append(f"\\x{{{run[0]:X}}}" if len(run) == 1 else f"\\x{{{run[0]:X}}}-\\x{{{run[-1]:X}}}")
    return "".join(parts)


def target_word_pattern(letters, joiners) -> str:
    """A target-language word: optional space, a target letter, then letters, marks and joiners.

    Starting with a target letter makes the alternative fail at the first character of an English
    word, so the base pattern's speed on English is nearly kept.
    """
    return f" ?[{_char_class(letters)}][\\p{{L}}\\p{{M}}{_char_class(joiners)}]*"


# --------------------------------------------------------------------------- the base tokenizer


def _flat(node: dict | None, key: str) -> list[dict]:
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [x for child in node.get(key, []) for x in _flat(child, key)]
    return [node]


def detect_family(tj: dict) -> str:
    """BYTE_LEVEL or SENTENCEPIECE for a tokenizer.json; LangadaptError for anything else."""
    model = tj.get("model") or {}
    kind = model.get("type")
    if kind != "BPE":
        raise LangadaptError(f"the base tokenizer's model is {kind or 'of unknown type'}; langadapt merges pieces into "
                             "BPE tokenizers only (SentencePiece-style BPE with byte fallback, or byte-level BPE)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise LangadaptError("the base tokenizer's BPE uses a subword prefix/suffix, which langadapt cannot merge into")
    parts = _flat(tj.get("pre_tokenizer"), "pretokenizers") + _flat(tj.get("decoder"), "decoders")
    if any(p.get("type") == "ByteLevel" for p in parts):
        return BYTE_LEVEL
    normalizers = _flat(tj.get("normalizer"), "normalizers")
    if (model.get("byte_fallback") or any(p.get("type") == "Metaspace" for p in parts)
            or any(n.get("type") == "Replace" and n.get("content") == SP_SPACE for n in normalizers)):
        return SENTENCEPIECE
    raise LangadaptError("the base tokenizer is neither byte-level BPE nor SentencePiece-style BPE "
                         "(no ByteLevel, Metaspace or byte fallback found in its tokenizer.json)")


def _space_symbol(tj: dict) -> str:
    """The character a SentencePiece-style base writes for a space (nearly always "▁")."""
    for p in _flat(tj.get("pre_tokenizer"), "pretokenizers"):
        if p.get("type") == "Metaspace":
            return p.get("replacement", SP_SPACE)
    for n in _flat(tj.get("normalizer"), "normalizers"):
        if n.get("type") == "Replace" and n.get("pattern", {}).get("String") == " ":
            return n["content"]
    return SP_SPACE


def rewrite_pre_tokenizer(pre: dict | None, word: str) -> tuple[dict | None, bool]:
    """The base pre-tokenizer with ``word`` tried before each of its word-splitting patterns; (new, changed)."""
    out: list[dict] = []
    changed = False
    for item in copy.deepcopy(_flat(pre, "pretokenizers")):
        if (item.get("type") == "Split" and "Regex" in item.get("pattern", {})
                and item.get("behavior") == "Isolated" and not item.get("invert")):
            out.append({**item, "pattern": {"Regex": f"{word}|(?:{item['pattern']['Regex']})"}})
            changed = True
        elif item.get("type") == "ByteLevel" and item.get("use_regex", True):
            if item.get("add_prefix_space"):
                # ByteLevel prepends its space to every piece a preceding split made, not once per text.
                raise LangadaptError("the base tokenizer's byte-level pre-tokenizer adds a prefix space; "
                                     "langadapt cannot extend that pre-tokenizer without changing English tokenization")
            out.append({"type": "Split", "pattern": {"Regex": f"{word}|(?:{GPT2_PATTERN})"},
                        "behavior": "Isolated", "invert": False})
            out.append({**item, "use_regex": False})
            changed = True
        else:
            out.append(item)
    if not changed:
        return pre, False  # no word pattern (the whole text is one pre-token): nothing splits target words
    return {"type": "Sequence", "pretokenizers": out}, True


def add_normalizer(tj: dict, mapping: dict[str, str], letters) -> dict[str, str]:
    """Give the tokenizer.json dict ``tj`` a normalizer that rewrites characters of ``mapping`` (to the
    value; "" deletes) after the base's own normalizer; return the rewrites it applies.

    The pieces were trained on text the clean stage normalized (Persian: Arabic yeh/kaf to Persian),
    so raw text written the other way would cost far more tokens. Only letters in the Unicode range
    of the target ``letters`` (the same 256 code points as one of them) are rewritten, so English,
    other scripts, digits and punctuation keep their ids.
    """
    blocks = {ord(c) >> 8 for c in letters}
    mapping = {k: v for k, v in sorted(mapping.items())
               if len(k) == 1 and ord(k) > 0x7F and is_letter(k) and ord(k) >> 8 in blocks}
    if mapping:
        steps = [{"type": "Replace", "pattern": {"String": k}, "content": v} for k, v in mapping.items()]
        base = tj.get("normalizer")
        tj["normalizer"] = {"type": "Sequence", "normalizers": ([base] if base else []) + steps}
    return mapping


def json_ids(tj: dict) -> int:
    """How many ids the tokenizer uses: its highest id (model vocabulary or added token) plus one."""
    ids = list(tj["model"]["vocab"].values()) + [t["id"] for t in tj.get("added_tokens", [])]
    return max(ids) + 1


def pin_added_tokens(tj: dict) -> int:
    """Write every added token that lives only in ``added_tokens`` into the model vocabulary at its id;
    return how many were written. ``tj`` is changed in place.

    Llama-3 and Qwen2 keep their special tokens only in ``added_tokens``, at ids after the BPE
    vocabulary. On load, `tokenizers` gives such a token the id ``len(model vocabulary) + k``, which
    is its own id only while nothing follows the vocabulary; once new pieces are appended, the
    specials would move (bos 128000 -> 146034 on Llama-3) and collide with new pieces. Inside the
    vocabulary a token keeps its id. The BPE model never produces these strings itself (no merge
    builds them, and the added-token pass takes them out of the text first), so tokenization is unchanged.
    """
    vocab = tj["model"]["vocab"]
    owner = {i: t for t, i in vocab.items()}
    pinned = 0
    for t in tj.get("added_tokens", []):
        content, i = t["content"], t["id"]
        if content in vocab:
            if vocab[content] != i:
                raise LangadaptError(f"the base tokenizer.json gives {content!r} id {i} as an added token but id "
                                     f"{vocab[content]} in its vocabulary; the file is inconsistent")
            continue
        if i in owner:
            raise LangadaptError(f"the base tokenizer.json gives id {i} to both the added token {content!r} and the "
                                 f"vocabulary entry {owner[i]!r}; the file is inconsistent")
        vocab[content] = i
        owner[i] = content
        pinned += 1
    return pinned


def id_ranges(ids) -> list[list[int]]:
    """Sorted ids as [first, last] runs, for reports (``[[49152, 69000]]`` rather than 20,000 numbers)."""
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def model_only(tj: dict):
    """A `tokenizers.Tokenizer` of the BPE model alone: tokenizes a token string as the model sees it."""
    from tokenizers import Tokenizer

    bare = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": None, "post_processor": None, "decoder": None, "model": tj["model"]}
    return Tokenizer.from_str(json.dumps(bare))


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    pairs = []
    for m in model.get("merges", []):
        pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        if len(pair) != 2:
            raise LangadaptError(f"the base tokenizer.json has a merge that is not a pair of tokens: {m!r}")
        pairs.append(pair)
    return pairs


# --------------------------------------------------------------------------- the merge


@dataclass
class MergedTokenizer:
    """A merged tokenizer.json and what the merge did."""

    tokenizer_json: dict
    family: str
    base_ids: int  # ids the base tokenizer uses (its highest id plus one)
    first_new_id: int  # after the base's ids and its model's rows
    new_tokens: list[str]  # model-space strings; token i has id first_new_id + i
    spellings: list[list[int]]  # base ids that spell each new token
    reserved_ids: list[int] = field(default_factory=list)  # fillers: ids below first_new_id no base token used
    stats: dict = field(default_factory=dict)

    @property
    def reserved(self) -> int:
        return len(self.reserved_ids)

    @property
    def size(self) -> int:
        return self.first_new_id + len(self.new_tokens)


def merge_pieces(tj: dict, pieces: list[SpPiece], *, base_rows: int | None = None,
                 merges_first: bool = True, extend_pre_tokenizer: bool = True) -> MergedTokenizer:
    """Merge SentencePiece ``pieces`` (best first, as `read_sentencepiece` gives them) into the base
    ``tokenizer.json`` dict ``tj``, which is left unchanged.

    New tokens get the ids after both the base tokenizer's ids and the base model's ``base_rows``
    embedding rows; unused ids below them (a model with spare rows) are filled with reserved tokens.
    Added and special tokens keep their ids (`pin_added_tokens`).
    ``merges_first=False`` (new merges appended after the base's) and ``extend_pre_tokenizer=False``
    exist to measure what the design choices above are worth (bench/tokenizer_bench.py).
    """
    family = detect_family(tj)
    tj = copy.deepcopy(tj)
    model = tj["model"]
    vocab: dict[str, int] = model["vocab"]
    base_vocabulary = len(vocab)
    base_merges = _merge_pairs(model)
    pinned = pin_added_tokens(tj)
    used = set(vocab.values())
    base_ids = max(used) + 1
    letters, joiners = target_characters(pieces)
    if not letters:
        raise LangadaptError("the SentencePiece model learned no non-ASCII letters, so no piece can be merged without "
                             "changing English tokenization; is the cleaned corpus in the target language?")
    base = model_only(tj)

    def spell(token: str) -> list[int]:
        return [t.id for t in base.model.tokenize(token)]

    if family == BYTE_LEVEL:
        def enc(s: str) -> str:
            return to_byte_level(s.replace(SP_SPACE, " "))
    else:
        space = _space_symbol(tj)

        def enc(s: str) -> str:
            return s.replace(SP_SPACE, space)

    front: list[tuple[str, str]] = []
    front_set: set[tuple[str, str]] = set()
    new_tokens: list[str] = []
    new_set: set[str] = set()

    def add_token(s: str) -> None:
        if s not in vocab and s not in new_set:
            new_tokens.append(s)
            new_set.add(s)

    def add_merge(a: str, b: str) -> None:
        if (a, b) not in front_set:
            front.append((a, b))
            front_set.add((a, b))
            add_token(a + b)

    # 1. Characters: the symbols pieces are built from. A byte-level character whose bytes cannot be
    #    joined ahead of the base merges (ZWNJ) stays a row of byte tokens (``as_bytes``); pieces
    #    then take its bytes one at a time onto a neighbour that holds a letter.
    units: dict[str, str] = {SP_SPACE: enc(SP_SPACE)} if enc(SP_SPACE) in vocab else {}
    as_bytes: dict[str, list[str]] = {}
    late: dict[str, str] = {}
    for ch in sorted(letters | joiners):
        s = enc(ch)
        if family == SENTENCEPIECE:
            add_token(s)  # a character in the vocabulary is a BPE symbol by itself
            units[ch] = s
            continue
        raw = ch.encode("utf-8")
        if all(_prefix_is_letters_only(raw[:k]) for k in range(2, len(raw))):
            prev = byte_chars()[raw[0]]
            for k in range(1, len(raw)):
                add_merge(prev, byte_chars()[raw[k]])
                prev += byte_chars()[raw[k]]
            units[ch] = s
            continue
        as_bytes[ch] = [byte_chars()[b] for b in raw]
        # No merge completing the bare character: it would hold no letter, so it would change text
        # without target letters (a stray ZWNJ between Latin letters, ZWJ in emoji sequences).
        if len(base.model.tokenize(s)) == 1:  # the base builds it itself; pieces may then take it whole
            late[ch] = s
    for p in pieces:  # characters the base knows as one token (Latin letters, digits) can be parts too
        t = p.text
        if len(t) == 1 and t not in units and t not in as_bytes and enc(t) in vocab:
            if family == SENTENCEPIECE or is_letter(t):
                units[t] = enc(t)

    # 2. Which pieces can be merged: a target letter, a shape the pre-tokenizer keeps in one
    #    pre-token, and a split into two buildable parts (checked shortest first).
    overlap = sum(1 for p in pieces if enc(p.text) in vocab)
    skipped_no_target = unreachable = 0
    candidates = []
    for p in pieces:
        if len(p.text) == 1:
            continue
        if not any(c in letters for c in p.text):
            skipped_no_target += enc(p.text) not in vocab
            continue
        if family == BYTE_LEVEL:
            body = p.text[1:] if p.text.startswith(SP_SPACE) else p.text
            if not body or not all(is_letter(c) or c in joiners for c in body):
                unreachable += 1  # crosses a pre-token boundary (punctuation, digits, a space inside)
                continue
        candidates.append(p)
    built = dict(units)

    def has_letter(t: str) -> bool:
        return any(c in letters for c in t)

    def buildable(left: str, right: str) -> bool:
        if left in built and right in built:
            return True
        return ((left in built and right in as_bytes and has_letter(left))
                or (left in as_bytes and right in built and has_letter(right)))

    for p in sorted(candidates, key=lambda p: len(p.text)):
        t = p.text
        if any(buildable(t[:i], t[i:]) for i in range(1, len(t))):
            built[t] = enc(t)
        else:
            unreachable += 1

    # 3. Merges in the SentencePiece model's order: every split into two buildable parts, as
    #    SentencePiece's BPE joins any adjacent pair whose concatenation is a piece.
    rank = {p.text: i for i, p in enumerate(pieces)}
    chars_front = len(front)
    for p in candidates:
        t = p.text
        if t not in built:
            continue
        splits = [(t[:i], t[i:]) for i in range(1, len(t)) if buildable(t[:i], t[i:])]
        splits.sort(key=lambda lr: (rank.get(lr[0], -1), rank.get(lr[1], -1)))
        for left, right in splits:
            if left in built and right in built:
                add_merge(built[left], built[right])
                continue
            if right in as_bytes:  # every step holds the whole left part, so a whole letter
                acc = built[left]
                for b in as_bytes[right]:
                    add_merge(acc, b)
                    acc += b
                if right in late:
                    add_merge(built[left], late[right])
            else:
                acc = built[right]
                for b in reversed(as_bytes[left]):
                    add_merge(b, acc)
                    acc = b + acc
                if left in late:
                    add_merge(late[left], built[right])
    new_pieces = sum(1 for p in candidates if p.text in built and enc(p.text) in new_set)
    new_chars = sum(1 for ch, s in units.items() if s in new_set and len(ch) == 1)

    # 4. Ids after every id the base uses: its vocabulary, its added tokens and its model's rows. Ids
    #    nobody uses below that (a model with spare rows, a gap in the base's ids) get reserved tokens,
    #    so the vocabulary has no holes and no new token takes a row that belongs to something else.
    first_new = max(base_ids, base_rows or 0)
    reserved_ids = sorted(set(range(first_new)) - used)
    reserved = [RESERVED.format(i) for i in range(len(reserved_ids))]
    if any(r in vocab for r in reserved):
        raise LangadaptError(f"the base vocabulary already uses the name {RESERVED.format('N')}")
    added = tj.setdefault("added_tokens", [])
    for i, s in zip(reserved_ids, reserved):
        vocab[s] = i
        added.append({"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True})  # special: skipped by decode(skip_special_tokens=True)
    added.sort(key=lambda t: t["id"])
    for i, s in enumerate(new_tokens):
        vocab[s] = first_new + i
    if merges_first:
        moved = sum(1 for m in base_merges if m in front_set)
        model["merges"] = [list(m) for m in front] + [list(m) for m in base_merges if m not in front_set]
    else:
        have = set(base_merges)
        moved = 0
        model["merges"] = [list(m) for m in base_merges] + [list(m) for m in front if m not in have]
    pattern_changed = False
    if family == BYTE_LEVEL and extend_pre_tokenizer:
        tj["pre_tokenizer"], pattern_changed = rewrite_pre_tokenizer(
            tj.get("pre_tokenizer"), target_word_pattern(letters, joiners))

    stats = {
        "family": family,
        "sp_pieces": len(pieces),
        "overlap": overlap,
        "overlap_share": round(overlap / len(pieces), 4) if pieces else 0.0,
        "new_pieces": new_pieces,
        "new_characters": new_chars,
        "new_tokens": len(new_tokens),
        "new_partial_tokens": len(new_tokens) - new_pieces - new_chars,  # a piece's body plus part of a ZWNJ
        "skipped_no_target_letter": skipped_no_target,
        "skipped_unreachable": unreachable,
        "target_letters": len(letters),
        "joiners": sorted(f"U+{ord(j):04X}" for j in joiners),
        "characters_kept_as_bytes": sorted(f"U+{ord(c):04X}" for c in as_bytes),
        "characters_completed_late": sorted(f"U+{ord(c):04X}" for c in late),
        "front_merges": len(front),
        "character_merges": chars_front,
        "base_merges_moved_to_front": moved,
        "pre_tokenizer_extended": pattern_changed,
        "base_vocabulary": base_vocabulary,
        "added_tokens_pinned": pinned,
        "base_ids": base_ids,
        "base_rows": base_rows,
        "reserved_ids": id_ranges(reserved_ids),
        "new_ids": id_ranges(range(first_new, first_new + len(new_tokens))),
    }
    spellings = [spell(s) for s in new_tokens]
    return MergedTokenizer(tj, family, base_ids, first_new, new_tokens, spellings, reserved_ids, stats)
