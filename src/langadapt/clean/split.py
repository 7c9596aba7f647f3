"""Sentence splitting that knows the target language's punctuation (paper 3.1).

A sentence ends at a line break, or at a run of terminators (. ! ? … and, for Persian and
Arabic-script languages, also ؟ ؛ ۔; for languages written in Brahmic scripts, the danda । and ॥;
for Amharic and Tigrinya, ። ፧ ፨) followed by a space or the end of the line; Chinese and Japanese
full-width terminators (。！？) end a sentence with no space after them; closing quotes
and brackets after the terminator stay with the sentence. A period does not end a sentence
when it belongs to a decimal number (3.14, no space follows), an initial or a one-letter
abbreviation (J. R. R. Tolkien, ق. م.), a dotted abbreviation (e.g., U.S., ه.ش.), a known
abbreviation (Dr., etc., ...), or when the next word starts with a lowercase Latin letter.
"""

from __future__ import annotations

import re
from functools import lru_cache

ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st vs etc eg ie cf al fig figs no nos vol vols ed eds pp approx dept est inc ltd co corp
jan feb mar apr jun jul aug sep sept oct nov dec mt ft gen gov col lt sgt capt rev
""".split())
"""Lowercased words that are abbreviations when a period follows (English; Persian ones are one letter or dotted)."""

_COMMON_TERMINATORS = ".!?…"
_ARABIC_SCRIPT_TERMINATORS = "؟؛۔"
_ARABIC_SCRIPT = {"fa", "fas", "pes", "ar", "ara", "ur", "urd", "ps", "pus", "ckb", "ku", "sd", "ug", "azb", "bal", "glk", "mzn"}
_DANDA = "।॥"
_DANDA_LANGS = {"hi", "hin", "mr", "mar", "ne", "nep", "npi", "sa", "san", "bn", "ben", "as", "asm", "mai", "bho",
                "awa", "mag", "hne", "doi", "kok", "gom", "pa", "pan"}
_ETHIOPIC_TERMINATORS = "።፧፨"
_ETHIOPIC = {"am", "amh", "ti", "tir"}
_CJK_TERMINATORS = "。！？"  # written without a following space
_CJK = {"zh", "zho", "cmn", "yue", "ja", "jpn"}
_CLOSERS = "\"'»”’)]}›」』）"


@lru_cache(maxsize=None)
def _boundary(lang: str) -> re.Pattern:
    term = _COMMON_TERMINATORS + (_ARABIC_SCRIPT_TERMINATORS if lang in _ARABIC_SCRIPT else "")
    term += _DANDA if lang in _DANDA_LANGS else ""
    term += _ETHIOPIC_TERMINATORS if lang in _ETHIOPIC else ""
    spaced = rf"[{re.escape(term)}]+[{re.escape(_CLOSERS)}]*(?=\s|$)"
    if lang in _CJK:
        return re.compile(rf"{spaced}|[{_CJK_TERMINATORS}]+[{re.escape(_CLOSERS)}]*")
    return re.compile(spaced)


_WINDOW = 48
_LOWER_LATIN_AFTER = re.compile(r"\s+[\"'«“(\[]*[a-z]")


def _period_is_not_an_end(line: str, start: int, end: int) -> bool:
    """Whether a lone '.' at ``start`` (run ending at ``end``) belongs to its word instead of ending the sentence."""
    # the word the period ends, looked for in a short window so that a long line with many
    # periods stays linear; a word longer than the window is no abbreviation anyway
    window = line[max(0, start - _WINDOW):start]
    parts = window.split()
    if not parts or (len(parts) == 1 and start > _WINDOW and not window[0].isspace()):
        return False
    word = parts[-1].lstrip("\"'«“([")
    if not word:
        return False
    core = word.rstrip(".")
    if "." in core:  # dotted abbreviation: e.g. U.S. ه.ش.
        return True
    if len(core) == 1 and core.isalpha():  # initial or one-letter abbreviation
        return True
    if core.lower() in ABBREVIATIONS:
        return True
    return bool(_LOWER_LATIN_AFTER.match(line, end))


def split_sentences(text: str, lang: str) -> list[str]:
    """The sentences of ``text`` (stripped, none empty), in order."""
    return [s for s, _ in sentences_by_line(text, lang)]


def sentences_by_line(text: str, lang: str) -> list[tuple[str, int]]:
    """(sentence, index of the line it is on) for the sentences of ``text``, in order: what it takes to put
    the kept sentences of a document back together (a space inside a line, a line break between lines)."""
    pattern = _boundary(lang)
    out: list[tuple[str, int]] = []
    for n, line in enumerate(text.split("\n")):
        start = 0
        for m in pattern.finditer(line):
            run = m.group(0).rstrip(_CLOSERS)
            if run == "." and _period_is_not_an_end(line, m.start(), m.end()):
                continue
            piece = line[start:m.end()].strip()
            if piece:
                out.append((piece, n))
            start = m.end()
        piece = line[start:].strip()
        if piece:
            out.append((piece, n))
    return out


_WORD = re.compile(r"\w")


def count_words(sentence: str) -> int:
    """Words: space-separated tokens holding at least one letter or digit (a ZWNJ does not split a word)."""
    return sum(1 for tok in sentence.split() if _WORD.search(tok))
