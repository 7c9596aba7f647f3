"""The bundled demo data keeps the promises of issue 2: enough of each kind, correct Persian letters."""

from __future__ import annotations

import csv
import json
import re

from conftest import DEMO

ARABIC_YEH_KAF = re.compile("[\u064a\u0643]")
SENTENCE_END = re.compile(r"(?<=[.!?؟])\s+")


def lines(rel: str) -> list[str]:
    return [x for x in (DEMO / rel).read_text(encoding="utf-8").splitlines() if x.strip()]


def test_monolingual_corpus_has_300_sentences_and_labelled_noise():
    sentences = [s for doc in lines("corpus/everyday.txt") for s in SENTENCE_END.split(doc)]
    sentences += [s for r in map(json.loads, lines("corpus/news.jsonl")) for s in SENTENCE_END.split(r["body"])]
    assert len(set(sentences)) >= 300
    expected = list(csv.DictReader((DEMO / "corpus/noisy_expected.tsv").open(encoding="utf-8"), delimiter="\t"))
    assert len(expected) == len(lines("corpus/noisy.txt"))
    reasons = {r["reason"] for r in expected}
    assert {"too_short", "boilerplate", "code", "language", "duplicate", "keep"} <= reasons


def test_parallel_pairs_and_instructions_are_enough():
    pairs = [x.split("\t") for x in lines("parallel/fa-en.tsv")]
    assert len(pairs) >= 150 and all(len(p) == 2 and all(p) for p in pairs)
    for lang in ("en", "fa"):
        records = json.loads((DEMO / f"instructions/alpaca_{lang}.json").read_text(encoding="utf-8"))
        assert len(records) >= 60
        assert all(r["instruction"] and r["output"] for r in records)
        assert sum(r["category"] == "translation" for r in records) >= 5


def test_each_eval_task_has_20_items_in_both_languages():
    counts = {}
    for path in sorted((DEMO / "eval").rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(DEMO / "eval"))
            n = len(lines(f"eval/{rel}"))
            counts[rel] = n - 1 if path.suffix == ".csv" else n
    for lang in ("en", "fa"):
        for task in ("multiple_choice", "sentiment", "entailment", "summarization", "translation"):
            found = [n for rel, n in counts.items() if rel.startswith(f"{lang}/{task}.")]
            assert found and found[0] >= 20, (lang, task, counts)


def test_persian_is_written_with_persian_letters():
    noisy_exceptions = {int(r["line"]) for r in csv.DictReader((DEMO / "corpus/noisy_expected.tsv").open(encoding="utf-8"),
                                                               delimiter="\t") if r["reason"] in ("keep", "duplicate", "language")}
    for path in sorted(DEMO.rglob("*")):
        if not path.is_file() or path.suffix not in (".txt", ".tsv", ".json", ".jsonl", ".csv"):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if path.name == "noisy.txt" and i in noisy_exceptions:
                continue
            assert not ARABIC_YEH_KAF.search(line), f"{path.relative_to(DEMO)}:{i} uses Arabic yeh/kaf"
    zwnj_words = sum(line.count("\u200c") for line in lines("corpus/everyday.txt"))
    assert zwnj_words > 100  # می‌خواهم, کتاب‌ها: Persian joins these with a zero-width non-joiner
