"""The eval stage end to end on a tiny model: results.json/csv with every column, the report, resuming,
the translation protocol's prompts, and recipe mistakes caught before any work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_llama
from langadapt.errors import DataError, RecipeError
from langadapt.eval.prompts import build_messages, instruction_text
from langadapt.eval.protocols import make_parts
from langadapt.eval.tasks import load_tasks
from langadapt.recipe import load_recipe
from langadapt.run import run_stage

SENT = [("غذا عالی بود", "2"), ("خیلی بد بود", "-2"), ("دوستش داشتم", "1"), ("اصلا خوب نبود", "-1"), ("معمولی", "0")]
MC = [{"question": "پایتخت ایران کجاست؟", "candidates": ["تهران", "شیراز", "12"], "answer": "1", "category": "common_knowledge"},
      {"question": "۲ به علاوه ۲؟", "candidates": ["3", "4"], "answer": "2", "category": "math_and_logic"}]
TR = [("سلام دنیا", "hello world"), ("من خوبم", "I am fine")]


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def suite(tmp_path) -> Path:
    sent = _jsonl(tmp_path / "s.jsonl", [{"review": t, "question": "نظر شما؟", "label": lab} for t, lab in SENT])
    mc = _jsonl(tmp_path / "mc.jsonl", MC)
    tr = tmp_path / "t.tsv"
    tr.write_text("".join(f"{a}\t{b}\n" for a, b in TR), encoding="utf-8")
    en = _jsonl(tmp_path / "en.jsonl", [{"text": "great", "label": "positive"}, {"text": "awful", "label": "negative"}])
    f = tmp_path / "suite.yaml"
    f.write_text(yaml.safe_dump({"suite": "mini", "tasks": [
        {"name": "sentiment", "language": "en", "unseen": True, "data": {"format": "jsonl", "path": en}},
        {"name": "multiple_choice", "language": "fa", "unseen": True, "data": {"format": "parsinlu_mc", "path": mc}},
        {"name": "sentiment", "language": "fa", "unseen": True, "data": {"format": "parsinlu_sentiment", "path": sent}},
        {"name": "translation", "language": "fa", "direction": "fa-en", "data": {"format": "tsv", "path": str(tr)}},
    ]}, allow_unicode=True), encoding="utf-8")
    return f


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama and a byte-level BPE tokenizer trained here, saved as a model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([t for t, _ in SENT + TR] + ["positive negative Answer Review"],
                            trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    d = tmp_path_factory.mktemp("tiny") / "model"
    model = tiny_llama(vocab_size=len(fast))
    model.config.pad_token_id = fast.pad_token_id
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d


def _recipe(tmp_path: Path, model_dir: Path, suite: Path, **eval_cfg) -> Path:
    r = tmp_path / "recipe.yaml"
    r.write_text(yaml.safe_dump({
        "name": "t", "base_model": str(model_dir), "output_dir": str(tmp_path / "runs"),
        "eval": {"tasks": [str(suite)], "batch_size": 4, "max_new_tokens": 6, **eval_cfg}}), encoding="utf-8")
    return r


def test_eval_stage_writes_results_csv_json_and_report_then_resumes(tmp_path, tiny_model_dir, suite, monkeypatch):
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, suite, models=[{"name": "twin", "path": str(tiny_model_dir)}],
                                 protocol={"enabled": True, "translator": "task", "variants": ["instruction"]}))
    summary = run_stage(recipe, "eval", resume=False)
    out = recipe.run_dir / "eval"
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert summary["models"] == ["base", "twin"] and [m["name"] for m in results["models"]] == ["base", "twin"]
    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "stage", "task", "language", "metric", "value", "n", "protocol", "settings"]
    got = {(r["model"], r["language"], r["task"], r["metric"], r["protocol"]): r for r in rows}
    acc = got[("base", "fa", "sentiment", "accuracy", "original")]
    assert acc["n"] == "4" and 0 <= float(acc["value"]) <= 1  # the neutral review is left out (binary mapping)
    assert json.loads(acc["settings"])["mode"] == "loglik"
    assert ("twin", "fa", "multiple_choice", "accuracy:common_knowledge", "original") in got
    assert ("base", "fa", "translation", "bleu", "original") in got and ("base", "fa", "translation", "chrf", "original") in got
    bleu = got[("base", "fa", "translation", "bleu", "original")]
    assert json.loads(bleu["settings"])["bleu_signature"].startswith("nrefs:1|")
    assert got[("random", "fa", "sentiment", "accuracy", "original")]["value"] == "0.5"
    assert got[("random", "fa", "multiple_choice", "accuracy", "original")]["value"] == str(round((1 / 3 + 1 / 2) / 2, 6))
    assert ("base", "fa", "sentiment", "accuracy", "translated-instruction") in got
    assert ("base", "fa", "translation", "bleu", "translated-instruction") not in got  # translation is not re-run
    assert ("base", "en", "sentiment", "accuracy", "translated-instruction") not in got
    assert (out / "report.html").is_file() and "| *Sentiment |" in (out / "report.md").read_text(encoding="utf-8")
    first = json.loads((out / "predictions" / "base__fa_sentiment.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["prompt"].startswith("احساس این نظر مثبت یا منفی است؟") and set(first["scores"]) == {"positive", "negative"}
    marker = json.loads((out / "COMPLETE.json").read_text(encoding="utf-8"))
    assert set(marker["summary"]["table"]) == {"english", "target"}

    # beside accuracy: macro-F1 and the majority shares, from the predictions themselves (issue 18)
    from sklearn.metrics import f1_score

    preds = [json.loads(x) for x in (out / "predictions" / "base__fa_sentiment.jsonl").read_text(encoding="utf-8").splitlines()]
    gold, said = [p["gold"] for p in preds], [p["prediction"] for p in preds]
    f1 = float(got[("base", "fa", "sentiment", "macro_f1", "original")]["value"])
    assert f1 == pytest.approx(f1_score(gold, said, average="macro", labels=sorted(set(gold))), abs=1e-6)
    top = max(said.count(x) for x in set(said)) / len(said)
    assert float(got[("base", "fa", "sentiment", "majority_predicted", "original")]["value"]) == pytest.approx(top, abs=1e-6)
    assert float(got[("base", "fa", "sentiment", "majority_gold", "original")]["value"]) == pytest.approx(
        max(gold.count(x) for x in set(gold)) / len(gold), abs=1e-6)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "Classification beyond accuracy" in md and "| fa/sentiment | base | 4 |" in md
    assert 'id="classification"' in (out / "report.html").read_text(encoding="utf-8")

    # A killed evaluation resumes at the next model: cached models are not loaded again.
    (out / "COMPLETE.json").unlink()
    (out / "cache" / "twin.json").unlink()
    loaded = []
    import langadapt.eval.stage as stage

    real = stage.make_backend
    monkeypatch.setattr(stage, "make_backend", lambda entry, cfg: loaded.append(entry["name"]) or real(entry, cfg))
    run_stage(recipe, "eval", resume=True)
    assert loaded == ["twin"]
    again = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert len(again["rows"]) == len(results["rows"])


def test_generate_mode_counts_answers_that_do_not_follow(tmp_path, tiny_model_dir, suite):
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, suite, mode="generate", select=["fa/sentiment"]))
    run_stage(recipe, "eval", resume=False)
    rows = json.loads((recipe.run_dir / "eval" / "results.json").read_text(encoding="utf-8"))["rows"]
    by = {r["metric"]: r for r in rows if r["model"] == "base"}
    assert by["accuracy"]["settings"]["mode"] == "generate" and by["accuracy"]["settings"]["repetition_penalty"] == 1.1
    # a random tiny model names no label: every answer is counted as not following
    assert by["non_following"]["value"] == by["non_following"]["n"] == 4
    assert by["macro_f1"]["value"] == 0 and by["majority_predicted"]["value"] == 0  # no label named at all


class RecordingBackend:
    """Stands in for a model: records what it is asked and answers with a fixed English text."""

    name = "rec"
    supports_loglik = False

    def __init__(self):
        self.asked: list[str] = []

    def generate(self, conversations, **kw):
        self.asked += [c[-1]["content"] for c in conversations]
        return [f"EN({len(self.asked) - len(conversations) + i})" for i in range(len(conversations))]


def test_translation_protocol_translates_instruction_and_inputs_into_english_prompts(suite):
    tasks = {t.id: t for t in load_tasks([str(suite)], target_language="fa")}
    task = tasks["fa/sentiment"]
    ex = task.examples()
    rec = RecordingBackend()
    parts = make_parts("instruction+input", task, ex, translator="self", backend=rec)
    fa_instruction = instruction_text(task, "fa", ex[0])
    assert any(a.endswith(fa_instruction) for a in rec.asked)  # the model itself translated the instruction
    assert all(a.startswith("Translate the following Persian text into English.") for a in rec.asked)
    msg = build_messages(task, ex[0], [], parts)[-1]["content"]
    assert "نظر" not in msg and "Review: EN(" in msg and "Question: EN(" in msg
    assert parts.label_lang == "en"
    # from a file: every text needs a translation, or the run stops naming how many are missing
    with pytest.raises(DataError, match="1 of 1 texts of task 'fa/sentiment' have no translation"):
        make_parts("instruction", task, ex, translator="file", file_map={})
    file_map = {fa_instruction: "Is this review positive or negative?"}
    parts = make_parts("instruction", task, ex, translator="file", file_map=file_map)
    msg = build_messages(task, ex[1], [], parts)[-1]["content"]
    assert msg.startswith("Is this review positive or negative?\n\nReview: خیلی بد بود")
    # the task's own English template, no translation at all
    parts = make_parts("instruction", task, ex, translator="task")
    assert build_messages(task, ex[0], [], parts)[-1]["content"].startswith("Is the sentiment of this review positive or negative?")
    mc = make_parts("instruction+input", tasks["fa/multiple_choice"], tasks["fa/multiple_choice"].examples(),
                    translator="self", backend=RecordingBackend())
    assert "12" not in mc.translations and "تهران" in mc.translations  # numbers are not sent for translation


@pytest.mark.parametrize("eval_cfg,message", [
    ({"colour": 1}, "unknown key 'eval.colour'"),
    ({"models": [{"name": "x"}]}, "needs either 'path'"),
    ({"models": [{"name": "x", "base_url": "http://h/v1"}]}, "needs 'model'"),
    ({"protocol": {"enabled": True, "translator": "task"}}, "can only translate the instruction"),
    ({"protocol": {"translator": "file"}}, "needs 'file'"),
    ({"stages": ["nope"]}, "eval.stages"),
    ({"max_examples_per_task": {"sentiment": 0}}, "at least 1"),
])
def test_eval_recipe_mistakes_are_refused_with_the_line(tmp_path, tiny_model_dir, suite, eval_cfg, message):
    with pytest.raises(RecipeError, match=message) as e:
        load_recipe(_recipe(tmp_path, tiny_model_dir, suite, **eval_cfg))
    assert "recipe.yaml:" in str(e.value)
