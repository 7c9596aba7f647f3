"""Metrics: BLEU and chrF equal sacrebleu called directly; ROUGE-L from its LCS definition; the random column."""

from __future__ import annotations

import json

import pytest

from langadapt.eval import metrics
from langadapt.eval.evaluate import EvalSettings, random_baseline, task_info
from langadapt.eval.tasks import load_tasks

HYPS = ["the cat sat on the mat", "پدرم یک درخت سیب کاشت.", "it is raining today in the city"]
REFS = ["the cat is sitting on the mat", "پدرم بیست سال پیش یک درخت سیب در باغچه کاشت.", "today it rains in town"]


def test_bleu_and_chrf_equal_sacrebleu_called_directly():
    import sacrebleu

    value, sig = metrics.bleu(HYPS, REFS)
    assert value == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert sig.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    value, sig = metrics.chrf(HYPS, REFS)
    assert value == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
    assert "nc:6" in sig and "nw:0" in sig
    assert metrics.bleu(REFS, REFS)[0] == pytest.approx(100.0)


def test_rouge_l_follows_the_lcs_definition():
    # LCS("a b c d e", "a c e f") = "a c e" (3): P = 3/5, R = 3/4, F1 = 2PR/(P+R) = 2/3
    assert metrics.lcs_length("a b c d e".split(), "a c e f".split()) == 3
    assert metrics.rouge_l_pair("a b c d e", "a c e f") == pytest.approx(2 / 3)
    assert metrics.rouge_l_pair("x y", "a b") == 0.0
    # Persian words count (a tokenizer that keeps only [a-z0-9] would score every Persian pair 0)
    assert metrics.rouge_l_pair("هوای تهران سرد بود", "هوای تهران امروز سرد بود") == pytest.approx(2 * 1 * 0.8 / 1.8)
    assert metrics.rouge_l(["a b", "c"], ["a b", "d"]) == pytest.approx(50.0)


def test_accuracy_and_random_baseline_of_uniform_guessing():
    assert metrics.accuracy(["a", "b", "a"], ["a", "a", "a"]) == pytest.approx(2 / 3)
    assert metrics.random_accuracy([4, 4, 2]) == pytest.approx((0.25 + 0.25 + 0.5) / 3)


def test_majority_share_and_macro_f1_expose_a_model_that_answers_one_label():
    """Issue 18: on ParsiNLU a 135M model answered "1" to nearly every multiple-choice question; accuracy
    (the share of gold "1"s) hid it, majority share and macro-F1 do not."""
    gold = ["1"] * 6 + ["2", "3", "4", "2"]
    always_one = ["1"] * 10
    assert metrics.accuracy(always_one, gold) == pytest.approx(0.6)
    assert metrics.majority_share(gold) == pytest.approx(0.6)  # the accuracy of always answering the majority
    assert metrics.majority_share(always_one) == 1.0
    # F1 of class "1": 2*6/(10+6) = 0.75; classes 2, 3, 4: 0 -> macro 0.1875
    assert metrics.macro_f1(always_one, gold) == pytest.approx(0.75 / 4)
    assert metrics.macro_f1(gold, gold) == 1.0
    # hand-computed: class a: tp 1, predicted 2, actual 2 -> 0.5; b: tp 1, 1, 2 -> 2/3; "x" counts against b only
    assert metrics.macro_f1(["a", "a", "b", "x"], ["a", "b", "b", "a"]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert metrics.majority_share([]) == 0.0 and metrics.macro_f1([], []) == 0.0


def test_random_column_comes_from_each_task_label_set(tmp_path):
    def jl(name, rows):
        p = tmp_path / name
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return str(p)

    mc = jl("mc.jsonl", [{"question": "q1", "candidates": ["a", "b", "c", "d"], "answer": "1"},
                          {"question": "q2", "candidates": ["a", "b"], "answer": "2"}])
    fa_sent = jl("fa.jsonl", [{"review": "r", "question": "q", "label": lab} for lab in ("-2", "1", "0", "3", "-3")])
    en_sent = jl("en.jsonl", [{"text": "t", "label": lab} for lab in ("positive", "negative", "neutral")])
    summ = jl("s.jsonl", [{"article": "a", "summary": "s"}])
    import yaml

    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"suite": "s", "tasks": [
        {"name": "multiple_choice", "language": "fa", "data": {"format": "parsinlu_mc", "path": mc}},
        {"name": "sentiment", "language": "fa", "data": {"format": "parsinlu_sentiment", "path": fa_sent}},
        {"name": "sentiment", "language": "en", "data": {"format": "jsonl", "path": en_sent}},
        {"name": "summarization", "language": "en", "data": {"format": "pn_summary", "path": summ}},
    ]}), encoding="utf-8")
    tasks = {t.id: t for t in load_tasks([str(suite)], target_language="fa")}
    s = EvalSettings()
    assert random_baseline(tasks["fa/multiple_choice"], s) == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert random_baseline(tasks["fa/sentiment"], s) == pytest.approx(0.5)  # binary after the ParsiNLU mapping
    assert random_baseline(tasks["en/sentiment"], s) == pytest.approx(1 / 3)
    assert random_baseline(tasks["en/summarization"], s) is None
    assert task_info(tasks["fa/sentiment"], s)["random"] == pytest.approx(0.5)
