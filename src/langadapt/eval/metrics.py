"""Metrics: accuracy, majority-class share and macro-F1 (classification tasks), corpus BLEU and chrF
from sacrebleu (with their signatures), ROUGE-L, and the expected accuracy of uniform guessing (the
paper's "Random" column)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence


def accuracy(predictions: Sequence, gold: Sequence) -> float:
    if not gold:
        return 0.0
    return sum(p == g for p, g in zip(predictions, gold)) / len(gold)


def random_accuracy(option_counts: Sequence[int]) -> float:
    """Expected accuracy of picking uniformly among each item's options (1/k averaged over items)."""
    if not option_counts:
        return 0.0
    return sum(1.0 / k for k in option_counts) / len(option_counts)


def majority_share(labels: Sequence) -> float:
    """Share of the most common value in ``labels``: of the gold labels, the accuracy of always answering
    the majority class; of the predictions, how nearly the model answers one label for everything."""
    if not labels:
        return 0.0
    counts: dict = {}
    for x in labels:
        counts[x] = counts.get(x, 0) + 1
    return max(counts.values()) / len(labels)


def macro_f1(predictions: Sequence, gold: Sequence) -> float:
    """F1 averaged over the gold labels, each class weighing the same (as scikit-learn's ``f1_score(...,
    average="macro", labels=sorted(set(gold)))``): a model that answers one label for everything scores
    about 1/k of it however skewed the test set is. A prediction outside the gold labels counts against
    its item's class only."""
    if not gold:
        return 0.0
    scores = []
    for c in set(gold):
        tp = sum(p == c and g == c for p, g in zip(predictions, gold))
        predicted = sum(p == c for p in predictions)
        actual = sum(g == c for g in gold)
        scores.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return sum(scores) / len(scores)


def bleu(hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str | None = None) -> tuple[float, str]:
    """Corpus BLEU (0-100) and sacrebleu's signature, so the exact settings travel with the score."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=tokenize) if tokenize else BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return float(score.score), metric.get_signature().format()


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus chrF (0-100) and its sacrebleu signature."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return float(score.score), metric.get_signature().format()


_TOKEN = re.compile(r"\w+", re.UNICODE)


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased Unicode word tokens. (rouge-score's default tokenizer keeps only [a-z0-9] and would
    erase Persian text entirely; ZWNJ splits a word the way Persian readers see its parts.)"""
    text = unicodedata.normalize("NFKC", text).replace("\u200c", " ").lower()
    return _TOKEN.findall(text)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row of memory)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_pair(hypothesis: str, reference: str) -> float:
    """Sentence-level ROUGE-L F1: LCS-based precision and recall of word tokens (Lin, 2004)."""
    h, r = rouge_tokens(hypothesis), rouge_tokens(reference)
    if not h or not r:
        return 0.0
    lcs = lcs_length(h, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean sentence-level ROUGE-L F1 over the corpus, 0-100 (same scale as BLEU)."""
    if not references:
        return 0.0
    return 100.0 * sum(rouge_l_pair(h, r) for h, r in zip(hypotheses, references)) / len(references)
