"""Spans a translation must not touch: masked before translation, restored after, verified.

What is protected (leftmost match wins, so a URL inside a code block stays part of the block):

- fenced code blocks (``` or ~~~, any number of lines) and inline `code`;
- URLs (``http://``, ``https://``, ``ftp://``, ``www.``) and e-mail addresses;
- placeholders: ``{name}``, ``{0}``, ``{}``, ``{{name}}``, ``${NAME}``, printf ``%s`` / ``%(name)s``;
- numbers and words holding a digit (``42``, ``3.14``, ``1,000``, ``2023-01-01``, ``H2O``, ``mp3``);
- text that already looks like one of our markers, so it cannot be confused with one.

Each span becomes a marker ``[[i]]``. Translators copy such markers reliably (brackets and digits
exist in every vocabulary); :func:`unmask` accepts the digits in any script (a translator writing
``[[۳]]`` still names span 3) and refuses a translation in which any marker is missing, repeated
or unknown, so a protected span can never be silently lost or duplicated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = r"(?P<fence>```|~~~)[^\n]*\n.*?(?:\n[ \t]*(?P=fence)|\Z)"  # an unclosed fence runs to the end
_INLINE_CODE = r"`[^`\n]+`"
_MARKER_LOOKALIKE = r"\[\[\s*\d+\s*\]\]"
_URL = r"(?:(?:https?|ftp)://|www\.)[^\s<>\"'`]+[^\s<>\"'`.,;:!?)\]}]"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_PLACEHOLDER = r"\{\{\s*[\w.\-\[\]]*\s*\}\}|\$\{\w+\}|\{[\w.\-\[\]:!]*\}|(?<![\w%])%(?:\(\w+\))?[-+#0]*\d*(?:\.\d+)?[sdifgexXo](?![A-Za-z])"
_NUMBER = r"(?<!\w)[^\W\d_]*\d\w*(?:[.,:/-]\d\w*)*"

PROTECTED = re.compile(
    "|".join(f"(?:{p})" for p in (_FENCE, _INLINE_CODE, _MARKER_LOOKALIKE, _URL, _EMAIL, _PLACEHOLDER, _NUMBER)),
    re.DOTALL,
)
MARKER = re.compile(r"\[\[\s*(\d+)\s*\]\]")  # \d is Unicode-aware: Persian and Arabic digits count
_LETTER = re.compile(r"[^\W\d_]")


class SpanError(ValueError):
    """A translation lost, repeated or invented a protected-span marker."""


@dataclass(frozen=True)
class Masked:
    """A text with its protected spans replaced by ``[[i]]`` markers, and the spans themselves."""

    text: str
    spans: tuple[str, ...]


def marker(i: int) -> str:
    return f"[[{i}]]"


def mask(text: str, start: int = 0) -> Masked:
    """Replace every protected span of ``text`` by a marker numbered from ``start``."""
    spans: list[str] = []

    def sub(m: re.Match) -> str:
        spans.append(m.group(0))
        return marker(start + len(spans) - 1)

    return Masked(PROTECTED.sub(sub, text), tuple(spans))


def unmask(translated: str, spans: tuple[str, ...] | list[str], start: int = 0) -> str:
    """Put the spans back into a translation of a masked text; SpanError unless every marker is there once."""
    found = [int(m.group(1)) for m in MARKER.finditer(translated)]
    expected = range(start, start + len(spans))
    missing = sorted(set(expected) - set(found))
    repeated = sorted({i for i in found if found.count(i) > 1})
    unknown = sorted(set(found) - set(expected))
    if missing or repeated or unknown:
        parts = [f"{what} {', '.join(marker(i) for i in which)}" for what, which in
                 (("missing", missing), ("repeated", repeated), ("unknown", unknown)) if which]
        raise SpanError("; ".join(parts))
    return MARKER.sub(lambda m: spans[int(m.group(1)) - start], translated)


def has_prose(masked_text: str) -> bool:
    """Whether anything is left to translate once the markers are taken out (at least one letter)."""
    return _LETTER.search(MARKER.sub(" ", masked_text)) is not None


def prose(text: str) -> str:
    """The translatable part of a text: protected spans removed (for language identification)."""
    return re.sub(r"\s+", " ", PROTECTED.sub(" ", text)).strip()
