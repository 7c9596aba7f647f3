"""The run report: hand-made artefacts of every stage in, one self-contained HTML page and a Markdown table
out; missing parts shown as "not run"; the page checked in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from langadapt.cli import main
from langadapt.eval.results import markdown_tables
from langadapt.report import write_report

FAMILIES = [("multiple_choice", "Multiple choice", "choice", True), ("sentiment", "Sentiment", "choice", True),
            ("entailment", "Entailment", "choice", False), ("summarization", "Summarization", "generate", False),
            ("translation", "Translation", "generate", False)]
RANDOM = {("en", "multiple_choice"): 0.25, ("fa", "multiple_choice"): 0.25, ("en", "sentiment"): 1 / 3,
          ("fa", "sentiment"): 0.5, ("en", "entailment"): 1 / 3, ("fa", "entailment"): 1 / 3}


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _results() -> dict:
    models = ["base", "align", "pretrain"]
    tasks, rows = [], []
    score = {"base": 0.30, "align": 0.40, "pretrain": 0.35}
    for lang in ("en", "fa"):
        for fam, title, kind, unseen in FAMILIES:
            tasks.append({"id": f"{lang}/{fam}", "name": fam, "language": lang, "family": fam, "title": title, "kind": kind,
                          "block": "english" if lang == "en" else "target", "unseen": unseen, "n": 20,
                          "random": RANDOM.get((lang, fam)), "direction": ("en-fa" if lang == "en" else "fa-en")
                          if fam == "translation" else None, "metrics": []})
            for m in models:
                def row(metric, value, protocol="original", n=20):
                    rows.append({"model": m, "stage": m, "task": fam, "language": lang, "metric": metric, "value": value,
                                 "n": n, "protocol": protocol, "settings": {"mode": "generate", "bleu_signature": "nrefs:1|tok:13a"}})
                if kind == "choice":
                    row("accuracy", score[m] + (0.1 if lang == "fa" else 0))
                    # the base model mostly fails to follow Persian entailment instructions: a dash
                    row("non_following", 15 if (m, lang, fam) == ("base", "fa", "entailment") else 1)
                    if lang == "fa" and fam != "translation":
                        row("accuracy", score[m] + 0.05, protocol="translated-instruction")
                        row("accuracy", score[m] + 0.08, protocol="translated-instruction+input")
                else:
                    row("bleu", 100 * score[m] / 2)
                    row("rouge_l" if fam == "summarization" else "chrf", 25.0)
                    row("non_following", 2)
                    if lang == "fa" and fam == "summarization":
                        row("bleu", 20.0, protocol="translated-instruction")
                if fam == "multiple_choice":
                    for cat, v in (("math_and_logic", 0.2), ("literature", 0.5), ("common_knowledge", 0.4)):
                        row(f"accuracy:{cat}", v, n=7)
    for stage, (t, e) in {"align": (2.1, 1.15), "pretrain": (1.8, 1.3)}.items():
        rows += [{"model": stage, "stage": stage, "task": "heldout", "language": "fa", "metric": "bpc", "value": t, "n": None,
                  "protocol": "original", "settings": {}},
                 {"model": stage, "stage": stage, "task": "heldout", "language": "en", "metric": "bpc", "value": e, "n": None,
                  "protocol": "original", "settings": {}}]
    return {"run": "demo", "base_model": "smollm2-135m-instruct", "language": {"code": "fa", "name": "Persian"},
            "settings": {"mode": "generate", "batch_size": 8}, "models": [{"name": m, "stage": m} for m in models],
            "tasks": tasks, "rows": rows}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    d = tmp_path / "runs" / "demo"
    _dump(d / "clean" / "report.json", {
        "sources": [{"source": "poems", "type": "poems", "original_bytes": 4_000_000, "cleaned_bytes": 2_500_000,
                     "sentences_in": 1000, "sentences_out": 700, "drops": {"too_short": 200, "language": 100}}],
        "totals": {"source": "total", "type": "", "original_bytes": 4_000_000, "cleaned_bytes": 2_500_000,
                   "sentences_in": 1000, "sentences_out": 700, "drops": {"too_short": 200, "language": 100}}})
    _dump(d / "tokenizer" / "report.json", {
        "base_vocab_size": 49152, "merged_vocab_size": 61234, "new_pieces": 12082, "overlap": 1918,
        "fertility": {"target": {"base": {"tokens_per_word": 4.8, "tokens_per_char": 0.97},
                                 "merged": {"tokens_per_word": 1.46, "tokens_per_char": 0.3}},
                      "english": {"base": {"tokens_per_word": 1.3}, "merged": {"tokens_per_word": 1.3}}}})
    _dump(d / "align" / "bpc.json", {
        "target": {"start": 3.2, "end": 2.1, "steps": [{"name": "monolingual", "step": s, "bpc": 3.2 - 0.1 * s} for s in range(0, 11, 2)],
                   "monolingual": {"start": 3.2, "end": 2.3}},
        "english": {"start": 1.1, "end": 1.15, "steps": []}})
    _dump(d / "pretrain" / "bpc.json", {"target": {"start": 2.1, "end": 1.8}, "english": {"start": 1.15, "end": 1.3}})
    for stage in ("align", "pretrain"):
        lines = [json.dumps({"name": "monolingual" if s < 6 or stage == "pretrain" else "bilingual", "step": s,
                             "loss": 5.0 / (s + 1), "lr": 1e-4}) for s in range(1, 12)]
        lines.append(json.dumps({"name": "x", "step": 11, "bpc_target": 2.0}))  # a bpc row: no loss
        (d / stage / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"torn", encoding="utf-8")
    for stage, secs in (("clean", 12.5), ("tokenizer", 30.0), ("align", 100.0), ("pretrain", 80.0), ("eval", 50.0)):
        _dump(d / stage / "COMPLETE.json", {"stage": stage, "hash": "h", "finished_at": "2026-11-26T10:00:00",
                                            "seconds": secs, "summary": {"note": f"{stage} done"}})
    _dump(d / "eval" / "results.json", _results())
    return d


SECTIONS = ("tasks", "categories", "protocol", "bpc", "loss", "clean", "tokenizer", "stages", "settings")


def test_report_has_every_section_and_the_paper_table_layout(run_dir):
    out, md = write_report(run_dir)
    page = out.read_text(encoding="utf-8")
    assert out == run_dir / "report.html"
    for s in SECTIONS:
        assert f'<section id="{s}">' in page
    for s in SECTIONS[:-2]:  # every part is present, so no section says "not run" as a whole
        assert '<p class="not-run">' not in page.split(f'<section id="{s}">')[1].split("</section>")[0], s
    assert ">sft</td><td colspan=\"4\" class=\"name not-run\">not run<" in page  # sft did not run
    assert "English tasks" in page and "Persian tasks" in page
    for row in ("*Multiple choice", "*Sentiment", "Entailment", "Summarization", "Translation", "Avg. Classification",
                "Avg. Generation", "Held-out bits/char"):
        assert row in page
    assert page.count("<svg") >= 4  # bpc per stage, bpc during training, two loss charts
    assert 'data-name="monolingual"' in page and 'data-name="bilingual"' in page
    assert "61,234" in page and "4.800" in page and "1.460" in page and "-69.6%" in page  # vocab, fertility before/after
    assert "poems" in page and "2.50" in page and "too short" in page  # cleaning table: cleaned MB, drops
    assert "Translated instructions + inputs" in page and "literature" in page
    # self-contained: nothing fetched from anywhere
    for ref in ("<script src", "<link", "@import", "url(", "https://", "http://"):
        assert ref not in page


def test_markdown_table_marks_dashes_best_and_random(run_dir):
    md = markdown_tables(json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8")))
    en, fa = md.split("**Persian tasks**")
    assert "| Task | Random | base | align | pretrain |" in en
    assert "| *Sentiment | 0.33 | 0.30 | **0.40** | 0.35 |" in en
    assert "| *Sentiment | 0.50 | 0.40 | **0.50** | 0.45 |" in fa
    assert "| Entailment | 0.33 | - | **0.50** | 0.45 |" in fa  # 15 of 20 answers did not follow
    # a dash counts as 0: (0.40 + 0.40 + 0) / 3 for the base model
    assert "| Avg. Classification | 0.36 | 0.27 | **0.50** | 0.45 |" in fa
    assert "| Translation (fa→en) | - | 0.15 | **0.20** | 0.17 |" in fa
    assert "| Held-out bits/char ↓ | - | n/a | 2.100 | **1.800** |" in fa


def test_report_shows_not_run_for_missing_parts(tmp_path):
    empty = tmp_path / "runs" / "nothing"
    empty.mkdir(parents=True)
    out, md = write_report(empty, tmp_path / "r.html")
    page = out.read_text(encoding="utf-8")
    for s in SECTIONS:
        section = page.split(f'<section id="{s}">')[1].split("</section>")[0]
        assert "not run" in section, s
    assert "no evaluation results" in md


def test_report_command_prints_the_table_and_names_a_missing_folder(run_dir, capsys, tmp_path):
    assert main(["report", str(run_dir), "--out", str(tmp_path / "x.html")]) == 0
    printed = capsys.readouterr().out
    assert "| *Multiple choice | 0.25 |" in printed and (tmp_path / "x.html").is_file()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err


CHROMIUM = os.environ.get("LANGADAPT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    out, _ = write_report(run_dir)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(out.as_uri())
        assert page.title() == "langadapt report: demo"
        main_table = page.locator("section#tasks table.main")
        assert main_table.is_visible() and main_table.bounding_box()["width"] > 400
        assert page.locator("section#tasks table.main tr").count() == 2 + 8  # two header rows, 5 tasks, 2 averages, bpc
        assert page.locator("section#tasks td.dash").count() == 1
        for sid in ("bpc", "loss"):
            charts = page.locator(f"section#{sid} svg.chart")
            assert charts.count() >= 1
            box = charts.first.bounding_box()
            assert box["width"] > 300 and box["height"] > 200
            assert page.locator(f"section#{sid} svg polyline").count() >= 1
        for sid in ("clean", "tokenizer", "protocol", "categories"):
            assert page.locator(f"section#{sid} table").first.is_visible()
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000
