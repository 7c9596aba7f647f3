"""lm-evaluation-harness tasks inside ``langadapt eval`` (issue 20): an ``lm_eval:`` entry of eval.tasks runs
through lm-eval's Python API on every local model column (a PEFT adapter included), its scores land in
results.json/csv in the usual row format and in the report beside the paper's tasks, and mistakes (a
misspelt task name, a missing include folder, data lm-eval cannot read) are one-line errors before any
model loads. The tasks are defined here, over local JSONL files: nothing comes from the Hub."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from langadapt.errors import LangadaptError, RecipeError
from langadapt.recipe import load_recipe
from test_eval_stage import suite, tiny_model_dir  # noqa: F401 (fixtures)

pytest.importorskip("lm_eval")

FA = [{"question": "پایتخت ایران کجاست؟ شهر", "choices": ["تهران", "شیراز", "باران"], "answer": 0},
      {"question": "امروز هوا خیلی خوب است و", "choices": ["آفتابی", "کتاب", "سقف"], "answer": 0},
      {"question": "من هر روز صبح چای", "choices": ["می‌نوشم", "می‌خوانم", "بلند"], "answer": 0},
      {"question": "کتاب روی میز بزرگ", "choices": ["است", "نیست", "خورشید"], "answer": 1},
      {"question": "باران روی سقف خانه", "choices": ["می‌بارد", "می‌خواند", "گرم"], "answer": 0},
      {"question": "آنها در سالن بزرگ آواز", "choices": ["می‌خوانند", "می‌بارد", "میز"], "answer": 0}]
EN = [{"question": "The cat sat on the", "choices": ["mat", "sky", "sea"], "answer": 0},
      {"question": "Birds fly over the", "choices": ["sea", "mat", "book"], "answer": 0},
      {"question": "She reads a long", "choices": ["book", "roof", "town"], "answer": 0},
      {"question": "Rain falls on the", "choices": ["roof", "hall", "cat"], "answer": 1},
      {"question": "They sing in the", "choices": ["hall", "park", "sun"], "answer": 0},
      {"question": "We walk to the old", "choices": ["town", "mat", "rain"], "answer": 2}]


def task_yaml(name: str, data: Path) -> str:
    return f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def harness_tasks(tmp_path, monkeypatch) -> Path:
    """A folder of lm-eval task YAML files: a Persian and an English task over local JSONL, and a group of both."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "lm_tasks"
    folder.mkdir()
    for name, docs in (("langadapt_tiny_fa", FA), ("langadapt_tiny_en", EN)):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        (folder / f"{name}.yaml").write_text(task_yaml(name, data), encoding="utf-8")
    (folder / "langadapt_tiny.yaml").write_text("""group: langadapt_tiny
task:
  - langadapt_tiny_fa
  - langadapt_tiny_en
aggregate_metric_list:
  - metric: acc
    aggregation: mean
    weight_by_size: true
""", encoding="utf-8")
    return folder


@pytest.fixture
def adapter_dir(tmp_path, tiny_model_dir) -> Path:  # noqa: F811
    """A LoRA adapter of the tiny model with non-zero weights, saved as a PEFT folder: an adapter column."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))
    out = tmp_path / "adapter"
    lora.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _recipe(tmp_path: Path, model_dir: Path, tasks: list[str], **eval_cfg) -> Path:
    r = tmp_path / "recipe.yaml"
    r.write_text(yaml.safe_dump({
        "name": "t", "base_model": str(model_dir), "output_dir": str(tmp_path / "runs"),
        "eval": {"tasks": tasks, "batch_size": 4, "max_new_tokens": 4, "device": "cpu", **eval_cfg}}, allow_unicode=True),
        encoding="utf-8")
    return r


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


def direct_accuracy(model, tok, docs: list[dict]) -> float:
    """What lm-eval's multiple-choice accuracy means, computed with the model itself: the choice whose
    tokens (after the question and a space) have the highest summed log-probability."""
    right = 0
    for d in docs:
        ctx = tok(d["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for c in d["choices"]:
            whole = tok(d["question"] + " " + c, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
        right += max(range(len(scores)), key=scores.__getitem__) == d["answer"]
    return right / len(docs)


def test_an_lm_eval_task_runs_inside_the_eval_stage_on_every_model(tmp_path, tiny_model_dir, suite, harness_tasks,  # noqa: F811
                                                                     adapter_dir):
    from langadapt.models import load_model_and_tokenizer
    from langadapt.run import preflight, run_stage

    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, [str(suite), "lm_eval:langadapt_tiny"],
                                 lm_eval_include=[str(harness_tasks)], select=["sentiment", "lm_eval:langadapt_tiny"],
                                 models=[{"name": "lora", "path": str(adapter_dir)}]))
    preflight(recipe)  # the names are known: no error
    summary = run_stage(recipe, "eval", resume=False)
    assert "lm_eval:langadapt_tiny" in summary["tasks"] and "en/sentiment" in summary["tasks"]
    out = recipe.run_dir / "eval"
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = {(r["model"], r["task"], r["metric"]): r for r in results["rows"] if r["task"].startswith("lm_eval:")}
    assert set(rows) == {(m, f"lm_eval:{t}", "acc") for m in ("base", "lora")
                         for t in ("langadapt_tiny", "langadapt_tiny_fa", "langadapt_tiny_en")}
    assert results["lm_eval"][0]["id"] == "lm_eval:langadapt_tiny"

    # the scores are the models' own: the adapter's through PEFT, not the base's
    expected = {}
    for name, path in (("base", tiny_model_dir), ("lora", adapter_dir)):
        model, tok = load_model_and_tokenizer(str(path))
        model.eval()
        expected[name] = {"langadapt_tiny_fa": direct_accuracy(model, tok, FA),
                          "langadapt_tiny_en": direct_accuracy(model, tok, EN)}
        expected[name]["langadapt_tiny"] = (expected[name]["langadapt_tiny_fa"] + expected[name]["langadapt_tiny_en"]) / 2
    assert expected["base"] != expected["lora"]  # the adapter changes the answers: it is really applied
    for (model, task, _), r in rows.items():
        assert r["value"] == pytest.approx(expected[model][task.removeprefix("lm_eval:")], abs=1e-6)
        assert r["stage"] == ("base" if model == "base" else "extra") and r["protocol"] == "original"
        assert r["settings"]["stderr"] is not None and r["settings"]["higher_is_better"] is True
    for model in ("base", "lora"):  # language identified from the prompts; n counted by lm-eval
        assert [(rows[(model, f"lm_eval:{t}", "acc")]["language"], rows[(model, f"lm_eval:{t}", "acc")]["n"])
                for t in ("langadapt_tiny_fa", "langadapt_tiny_en", "langadapt_tiny")] == [("fa", 6), ("en", 6), ("mul", 12)]

    with open(out / "results.csv", encoding="utf-8") as f:  # the same row format as every other task
        csv_rows = [r for r in csv.DictReader(f) if r["task"] == "lm_eval:langadapt_tiny_fa"]
    assert len(csv_rows) == 2 and json.loads(csv_rows[0]["settings"])["harness"].startswith("lm-evaluation-harness")

    # the report: the paper's table and the lm-eval table beside it
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "lm-evaluation-harness tasks" in page and "langadapt_tiny_fa" in page and "Sentiment" in page
    md = (out / "report.md").read_text(encoding="utf-8")
    fa = f"{expected['base']['langadapt_tiny_fa']:.3f}"
    assert "**lm-evaluation-harness tasks**" in md and f"| langadapt_tiny_fa | fa | acc ↑ | 6 | {fa}" in md.replace("**", "")


def test_a_misspelt_lm_eval_task_is_refused_before_any_stage_with_close_names(tmp_path, tiny_model_dir,  # noqa: F811
                                                                                harness_tasks):
    from langadapt.run import preflight

    path = _recipe(tmp_path, tiny_model_dir, ["demo", "lm_eval:langadapt_tiny_fr"], lm_eval_include=[str(harness_tasks)])
    with pytest.raises(RecipeError) as e:
        preflight(load_recipe(path))
    line = line_of(path, "lm_eval:langadapt_tiny_fr")
    assert str(e.value).startswith(f"{path.resolve()}:{line}: eval.tasks: lm_eval:langadapt_tiny_fr is not a task, group or "
                                   "tag of lm-evaluation-harness or in eval.lm_eval_include; close names: ")
    assert "langadapt_tiny_fa" in str(e.value) and "\n" not in str(e.value)
    builtin = _recipe(tmp_path, tiny_model_dir, ["lm_eval:belebele_pes_Arab", "lm_eval:belebele_pes_arb"])
    line = line_of(builtin, "lm_eval:belebele_pes_arb")
    with pytest.raises(RecipeError, match=rf":{line}: eval.tasks: lm_eval:belebele_pes_arb .*close names: belebele_pes_Arab"):
        preflight(load_recipe(builtin))


def test_lm_eval_recipe_mistakes_are_one_line_errors(tmp_path, tiny_model_dir, harness_tasks, monkeypatch):  # noqa: F811
    from langadapt.run import run_stage

    with pytest.raises(RecipeError, match=r"eval.lm_eval_include.0: input not found: nowhere"):
        load_recipe(_recipe(tmp_path, tiny_model_dir, ["lm_eval:x"], lm_eval_include=["nowhere"]))
    f = tmp_path / "file.yaml"
    f.write_text("task: x\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"lm_eval_include: expected a folder of lm-eval task YAML files"):
        load_recipe(_recipe(tmp_path, tiny_model_dir, ["lm_eval:x"], lm_eval_include=[str(f)]))
    with pytest.raises(RecipeError, match=r"eval.tasks: 'lm_eval:' is not lm_eval:<task name>"):
        load_recipe(_recipe(tmp_path, tiny_model_dir, ["demo", "lm_eval:"]))
    from langadapt.run import preflight

    with pytest.raises(RecipeError, match=r"^eval.select: lm_eval:langadapt_tiny_en is not in eval.tasks$"):
        preflight(load_recipe(_recipe(tmp_path, tiny_model_dir, ["demo"], select=["lm_eval:langadapt_tiny_en"])))

    # data lm-eval cannot read fails before any model is loaded
    (harness_tasks / "langadapt_tiny_en.yaml").write_text(task_yaml("langadapt_tiny_en", tmp_path / "gone.jsonl"),
                                                          encoding="utf-8")
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, ["lm_eval:langadapt_tiny_en"],
                                 lm_eval_include=[str(harness_tasks)]))
    import langadapt.eval.stage as stage

    loaded = []
    monkeypatch.setattr(stage, "make_backend", lambda entry, cfg: loaded.append(entry["name"]))
    with pytest.raises(LangadaptError) as e:
        run_stage(recipe, "eval", resume=False)
    assert str(e.value).startswith("eval.tasks: lm_eval:langadapt_tiny_en: lm-eval could not load the task (")
    assert "\n" not in str(e.value) and loaded == []
