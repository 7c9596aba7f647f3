"""Text normalization for the target language (paper 3.1), reused by the translate stage.

For Persian (``fa``): the Arabic letters ي ى (yeh, alef maksura) become Persian ی, Arabic ك
becomes Persian ک and ة (teh marbuta) becomes ه, as Persian normalizers do; Arabic-Indic digits
(٠-٩) become Persian digits (۰-۹); the short-vowel marks that Persian writes only by exception
(fatha, damma, kasra, their tanwin forms, shadda, sukun) are removed, except the tanwin of
Persian spelling on an alef (معمولاً); the hamza and madda marks, which are part of letters,
stay. For every language: tatweel (ـ) is removed; ``digits`` unifies digits (``keep``: as
above; ``latin``: every digit to 0-9; ``persian``: every digit, Latin included, to ۰-۹); stray
marks (a mark with no letter to sit on, or the same mark twice in a row) are removed; runs of
spaces become one space; zero-width non-joiners are tidied (runs become one; next to a space or
at either end of a line they are dropped). Nothing else is changed: letters, punctuation and
line breaks stay as written.
"""

from __future__ import annotations

import re
from functools import lru_cache

ZWNJ = "\u200c"
TATWEEL = "\u0640"

_LATIN = "0123456789"
_ARABIC_INDIC = "٠١٢٣٤٥٦٧٨٩"
_PERSIAN = "۰۱۲۳۴۵۶۷۸۹"

# Arabic letter variants that Persian text should not contain.
_PERSIAN_LETTERS = {"ي": "ی", "ى": "ی", "ك": "ک", "ة": "ه"}

# Arabic-script combining marks: harakat, tanwin, shadda, sukun, superscript alef, Quranic marks.
_MARKS = "\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e4\u06e7\u06e8\u06ea-\u06ed"
_PERSIAN_VOWEL_MARKS = re.compile("(?<!\u0627)\u064b|[\u064c-\u0652]")  # tanwin fath kept on an alef
_STRAY_MARK = re.compile(rf"(?<![^\W\d_]|[{_MARKS}])[{_MARKS}]+")  # not after a letter or a mark
_REPEATED_MARK = re.compile(rf"([{_MARKS}])\1+")
_ZWNJ_RUN = re.compile(ZWNJ + "{2,}")
_ZWNJ_EDGE = re.compile(rf"(?:^|(?<=\s)){ZWNJ}|{ZWNJ}(?=\s|$)")
_MARK_CHARS = re.compile(rf"[{_MARKS}]")

DIGIT_MODES = ("keep", "latin", "persian")


@lru_cache(maxsize=None)
def _table(lang: str, digits: str) -> dict[int, str | None]:
    if digits not in DIGIT_MODES:
        raise ValueError(f"digits must be one of {', '.join(DIGIT_MODES)}, got {digits!r}")
    table: dict[int, str | None] = {ord(TATWEEL): None}
    if _is_persian(lang):
        table.update({ord(k): v for k, v in _PERSIAN_LETTERS.items()})
        table.update({ord(a): b for a, b in zip(_ARABIC_INDIC, _PERSIAN)})
    if digits == "latin":
        table.update({ord(a): b for src in (_ARABIC_INDIC, _PERSIAN) for a, b in zip(src, _LATIN)})
    elif digits == "persian":
        table.update({ord(a): b for src in (_ARABIC_INDIC, _LATIN) for a, b in zip(src, _PERSIAN)})
    return table


def char_map(lang: str, digits: str = "keep") -> dict[str, str]:
    """The one-for-one character rewrites of `normalize` ("" for a deletion): what a merged tokenizer
    applies to its input so raw text meets the pieces trained on normalized text."""
    return {chr(k): v or "" for k, v in _table(lang, digits).items()}


def _is_persian(lang: str) -> bool:
    return lang in ("fa", "fas", "pes")


def normalize(text: str, lang: str, digits: str = "keep") -> str:
    """Normalize ``text`` for language ``lang`` (see the module docstring); line breaks are kept."""
    if "\n" in text:
        return "\n".join(normalize(line, lang, digits) for line in text.split("\n"))
    text = text.translate(_table(lang, digits))
    if _MARK_CHARS.search(text):
        if _is_persian(lang):
            text = _PERSIAN_VOWEL_MARKS.sub("", text)
        text = _STRAY_MARK.sub("", _REPEATED_MARK.sub(r"\1", text))
    if ZWNJ in text:
        text = _ZWNJ_EDGE.sub("", _ZWNJ_RUN.sub(ZWNJ, text))
    return " ".join(text.split())  # every run of whitespace (tab, no-break space, ...) becomes one space
