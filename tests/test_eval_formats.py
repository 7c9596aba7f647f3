"""Evaluation-set readers and task suites: every format parses a hand-made file; bad rows are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEMO
from langadapt.errors import DataError, RecipeError
from langadapt.eval.tasks import load_tasks


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def suite(tmp_path: Path, tasks: list[dict], name: str = "t") -> Path:
    import yaml

    return write(tmp_path / f"{name}.yaml", yaml.safe_dump({"suite": name, "tasks": tasks}, allow_unicode=True))


def one_task(tmp_path: Path, task: dict):
    (t,) = load_tasks([str(suite(tmp_path, [task]))], target_language="fa")
    return t, t.examples()


def test_parsinlu_multiple_choice_keeps_candidates_answer_and_category(tmp_path):
    f = jsonl(tmp_path / "mc.jsonl", [
        {"answer": "2", "candidates": ["11", "19", "5", "3"], "category": "math_and_logic", "question": "۲+۲؟", "id": "a"},
        {"answer": "1", "candidates": ["تهران", "شیراز", ""], "category": "common_knowledge", "question": "پایتخت؟", "id": "b"},
    ])
    t, ex = one_task(tmp_path, {"name": "multiple_choice", "language": "fa", "data": {"format": "parsinlu_mc", "path": str(f)}})
    assert [e.label for e in ex] == ["2", "1"]
    assert ex[0].options == ["11", "19", "5", "3"] and ex[1].category == "common_knowledge"
    assert [w for _, w in t.options(ex[1])] == ["1", "2"]  # ParsiNLU's empty padding candidate is not an option


def test_parsinlu_sentiment_is_binary_by_default_dropping_neutral_mixed_and_unmentioned(tmp_path):
    rows = [{"review": f"r{i}", "question": "q?", "aspect": "طعم", "label": lab, "guid": f"g{i}"}
            for i, lab in enumerate(["-3", "-2", "-1", "0", "1", "2", "3"])]
    f = jsonl(tmp_path / "s.jsonl", rows)
    t, ex = one_task(tmp_path, {"name": "sentiment", "language": "fa", "data": {"format": "parsinlu_sentiment", "path": str(f)}})
    assert [(e.id, e.label) for e in ex] == [("g1", "negative"), ("g2", "negative"), ("g4", "positive"), ("g5", "positive")]
    assert ex[0].fields == {"text": "r1", "question": "q?", "aspect": "طعم"}
    assert t.label_set() == ["positive", "negative"]


def test_parsinlu_sentiment_label_map_can_keep_neutral(tmp_path):
    f = jsonl(tmp_path / "s.jsonl", [{"review": "x", "question": "q", "label": lab} for lab in ("-1", "0", "1")])
    t, ex = one_task(tmp_path, {"name": "sentiment", "language": "fa", "data": {
        "format": "parsinlu_sentiment", "path": str(f), "label_map": {"-1": "negative", "0": "neutral", "1": "positive"}}})
    assert [e.label for e in ex] == ["negative", "neutral", "positive"]
    assert t.label_set() == ["positive", "negative", "neutral"]


def test_plain_sentiment_jsonl(tmp_path):
    f = jsonl(tmp_path / "s.jsonl", [{"text": "Great", "label": "positive"}, {"text": "Bad", "label": "negative"},
                                     {"text": "Meh", "label": "neutral"}])
    t, ex = one_task(tmp_path, {"name": "sentiment", "language": "en", "data": {"format": "jsonl", "path": str(f)}})
    assert [(e.fields["text"], e.label) for e in ex] == [("Great", "positive"), ("Bad", "negative"), ("Meh", "neutral")]


def test_parsinlu_entailment_csv_with_quoted_cells(tmp_path):
    f = write(tmp_path / "e.csv", ',sent1,sent2,label,source\n'
                                  '1,"او آمد، سپس رفت.",او رفت.,e,natural\n'
                                  '2,"سطر اول\nسطر دوم",هیچ.,c,translation-train\n'
                                  '3,الف,ب,n,natural\n')
    t, ex = one_task(tmp_path, {"name": "entailment", "language": "fa", "data": {"format": "parsinlu_entailment", "path": str(f)}})
    assert [e.label for e in ex] == ["entailment", "contradiction", "neutral"]
    assert ex[0].fields["premise"] == "او آمد، سپس رفت." and ex[1].fields["premise"] == "سطر اول\nسطر دوم"
    assert ex[2].where.endswith(":5")  # line numbers count the quoted newline


def test_plain_entailment_jsonl(tmp_path):
    f = jsonl(tmp_path / "e.jsonl", [{"premise": "A", "hypothesis": "B", "label": "entailment"},
                                     {"premise": "C", "hypothesis": "D", "label": "contradiction"}])
    _, ex = one_task(tmp_path, {"name": "entailment", "language": "en", "data": {"format": "jsonl", "path": str(f)}})
    assert ex[1].fields == {"premise": "C", "hypothesis": "D"} and ex[1].label == "contradiction"


def test_pn_summary_article_and_summary(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"id": "x1", "article": "متن بلند خبر.", "summary": "خلاصه."}])
    t, ex = one_task(tmp_path, {"name": "summarization", "language": "fa", "data": {"format": "pn_summary", "path": str(f)}})
    assert t.kind == "generate" and ex[0].fields["article"] == "متن بلند خبر." and ex[0].reference == "خلاصه."


def test_translation_tsv_with_or_without_header(tmp_path):
    a = write(tmp_path / "a.tsv", "persian\tenglish\nسلام\thello\nمن\tI\n")
    b = write(tmp_path / "b.tsv", "سلام\thello\nمن\tI\n")
    for f in (a, b):
        t, ex = one_task(tmp_path, {"name": "translation", "language": "fa", "direction": "fa-en",
                                    "data": {"format": "tsv", "path": str(f)}})
        assert [(e.fields["source"], e.reference) for e in ex] == [("سلام", "hello"), ("من", "I")]
        assert (t.source_lang, t.target_lang, t.output_lang) == ("fa", "en", "en")


def test_translation_from_two_aligned_files_and_misalignment_refused(tmp_path):
    src, ref = write(tmp_path / "x.fa", "یک\nدو\n"), write(tmp_path / "x.en", "one\ntwo\n")
    task = {"name": "translation", "language": "en", "direction": "en-fa",
            "data": {"format": "pair", "path": str(ref), "reference": str(src)}}
    t, ex = one_task(tmp_path, task)
    assert [(e.fields["source"], e.reference) for e in ex] == [("one", "یک"), ("two", "دو")]
    write(tmp_path / "x.fa", "یک\nدو\nسه\n")
    with pytest.raises(DataError, match="differ in length"):
        one_task(tmp_path, task)


def test_sni_task_file_gives_definition_and_label_set(tmp_path):
    f = write(tmp_path / "task363.json", json.dumps({
        "Definition": ["Classify the sentence as POS or NEG."],
        "Instances": [{"id": "i1", "input": "great film", "output": ["POS"]},
                      {"id": "i2", "input": "awful film", "output": ["NEG"]}]}))
    t, ex = one_task(tmp_path, {"name": "sentiment", "language": "en", "data": {"format": "sni", "path": str(f)}})
    assert t.label_set() == ["NEG", "POS"] and ex[0].label == "POS"
    from langadapt.eval.prompts import user_message

    assert user_message(t, ex[0]) == "Classify the sentence as POS or NEG.\n\ngreat film"


def test_malformed_rows_name_file_and_line(tmp_path):
    bad_json = write(tmp_path / "mc.jsonl", json.dumps({"answer": "1", "candidates": ["a", "b"], "question": "q"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"mc\.jsonl:2: not valid JSON"):
        one_task(tmp_path, {"name": "multiple_choice", "language": "en", "data": {"format": "parsinlu_mc", "path": str(bad_json)}})
    out_of_range = jsonl(tmp_path / "mc2.jsonl", [{"answer": "5", "candidates": ["a", "b"], "question": "q"}])
    with pytest.raises(DataError, match=r"mc2\.jsonl:1: 'answer' 5 is outside 1\.\.2"):
        one_task(tmp_path, {"name": "multiple_choice", "language": "en", "data": {"format": "parsinlu_mc", "path": str(out_of_range)}})
    unknown_label = jsonl(tmp_path / "s.jsonl", [{"text": "x", "label": "happy"}, {"text": "y", "label": "negative"}])
    with pytest.raises(DataError, match=r"s\.jsonl:1: label 'happy' is not one of the task's labels"):
        one_task(tmp_path, {"name": "sentiment", "language": "en", "data": {"format": "jsonl", "path": str(unknown_label)}})
    missing_field = jsonl(tmp_path / "e.jsonl", [{"premise": "x", "label": "neutral"}])
    with pytest.raises(DataError, match=r"e\.jsonl:1: no field 'hypothesis'"):
        one_task(tmp_path, {"name": "entailment", "language": "en", "data": {"format": "jsonl", "path": str(missing_field)}})


def test_task_yaml_mistakes_are_one_line_with_the_line_number(tmp_path):
    f = write(tmp_path / "s.yaml", "suite: s\ntasks:\n  - name: sentiment\n    language: en\n    colour: red\n"
                                   "    data: {format: jsonl, path: x.jsonl}\n")
    with pytest.raises(RecipeError, match=r"s\.yaml:5: tasks\.0\.colour: unknown key"):
        load_tasks([str(f)])
    with pytest.raises(RecipeError, match="neither a built-in suite"):
        load_tasks(["no-such-suite"])


def test_builtin_suite_path_variable_must_be_set(monkeypatch):
    monkeypatch.delenv("LANGADAPT_EVAL_PARSINLU", raising=False)
    with pytest.raises(RecipeError, match=r"eval\.paths\.parsinlu"):
        load_tasks(["parsinlu"], target_language="fa")


@pytest.mark.skipif(not (DEMO / "eval").is_dir(), reason="data/demo/eval is not present")
def test_demo_suite_reads_all_ten_bundled_sets():
    tasks = load_tasks(["demo"], target_language="fa")
    assert sorted(t.id for t in tasks) == sorted(f"{lang}/{n}" for lang in ("en", "fa") for n in
                                                 ("multiple_choice", "sentiment", "entailment", "summarization", "translation"))
    for t in tasks:
        assert len(t.examples()) >= 10, t.id
    by = {t.id: t for t in tasks}
    assert by["fa/sentiment"].label_set() == ["positive", "negative"]
    assert by["en/sentiment"].label_set() == ["positive", "negative", "neutral"]


def test_files_that_are_not_utf8_are_one_line_errors_naming_file_and_line(tmp_path):
    ok = json.dumps({"text": "خوب بود", "label": "positive"}, ensure_ascii=False).encode()
    bad_row = b'{"text": "caf\xe9 ok", "label": "negative"}'  # Latin-1, as exported by an old spreadsheet
    f = tmp_path / "s.jsonl"
    f.write_bytes(b"\n".join([ok] * 3000 + [bad_row, ok]) + b"\n")  # far past the decoder's first buffer
    with pytest.raises(DataError) as e:
        one_task(tmp_path, {"name": "sentiment", "language": "fa", "data": {"format": "jsonl", "path": str(f)}})
    assert str(e.value).startswith(f"{f}:3001: not UTF-8 text (invalid continuation byte at byte 13 of the line)")
    assert "\n" not in str(e.value)

    src = write(tmp_path / "x.en", "one\ntwo\n")
    ref = tmp_path / "x.fa"
    ref.write_bytes("یک\n".encode() + b"\xff\xfe\n")
    with pytest.raises(DataError, match=r"x\.fa:2: not UTF-8"):
        one_task(tmp_path, {"name": "translation", "language": "en", "direction": "en-fa",
                            "data": {"format": "pair", "path": str(src), "reference": str(ref)}})

    task_file = tmp_path / "suite.yaml"
    task_file.write_bytes(b"suite: s\ntasks:\n  - name: sentiment # caf\xe9\n")
    with pytest.raises(RecipeError, match=r"suite\.yaml:3: not UTF-8 text"):
        load_tasks([str(task_file)])


def test_rows_without_a_gold_label_are_skipped_and_counted(tmp_path):
    """The official ParsiNLU entailment test file has two rows labelled '-': the eval stage refused the whole file."""
    from langadapt.eval.evaluate import EvalSettings, task_info

    f = write(tmp_path / "entailment_test.csv", ",sent1,sent2,label,source\n"
              "1,او آمد.,او رفت.,c,natural-wiki\n"
              "2,هوا گرم است.,هوا سرد نیست.,-,natural-wiki\n"
              '3,"کتاب، روی میز.",کتاب هست.,e,natural-wiki\n'
              "4,باران بارید.,زمین خیس شد.,-,translation-train\n"
              "5,ما رفتیم.,ما آمدیم.,n,natural-wiki\n")
    t, ex = one_task(tmp_path, {"name": "entailment", "language": "fa", "data": {"format": "parsinlu_entailment", "path": str(f)}})
    assert [e.label for e in ex] == ["contradiction", "entailment", "neutral"]
    assert t.unlabeled == 2 and task_info(t, EvalSettings())["unlabeled"] == 2
    mc = jsonl(tmp_path / "mc.jsonl", [{"answer": a, "candidates": ["x", "y"], "question": "q"} for a in ("1", "", "2", "-")])
    t, ex = one_task(tmp_path, {"name": "multiple_choice", "language": "fa", "data": {"format": "parsinlu_mc", "path": str(mc)}})
    assert [e.label for e in ex] == ["1", "2"] and t.unlabeled == 2
    # a label that is there but unknown is still the data's mistake, and a file of unlabeled rows has nothing to score
    bad = write(tmp_path / "bad.csv", ",sent1,sent2,label,source\n1,a,b,x,w\n")
    with pytest.raises(DataError, match="label 'x' is not in the task's label_map"):
        one_task(tmp_path, {"name": "entailment", "language": "fa", "data": {"format": "parsinlu_entailment", "path": str(bad)}})
    none = write(tmp_path / "none.csv", ",sent1,sent2,label,source\n1,a,b,-,w\n2,c,d,,w\n")
    with pytest.raises(DataError, match=r"no usable examples \(2 rows without a label"):
        one_task(tmp_path, {"name": "entailment", "language": "fa", "data": {"format": "parsinlu_entailment", "path": str(none)}})
