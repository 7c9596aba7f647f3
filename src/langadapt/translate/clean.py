"""Cleaning of translated records: one small rule per way a machine translation goes wrong.

Every rule looks at a source record and its translation and answers with a reason to drop it,
or None. Rules run in the order below; a record is counted under the first reason that drops it,
so the counts per reason add up to the records dropped.

- ``protected span lost``: the translation lost, repeated or invented a protected-span marker
  (code, URL, number, placeholder), so it could not be restored faithfully;
- ``repetition``: a phrase repeated ``repeat_threshold`` times in a row, where the source has
  no such run (the degenerate loop small models fall into);
- ``length ratio``: a field whose translation is shorter than ``min_length_ratio`` or longer than
  ``max_length_ratio`` times its source, in characters (fields under 10 characters are too short
  for a ratio to mean anything);
- ``not target language``: the translated prose (protected spans removed) scores under
  ``lang_threshold`` as the target language, with the clean stage's language identification;
- ``duplicate``: the same translated record (case and spacing aside) was already kept, in this
  or an earlier source.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from langadapt.translate.protect import prose
from langadapt.translate.records import Item

MIN_RATIO_CHARS = 10
_MAX_UNIT = 120  # longest repeated phrase looked for, in characters
_LETTER = re.compile(r"[^\W\d_]")


def longest_run(text: str, at_least: int) -> int:
    """Copies of the most repeated phrase run of ``text`` if it reaches ``at_least`` copies, else 0.

    A phrase is 2 to 120 characters holding a letter; copies may be separated by spaces.
    """
    pattern = re.compile(r"(.{2,%d}?)(?:\s*\1){%d,}" % (_MAX_UNIT, at_least - 1), re.DOTALL)
    best = 0
    pos = 0
    while True:
        m = pattern.search(text, pos)
        if m is None:
            return best
        unit = m.group(1)
        if _LETTER.search(unit) and unit.strip():
            copies = len(re.findall(re.escape(unit), m.group(0)))
            best = max(best, copies)
            pos = m.end()
        else:
            pos = m.start() + 1  # a run of dots or dashes: look past its first character


class Rule:
    """A cleaning rule: ``check`` returns the reason to drop a translation, or None to keep it."""

    reason = ""

    def check(self, item: Item, translated: dict[str, str], error: str | None) -> str | None:
        raise NotImplementedError


class ProtectedSpans(Rule):
    reason = "protected span lost"

    def check(self, item, translated, error):
        return self.reason if error else None


class Repetition(Rule):
    reason = "repetition"

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def check(self, item, translated, error):
        for name, text in translated.items():
            if longest_run(text, self.threshold) and not longest_run(item.fields[name], self.threshold):
                return self.reason
        return None


class LengthRatio(Rule):
    reason = "length ratio"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def check(self, item, translated, error):
        for name, text in translated.items():
            src = len(item.fields[name].strip())
            if src >= MIN_RATIO_CHARS and not self.low <= len(text.strip()) / src <= self.high:
                return self.reason
        return None


class TargetLanguage(Rule):
    reason = "not target language"

    def __init__(self, lang: str, threshold: float, score: Callable[[list[str], str], list[float]] | None = None) -> None:
        if score is None:
            from langadapt.clean.langid import check_language, language_probabilities

            check_language(lang)
            score = language_probabilities
        self.lang, self.threshold, self.score = lang, threshold, score

    def check(self, item, translated, error):
        text = prose("\n".join(translated.values()))
        if not _LETTER.search(text):
            return None  # nothing but protected spans: no language to judge
        return self.reason if self.score([text], self.lang)[0] < self.threshold else None


class Duplicates(Rule):
    reason = "duplicate"

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def check(self, item, translated, error):
        norm = re.sub(r"\s+", " ", "\x1f".join(translated.values())).strip().casefold()
        key = hashlib.blake2b(norm.encode(), digest_size=16).digest()  # 16 bytes a record, whatever its length
        if key in self.seen:
            return self.reason
        self.seen.add(key)
        return None


def default_rules(cfg, lang: str) -> list[Rule]:
    """The rules, configured from the recipe's ``translate`` section, in the order they run."""
    return [ProtectedSpans(), Repetition(cfg.repeat_threshold), LengthRatio(cfg.min_length_ratio, cfg.max_length_ratio),
            TargetLanguage(lang, cfg.lang_threshold), Duplicates()]


def first_reason(rules: list[Rule], item: Item, translated: dict[str, str], error: str | None) -> str | None:
    for rule in rules:
        reason = rule.check(item, translated, error)
        if reason:
            return reason
    return None
