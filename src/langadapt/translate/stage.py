"""The ``translate`` stage: English instruction data in, cleaned target-language instruction data out.

For every source named in ``translate.sources`` (default: every ``data.instructions`` source not
in the target language):

1. read the records with the sft readers; malformed ones are counted and skipped;
2. drop records whose answer depends on English wording (:mod:`.rules`), before spending anything;
3. mask protected spans (:mod:`.protect`), cut fields into lines (``unit: line``), translate
   ``batch_size`` records at a time, restore the spans, and append each finished record to
   ``work/<source>.jsonl`` (flushed and fsync'd after every batch). A resumed run reads that log
   and translates only the records missing from it, so no record is translated twice;
4. when every record is done, clean the translations (:mod:`.clean`) and write
   ``instructions/<source>.jsonl`` (format ``alpaca`` or ``messages``) with ``instructions/index.json``
   listing them for the sft stage (``RunLayout.translated_index``), and ``report.json`` /
   ``report.csv`` with counts per reason per source.

Records an endpoint could not translate after its retries stay out of the log: the stage then
writes its report, names them as pending and fails, and the next resume translates just those.
After three batches in a row with nothing translated the endpoint is taken to be down and the
remaining records are left pending at once, rather than each waiting out its retries.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.files import atomic_path, write_json, write_jsonl
from langadapt.layout import REPORT, TRANSLATED_INDEX
from langadapt.translate import protect
from langadapt.translate.records import Item, output_format, read_items

WORK = "work"
GIVE_UP_AFTER = 3  # batches in a row with nothing translated: the translator is down, stop asking for now

# Kept outside the translated text so list layout survives: indentation, bullets, "[[0]]." numbering.
_AFFIXES = re.compile(r"^(\s*(?:(?:[-*+•>]+|#{1,6}|\[\[\d+\]\][.):])\s+)?)(.*?)(\s*)$", re.DOTALL)


# --------------------------------------------------------------------------- what it translates


def selected_sources(recipe) -> list:
    """The ``data.instructions`` sources this recipe translates (the recipe's validation made sure
    there is at least one and none is in the target language already)."""
    cfg = recipe.translate
    if cfg.sources:
        by_name = {s.name: s for s in recipe.data.instructions}
        return [by_name[n] for n in cfg.sources]
    return [s for s in recipe.data.instructions if s.language != recipe.language.code]


# --------------------------------------------------------------------------- the resume log


class WorkLog:
    """Append-only JSON lines of finished records, ``{"key", "fields", "error"}``.

    Lines are flushed and fsync'd after every batch, so a killed run loses at most the batch in
    flight. A line cut short by the kill is removed when the log is opened again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict] = {}
        if path.exists():
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                with open(path, "r+b") as f:
                    f.truncate(end)
            for line in data[:end].splitlines():
                try:
                    entry = json.loads(line)
                    self.done[entry["key"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # cannot happen with whole lines; such a record is simply translated again
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")

    def add(self, key: str, fields: dict[str, str], error: str | None) -> None:
        entry = {"key": key, "fields": fields, "error": error}
        self._f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.done[key] = entry

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.sync()
            self._f.close()


# --------------------------------------------------------------------------- translating records


def _pieces(text: str, unit: str) -> tuple[protect.Masked, list[tuple[str, str, str]]]:
    """Mask a field and cut it into (prefix, core, suffix) pieces; only cores with prose are translated."""
    masked = protect.mask(text)
    parts = masked.text.split("\n") if unit == "line" else [masked.text]
    pieces = []
    for part in parts:
        prefix, core, suffix = _AFFIXES.match(part).groups()
        pieces.append((prefix, core, suffix))
    return masked, pieces


def translate_items(items: list[Item], translator, *, unit: str, lang: str, digits: str = "keep") -> list[dict | None]:
    """Translate a batch of records; each result is ``{"fields", "error"}``, or None when the
    translator could not translate part of it now (the record is left for the next resume)."""
    from langadapt.clean.normalize import normalize

    prepared = []
    wanted: dict[str, None] = {}  # ordered set: a line repeated within the batch is translated once
    for item in items:
        fields = {}
        for name, text in item.fields.items():
            masked, pieces = _pieces(text, unit)
            fields[name] = (masked, pieces)
            for _, core, _ in pieces:
                if protect.has_prose(core):
                    wanted[core] = None
        prepared.append(fields)
    texts = list(wanted)
    results = dict(zip(texts, translator.translate(texts))) if texts else {}
    out: list[dict | None] = []
    for fields in prepared:
        translated: dict[str, str] = {}
        errors = []
        complete = True
        for name, (masked, pieces) in fields.items():
            lines = []
            for prefix, core, suffix in pieces:
                if not protect.has_prose(core):
                    lines.append(prefix + core + suffix)
                    continue
                result = results[core]
                if result is None:
                    complete = False
                    break
                if unit == "line":
                    result = re.sub(r"\s*\n\s*", " ", result)  # one line in, one line out: the layout stays
                lines.append(prefix + normalize(result, lang, digits) + suffix)
            if not complete:
                break
            joined = "\n".join(lines)
            try:
                translated[name] = protect.unmask(joined, masked.spans)
            except protect.SpanError as e:
                translated[name] = joined
                errors.append(f"{name}: {e}")
        out.append({"fields": translated, "error": "; ".join(errors) or None} if complete else None)
    return out


def _pre_drop(item: Item, wording_rules: bool) -> str | None:
    """Why a record is not worth translating, or None."""
    if wording_rules:
        from langadapt.translate.rules import wording_rule

        rule = wording_rule(item.prompt_text())
        if rule:
            return f"english wording: {rule}"
    if not any(protect.has_prose(protect.mask(t).text) for t in item.fields.values()):
        return "nothing to translate"
    return None


# --------------------------------------------------------------------------- the stage


def run(ctx) -> dict:
    """Translate, clean and write the recipe's instruction sources (see the module docstring)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from langadapt.translate.clean import default_rules

    recipe = ctx.recipe
    cfg = recipe.translate
    lang = recipe.language.code
    digits = recipe.clean.digits if recipe.clean is not None else "keep"
    rules = default_rules(cfg, lang)  # checks the language code before any translating
    sources = selected_sources(recipe)
    work = ctx.out_dir / WORK
    translators: dict[str, object] = {}
    factory = ctx.extra.get("translator_factory")  # tests and benchmarks hand in their own translator

    load_seconds = 0.0

    def translator_for(source_language: str):
        nonlocal load_seconds
        if source_language not in translators:
            start = time.time()
            if factory is not None:
                translators[source_language] = factory(recipe, source_language)
            else:
                from langadapt.translate.translators import build_translator

                ctx.log(f"translate: loading the {cfg.translator} translator")
                translators[source_language] = build_translator(recipe, source_language)
            load_seconds += time.time() - start
        return translators[source_language]

    plans = []
    for source in sources:
        items, read_report = read_items(source, recipe.resolve(source.path), cfg.max_records)
        log = WorkLog(work / f"{source.name}.jsonl")
        pre: dict[str, str] = {}
        todo = []
        for item in items:
            reason = _pre_drop(item, cfg.wording_rules)
            if reason:
                pre[item.key] = reason
            elif item.key not in log.done:
                todo.append(item)
        plans.append((source, items, read_report, log, pre, todo))
        if log.done:
            ctx.log(f"translate: {source.name}: {len(log.done):,} records already translated, {len(todo):,} to go")

    t0 = time.time()
    done_now = 0
    pending: Counter = Counter()
    failed_in_a_row = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=ctx.console, transient=False) as bar:
            for source, _, _, log, _, todo in plans:
                if not todo:
                    continue
                if failed_in_a_row >= GIVE_UP_AFTER:
                    pending[source.name] += len(todo)
                    continue
                task = bar.add_task(f"translate {source.name}", total=len(todo))
                translator = translator_for(source.language)
                for start in range(0, len(todo), cfg.batch_size):
                    batch = todo[start:start + cfg.batch_size]
                    if failed_in_a_row >= GIVE_UP_AFTER:
                        pending[source.name] += len(todo) - start
                        break
                    results = translate_items(batch, translator, unit=cfg.unit, lang=lang, digits=digits)
                    for item, result in zip(batch, results):
                        if result is None:
                            pending[source.name] += 1
                        else:
                            log.add(item.key, result["fields"], result["error"])
                            done_now += 1
                    log.sync()
                    failed_in_a_row = failed_in_a_row + 1 if all(r is None for r in results) else 0
                    bar.advance(task, len(batch))
    finally:
        for plan in plans:
            plan[3].close()
    seconds = time.time() - t0 - load_seconds

    report = _finish(ctx, plans, rules, pending, write_outputs=not pending)
    report["translator"] = {**_describe(translators), "records_translated_now": done_now,
                            "load_seconds": round(load_seconds, 1), "seconds": round(seconds, 1),
                            "records_per_s": round(done_now / seconds, 3) if seconds > 0 and done_now else None}
    write_json(ctx.out_dir / REPORT, report)
    _write_csv(ctx.out_dir / "report.csv", report)
    if pending:
        failures = Counter()
        for t in translators.values():
            failures.update(getattr(t, "failures", {}))
        why = "; ".join(f"{msg} ({n}x)" for msg, n in failures.most_common(2))
        raise LangadaptError(f"translate: {sum(pending.values()):,} records could not be translated now"
                             + (f" ({why})" if why else "") + "; they are kept for the next run: run "
                             "`langadapt translate RECIPE --resume` (or `langadapt run RECIPE`) to translate only those")
    totals = report["totals"]
    ctx.log(f"translate: {totals['kept']:,} of {totals['read']:,} records kept; report in {ctx.out_dir / REPORT}")
    return {"sources": {name: s["kept"] for name, s in report["sources"].items()}, **totals,
            "records_per_s": report["translator"]["records_per_s"]}


def _describe(translators: dict) -> dict:
    if not translators:
        return {"kind": None}
    first = next(iter(translators.values()))
    d = first.describe() if hasattr(first, "describe") else {"kind": type(first).__name__}
    d["texts_sent"] = sum(getattr(t, "calls", 0) for t in translators.values())
    return d


def _finish(ctx, plans, rules, pending: Counter, *, write_outputs: bool) -> dict:
    """Clean every source's translations in input order, write the outputs, and count everything."""
    from langadapt.translate.clean import first_reason

    recipe = ctx.recipe
    lang = recipe.language.code
    report: dict = {"language": lang, "sources": {}}
    index = []
    for source, items, read_report, log, pre, _ in plans:
        dropped: Counter = Counter()
        rows = []
        for item in items:
            if item.key in pre:
                dropped[pre[item.key]] += 1
                continue
            entry = log.done.get(item.key)
            if entry is None:
                continue  # pending: counted apart
            reason = first_reason(rules, item, entry["fields"], entry["error"])
            if reason:
                dropped[reason] += 1
                continue
            rows.append(item.to_record(entry["fields"], source=source.name, source_language=source.language, language=lang))
        out = ctx.layout.translated_dir() / f"{source.name}.jsonl"
        if write_outputs:
            write_jsonl(out, rows)
            index.append({"name": f"{source.name}.{lang}", "source": source.name, "format": output_format(source.format),
                          "path": out.name, "language": lang, "task": source.task})
        report["sources"][source.name] = {
            "format": output_format(source.format),
            "output": str(out.relative_to(ctx.out_dir)) if write_outputs else None,
            "read": read_report.read,
            "malformed": dict(read_report.skipped),
            "malformed_first_at": dict(read_report.first_at),
            "translated": sum(1 for i in items if i.key in log.done),
            "dropped": dict(dropped.most_common()),
            "pending": pending.get(source.name, 0),
            "kept": len(rows),
        }
    if write_outputs:  # what sft reads (RunLayout.translated_index)
        write_json(ctx.layout.translated_dir() / TRANSLATED_INDEX, index)
    srcs = report["sources"].values()
    report["totals"] = {k: sum(s[k] for s in srcs) for k in ("read", "translated", "pending", "kept")}
    report["totals"]["malformed"] = sum(sum(s["malformed"].values()) for s in srcs)
    report["totals"]["dropped"] = sum(sum(s["dropped"].values()) for s in srcs)
    return report


def _write_csv(path: Path, report: dict) -> None:
    """One row per source and reason: the same counts as report.json, for a spreadsheet."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source", "stage", "reason", "records"])
        for name, s in report["sources"].items():
            w.writerow([name, "input", "read", s["read"]])
            for reason, n in s["malformed"].items():
                w.writerow([name, "malformed", reason, n])
            for reason, n in s["dropped"].items():
                w.writerow([name, "dropped", reason, n])
            w.writerow([name, "pending", "not translated yet", s["pending"]])
            w.writerow([name, "output", "kept", s["kept"]])
