"""The evaluation's results files and tables.

``write_results`` writes ``results.json`` and ``results.csv``; the functions below turn results into
the paper's tables (as data, as Markdown), which the run report (``langadapt.report``), the eval
stage's summary and the exported model card use.

The main table follows the paper's Table 5: rows are the tasks and the classification and generation
averages, columns the random baseline and each model, one block per language (English tasks, then
target-language tasks). Classification cells are accuracy; generation cells are BLEU/100 (the paper's
scale). A cell is a dash when most answers did not follow the instruction (generation mode), and a
dash counts as 0 in the averages, as in the paper's Table 6.

lm-evaluation-harness tasks (rows whose task is ``lm_eval:<name>``) have a table of their own beside it
(``harness_table``): their metrics are lm-eval's, on lm-eval's prompts, and stay out of the paper's averages.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from langadapt.files import atomic_path, write_json
from langadapt.layout import RESULTS

FAMILY_ORDER = ("multiple_choice", "sentiment", "entailment", "summarization", "translation")
CSV_COLUMNS = ("model", "stage", "task", "language", "metric", "value", "n", "protocol", "settings")
DASH_SHARE = 0.5  # more than half of the answers not following the instruction: a dash
HARNESS_PREFIX = "lm_eval:"  # the task of an lm-evaluation-harness row (recipe.LM_EVAL_PREFIX)
LANG_NAMES = {"en": "English", "fa": "Persian", "ar": "Arabic", "ur": "Urdu", "tr": "Turkish", "de": "German",
              "fr": "French", "es": "Spanish", "ru": "Russian", "hi": "Hindi"}


# --------------------------------------------------------------------------- results files


def write_results(out_dir: Path, results: dict) -> None:
    """``results.json`` (everything) and ``results.csv`` (one row per model, task, metric), atomically."""
    write_json(Path(out_dir) / RESULTS, results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in results["rows"]:
        w.writerow({**{k: r.get(k) for k in CSV_COLUMNS},
                    "settings": json.dumps(r.get("settings") or {}, ensure_ascii=False, sort_keys=True)})
    with atomic_path(Path(out_dir) / "results.csv") as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


# --------------------------------------------------------------------------- tables from results


def _index(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["model"], r["language"], r["task"], r["metric"], r.get("protocol", "original")): r for r in rows}


def cell_value(idx: dict, model: str, task: dict, protocol: str = "original") -> tuple[float | None, bool]:
    """(value on the paper's 0-1 scale, dashed) of a model on a task; (None, False) when not evaluated."""
    key = (model, task["language"], task["name"])
    metric = "accuracy" if task["kind"] == "choice" else "bleu"
    row = idx.get((*key, metric, protocol))
    if row is None or row.get("value") is None:
        return None, False
    value = row["value"] if metric == "accuracy" else row["value"] / 100.0
    nf = idx.get((*key, "non_following", protocol))
    dashed = bool(nf and nf.get("n") and nf["value"] / nf["n"] > DASH_SHARE)
    return value, dashed


def _model_names(results: dict) -> list[str]:
    return [m["name"] for m in results.get("models", [])]


def lang_name(code: str) -> str:
    return LANG_NAMES.get(code, code)


def main_table(results: dict, protocol: str = "original") -> list[dict]:
    """The paper's Table 5 as data: one block per language with rows of cells."""
    idx = _index(results.get("rows", []))
    models = _model_names(results)
    blocks = []
    for block in ("english", "target"):
        tasks = [t for t in results.get("tasks", []) if t["block"] == block]
        if not tasks:
            continue
        tasks.sort(key=lambda t: (FAMILY_ORDER.index(t["family"]) if t["family"] in FAMILY_ORDER else 99, t["name"]))
        lang = tasks[0]["language"]
        rows = []
        per_kind: dict[str, dict[str, list[float]]] = {"choice": {}, "generate": {}}
        rand: list[float] = []
        for t in tasks:
            cells = []
            for m in models:
                v, dashed = cell_value(idx, m, t, protocol)
                cells.append({"value": v, "dash": dashed})
                if v is not None:
                    per_kind[t["kind"]].setdefault(m, []).append(0.0 if dashed else v)
            if t["random"] is not None:
                rand.append(t["random"])
            title = t["title"] + (f" ({t['direction'].replace('-', '→')})" if t.get("direction") else "")
            rows.append({"title": title, "star": t.get("unseen", False), "random": t["random"], "cells": cells,
                         "kind": t["kind"], "task": t["name"], "n": t.get("n")})
        for kind, label in (("choice", "Avg. Classification"), ("generate", "Avg. Generation")):
            if not any(t["kind"] == kind for t in tasks):
                continue
            cells = []
            for m in models:
                vals = per_kind[kind].get(m)
                cells.append({"value": sum(vals) / len(vals) if vals else None, "dash": False})
            rows.append({"title": label, "star": False, "random": (sum(rand) / len(rand)) if kind == "choice" and rand else None,
                         "cells": cells, "kind": "average", "task": None})
        bpc = {r["model"]: r["value"] for r in results.get("rows", [])
               if r["metric"] == "bpc" and r["task"] == "heldout" and r["language"] == lang}
        if bpc and protocol == "original":
            rows.append({"title": "Held-out bits/char ↓", "star": False, "random": None, "kind": "bpc", "task": None,
                         "cells": [{"value": bpc.get(m), "dash": False} for m in models]})
        for r in rows:  # the best model of each row, as the paper marks it
            vals = [c["value"] for c in r["cells"] if c["value"] is not None and not c["dash"]]
            if vals and len(models) > 1:
                best = min(vals) if r["kind"] == "bpc" else max(vals)
                for c in r["cells"]:
                    c["best"] = c["value"] is not None and not c["dash"] and abs(c["value"] - best) < 1e-9
        name = "English tasks" if block == "english" else f"{lang_name(lang)} tasks"
        blocks.append({"name": name, "block": block, "language": lang, "models": models, "rows": rows})
    return blocks


def fmt(v: float | None, dash: bool = False, digits: int = 2) -> str:
    if dash:
        return "-"
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}"


def harness_table(results: dict) -> dict | None:
    """The lm-evaluation-harness rows as a table: one row per task (or group) and metric, one column per model;
    None when there are none."""
    rows = [r for r in results.get("rows", []) if str(r.get("task", "")).startswith(HARNESS_PREFIX)
            and r.get("protocol", "original") == "original"]
    if not rows:
        return None
    models = [m for m in _model_names(results) if any(r["model"] == m for r in rows)]
    by = {(r["model"], r["task"], r["metric"]): r for r in rows}
    out = []
    for task, metric in dict.fromkeys((r["task"], r["metric"]) for r in rows):
        first = next(r for r in rows if r["task"] == task and r["metric"] == metric)
        higher = (first.get("settings") or {}).get("higher_is_better")
        cells = []
        for m in models:
            r = by.get((m, task, metric))
            cells.append({"value": None if r is None else r["value"],
                          "stderr": None if r is None else (r.get("settings") or {}).get("stderr")})
        vals = [c["value"] for c in cells if c["value"] is not None]
        if vals and len(models) > 1 and higher is not None:
            best = max(vals) if higher else min(vals)
            for c in cells:
                c["best"] = c["value"] is not None and abs(c["value"] - best) < 1e-9
        out.append({"task": task[len(HARNESS_PREFIX):], "language": first["language"], "metric": metric,
                    "n": first.get("n"), "higher_is_better": higher, "cells": cells,
                    "part_of": (first.get("settings") or {}).get("part_of", "")[len(HARNESS_PREFIX):] or None})
    return {"models": models, "rows": out}


def _harness_markdown(results: dict) -> str:
    t = harness_table(results)
    if t is None:
        return ""
    head = ["lm-eval task", "Language", "Metric", "n", *t["models"]]
    lines = ["**lm-evaluation-harness tasks**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t["rows"]:
        cells = []
        for c in r["cells"]:
            s = fmt(c["value"], digits=3) + (f" ±{c['stderr']:.3f}" if c["value"] is not None and c["stderr"] is not None else "")
            cells.append(f"**{s}**" if c.get("best") else s)
        arrow = {True: " ↑", False: " ↓"}.get(r["higher_is_better"], "")
        lines.append(f"| {r['task']} | {r['language']} | {r['metric']}{arrow} | {r['n'] if r['n'] is not None else ''} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nScored by lm-evaluation-harness on its own prompts (± standard error)."


def classification_table(results: dict) -> list[dict] | None:
    """Beside each classification task's accuracy: macro-F1 over the gold labels, the share of the most common
    gold label (what always answering it scores) and of the most common answer (near 1: one label for
    everything). One row per task and model, original protocol; None when no task has them."""
    idx = _index(results.get("rows", []))
    out = []
    for t in results.get("tasks", []):
        if t["kind"] != "choice":
            continue
        for m in _model_names(results):
            key = (m, t["language"], t["name"])
            got = {k: idx.get((*key, k, "original")) for k in ("accuracy", "macro_f1", "majority_gold",
                                                              "majority_predicted")}
            if got["macro_f1"] is None or got["accuracy"] is None:
                continue
            out.append({"task": f"{t['language']}/{t['name']}", "model": m, "n": got["accuracy"].get("n"),
                        **{k: (r or {}).get("value") for k, r in got.items()}})
    return out or None


def _classification_markdown(results: dict) -> str:
    rows = classification_table(results)
    if not rows:
        return ""
    lines = ["**Classification beyond accuracy**", "",
             "| Task | Model | n | Accuracy | Macro-F1 | Majority label (gold) | Most common answer |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['model']} | {r['n']} | " + " | ".join(
            fmt(r[k], digits=3) for k in ("accuracy", "macro_f1", "majority_gold", "majority_predicted")) + " |")
    return "\n".join(lines) + ("\n\nMajority label: the share of the most common gold label (what answering it always "
                               "scores); most common answer: the share of the model's most frequent answer (near 1: "
                               "one label for nearly everything).")


def markdown_tables(results: dict) -> str:
    """The main table as Markdown, one table per language block, then the lm-evaluation-harness tasks."""
    out = []
    for b in main_table(results):
        head = ["Task", "Random", *b["models"]]
        lines = [f"**{b['name']}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in b["rows"]:
            cells = []
            for c in r["cells"]:
                s = fmt(c["value"], c["dash"], 3 if r["kind"] == "bpc" else 2)
                cells.append(f"**{s}**" if c.get("best") else s)
            rnd = fmt(r["random"]) if r["random"] is not None else "-"
            lines.append(f"| {'*' if r['star'] else ''}{r['title']} | {rnd} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    harness = _harness_markdown(results)
    if not out:
        return harness or "_no evaluation results_"
    note = ("Accuracy for classification, BLEU/100 for generation; * = held out of instruction tuning; "
            "- = most answers did not follow the instruction; n/a = not evaluated.")
    extra = [x for x in (_classification_markdown(results), harness) if x]
    return "\n\n".join(out) + "\n\n" + note + "".join("\n\n" + x for x in extra)


def summary_table(results: dict) -> dict:
    """Compact main-table numbers for the stage's COMPLETE.json."""
    out: dict = {}
    for b in main_table(results):
        out[b["block"]] = {m: {r["title"]: (None if r["cells"][i]["value"] is None else
                                            ("-" if r["cells"][i]["dash"] else round(r["cells"][i]["value"], 4)))
                               for r in b["rows"]} for i, m in enumerate(b["models"])}
    return out


def protocol_table(results: dict) -> dict | None:
    """Paper Table 7: target-language tasks with translated instruction (+ input), per model."""
    protos = [p for p in dict.fromkeys(r.get("protocol", "original") for r in results.get("rows", [])) if p != "original"]
    if not protos:
        return None
    idx = _index(results["rows"])
    tasks = [t for t in results.get("tasks", []) if t["block"] == "target" and t["family"] != "translation"]
    tasks.sort(key=lambda t: FAMILY_ORDER.index(t["family"]) if t["family"] in FAMILY_ORDER else 99)
    groups = []
    for proto in ["original", *protos]:
        models = [m for m in _model_names(results)
                  if any(idx.get((m, t["language"], t["name"], "accuracy" if t["kind"] == "choice" else "bleu", proto))
                         for t in tasks)]
        rows = []
        for m in models:
            cells, cls = [], []
            for t in tasks:
                v, dashed = cell_value(idx, m, t, proto)
                cells.append({"value": v, "dash": dashed})
                if t["kind"] == "choice" and v is not None:
                    cls.append(0.0 if dashed else v)
            cells.append({"value": sum(cls) / len(cls) if cls else None, "dash": False})
            rows.append({"model": m, "cells": cells})
        if rows:
            groups.append({"protocol": proto, "rows": rows})
    rand = [t["random"] for t in tasks if t["random"] is not None]
    random_row = [t["random"] for t in tasks] + [sum(rand) / len(rand) if rand else None]
    return {"columns": [("*" if t.get("unseen") else "") + t["title"] for t in tasks] + ["Avg. Classification"],
            "random": random_row, "groups": groups}


def category_table(results: dict) -> list[dict]:
    """Paper Table 8: multiple-choice accuracy per category, per language and model."""
    out = []
    for t in results.get("tasks", []):
        if t["family"] != "multiple_choice":
            continue
        rows = [r for r in results["rows"] if r["task"] == t["name"] and r["language"] == t["language"]
                and r["metric"].startswith("accuracy:") and r.get("protocol", "original") == "original"]
        if not rows:
            continue
        cats = sorted({r["metric"].split(":", 1)[1] for r in rows})
        models = [m for m in _model_names(results) if any(r["model"] == m for r in rows)]
        by = {(r["model"], r["metric"].split(":", 1)[1]): r for r in rows}
        avg = {r["model"]: r["value"] for r in results["rows"] if r["task"] == t["name"] and r["language"] == t["language"]
               and r["metric"] == "accuracy" and r.get("protocol", "original") == "original"}
        out.append({"task": t["id"], "categories": cats, "n": {c: next((by[(m, c)]["n"] for m in models if (m, c) in by), None) for c in cats},
                    "rows": [{"model": m, "values": [by.get((m, c), {}).get("value") for c in cats], "average": avg.get(m)}
                             for m in models]})
    return out


def rows_table(results: Any) -> list[str]:
    """Markdown lines of any result rows: rows task/language/metric, one column per model or stage (results files
    of other shapes than the eval stage's, which ``markdown_tables`` lays out as the paper does)."""
    rows = results.get("results", results.get("rows")) if isinstance(results, dict) else results
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "task" in r and "value" in r for r in rows) or not rows:
        return []
    columns: dict[str, None] = {}
    cells: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        col = str(r.get("stage") or r.get("model") or "model")
        columns[col] = None
        key = (str(r["task"]), str(r.get("language", "")), str(r.get("metric", "")))
        cells.setdefault(key, {})[col] = r["value"]

    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    head = ["task", "language", "metric", *columns]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key in sorted(cells):
        out.append("| " + " | ".join([*key, *(fmt(cells[key].get(c)) for c in columns)]) + " |")
    return out
