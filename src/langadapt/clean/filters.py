"""The clean stage's rules (paper 3.1, after T5's C4), one datatrove filter each, with its drop reason.

They run in this order, and a sentence dropped by one is counted under that rule only:

1. :class:`MinWordsFilter` (``too_short``): fewer than ``min_words`` whitespace-separated words,
   as C4 counts them.
2. :class:`CodeFilter` (``code``): holds a character sequence that marks code (``{``, ``<``,
   ``=>``, ``;;``, ...). Checked before boilerplate because markup lines often also hold
   boilerplate words ("about us" in a menu of links), and code is the more specific finding.
3. :class:`BoilerplateFilter` (``boilerplate``): holds a web-page boilerplate phrase (cookie,
   log-in, newsletter and copyright notices, Persian and English), a URL, a www address or an
   e-mail address.
4. :class:`LanguageFilter` (``language``): fastText lid.176's probability of the target language
   is below the threshold (paper: 0.70). The probability is kept in the sentence's metadata.

Duplicates (``duplicate``, ``near_duplicate``) are removed afterwards, across all workers
(:mod:`langadapt.clean.dedup`).
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.typeshelper import StatHints

from langadapt.clean.blocks import flush_counts
from langadapt.clean.langid import probability
from langadapt.clean.normalize import ZWNJ, normalize

REASONS = ("invalid_utf8", "empty_text", "too_short", "code", "boilerplate", "language", "duplicate", "near_duplicate")
"""Every drop reason, in the order the pipeline applies them (``invalid_utf8`` counts lines, ``empty_text``
documents without text, the others sentences)."""

RECORD_REASONS = ("invalid_utf8", "empty_text")
"""Reasons that count lines or documents dropped before sentence splitting, not sentences."""

DEFAULT_BOILERPLATE = (
    # English, after C4's list of policy-notice lines plus account and call-to-action phrases
    "cookie policy", "uses cookies", "use cookies", "use of cookies", "accept cookies", "all cookies",
    "cookie settings", "privacy policy", "terms of use", "terms of service", "terms and conditions",
    "all rights reserved", "copyright", "log in", "login", "sign in", "sign up", "forgot your password",
    "create an account", "subscribe", "newsletter", "click here", "read more", "enable javascript",
    "javascript is disabled", "your browser", "lorem ipsum", "share on facebook", "follow us on", "©",
    # Persian: cookie and privacy notices, copyright lines, accounts, newsletters, calls to action
    "از کوکی", "کوکی‌ها", "پذیرش کوکی", "سیاست حفظ حریم خصوصی", "سیاست حریم خصوصی", "قوانین و مقررات سایت",
    "شرایط استفاده از سایت", "حقوق مادی و معنوی", "حقوق این سایت", "حقوق محفوظ", "کپی‌رایت", "کپی رایت",
    "ورود به حساب", "ورود به سایت", "ورود به پنل", "ثبت‌نام کنید", "رمز عبور خود را فراموش", "فراموشی رمز عبور",
    "خبرنامه", "کلیک کنید", "ادامه مطلب", "بیشتر بخوانید", "اشتراک‌گذاری در", "مرورگر شما", "جاوااسکریپت",
    "ارسال نظر", "نظرات کاربران", "برچسب‌ها:",
)
"""Phrases that mark web-page boilerplate (matched case-insensitively, as whole words, after normalization;
a ZWNJ and a space match each other). Kept specific: "وارد شوید" (enter!) or "کلیه حقوق" (all
salaries, as well as all rights) are everyday Persian and would drop real sentences."""

DEFAULT_CODE_MARKERS = (
    "{", "}", "<", ">", "=>", "==", "!=", "&&", "||", ";;", ");", "`", "</", "/>", "#include", "def ",
    "function(", "$(", "::",
)
"""Character sequences that mark code or markup (matched literally; a marker starting with a letter only at
a word start). Not "):", which Persian prose uses after a parenthesis: «(و گفت): ...»."""

_URL = re.compile(r"(?i)\b(?:https?://|ftp://|www\.)\S")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")


class CleanFilter(BaseFilter):
    """A rule: ``keep(doc)`` says whether a sentence stays; drops are counted per source under ``reason``.

    Like every datatrove filter it forwards kept documents, counts ``total``/``forwarded``/
    ``dropped`` (plus ``<source>|<reason>``) and hands drops to the exclusion writer (rejects);
    the counts are added to the statistics once at the end rather than per sentence, because
    datatrove's per-document statistics cost more than most rules themselves.
    """

    reason: str = ""

    def keep(self, doc: Document) -> bool:
        raise NotImplementedError

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return True if self.keep(doc) else (False, self.reason)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        dropped: Counter = Counter()
        total = 0
        keep, reason = self.keep, self.reason
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            try:
                for doc in data:
                    total += 1
                    if keep(doc):
                        yield doc
                        continue
                    dropped[doc.metadata["source"]] += 1
                    if writer is not None:
                        doc.metadata["filter_reason"] = reason
                        writer.write(doc, rank)
            finally:
                n = sum(dropped.values())
                self.stat_update(StatHints.total, value=total)
                self.stat_update(StatHints.forwarded, value=total - n)
                self.stat_update(StatHints.dropped, value=n)
                flush_counts(self, Counter({f"{src}|{reason}": k for src, k in dropped.items()}))


class MinWordsFilter(CleanFilter):
    name = "too short"
    reason = "too_short"

    def __init__(self, min_words: int = 5, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_words = min_words

    def keep(self, doc: Document) -> bool:
        return len(doc.text.split(None, self.min_words)) >= self.min_words


def _fold(text: str) -> str:
    # ZWNJ and space are interchangeable in Persian spelling (کلیه‌ی / کلیه ی): match either
    return text.casefold().replace(ZWNJ, " ")


def _literal_matcher(needles, *, word_start=True, word_end=False):
    """A fast ``matches(text) -> bool`` for literal needles.

    A plain substring test per needle (C speed) finds candidates; only needles that start (or
    end) with a letter or digit need a whole-word check, done with a regex on a hit.
    """
    plain, bounded = [], []
    for n in dict.fromkeys(needles):
        if not n:
            continue
        left = word_start and n[0].isalnum()
        right = word_end and n[-1].isalnum()
        if left or right:
            bounded.append((n, re.compile((r"(?<!\w)" if left else "") + re.escape(n) + (r"(?!\w)" if right else ""))))
        else:
            plain.append(n)

    def matches(text: str) -> bool:
        for n in plain:
            if n in text:
                return True
        for n, pattern in bounded:
            if n in text and pattern.search(text):
                return True
        return False

    return matches


class BoilerplateFilter(CleanFilter):
    name = "boilerplate"
    reason = "boilerplate"

    def __init__(self, lang: str, keywords=DEFAULT_BOILERPLATE, *, urls: bool = True, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.lang = lang
        self.keywords = [k for k in (_fold(normalize(k, lang)) for k in keywords) if k]
        self.urls = urls
        self._matches = None

    def keep(self, doc: Document) -> bool:
        text = doc.text
        if self.urls:
            if ("/" in text or "ww" in text or "WW" in text) and _URL.search(text):
                return False
            if "@" in text and _EMAIL.search(text):
                return False
        if self._matches is None:  # built on first use, in the process that runs the task
            self._matches = _literal_matcher(self.keywords, word_start=True, word_end=True)
        return not self._matches(_fold(text))


class CodeFilter(CleanFilter):
    name = "code"
    reason = "code"

    def __init__(self, markers=DEFAULT_CODE_MARKERS, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.markers = list(markers)
        self._matches = None

    def keep(self, doc: Document) -> bool:
        if self._matches is None:
            self._matches = _literal_matcher(self.markers, word_start=True)
        return not self._matches(doc.text)


class LanguageFilter(CleanFilter):
    """Keeps a sentence when lid.176 gives the target language at least ``threshold``; records ``lang_prob``."""

    name = "language"
    reason = "language"

    def __init__(self, lang: str, threshold: float = 0.70, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.lang = lang
        self.threshold = threshold

    def keep(self, doc: Document) -> bool:
        p = probability(doc.text, self.lang)
        doc.metadata["lang_prob"] = p
        return p >= self.threshold
