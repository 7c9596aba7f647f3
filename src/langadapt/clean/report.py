"""The clean report (the paper's Table 1, with drops per reason): from datatrove's per-task statistics.

Blocks count under ``"<source>|<metric>"`` labels (see :mod:`langadapt.clean.blocks`); the
executors save every task's statistics as JSON; this module adds them up. Sentence drops add up:
``sentences_in - sum(drops except invalid_utf8 and empty_text) == sentences_out`` for every source
(those two count lines and documents dropped before splitting), and the
report refuses to be written otherwise (a count was lost, which would be a bug).

Bytes are UTF-8 bytes of text: ``original_bytes`` counts the lines (or text fields) as read,
line breaks and blank lines excluded; ``cleaned_bytes`` the sentences written.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

from langadapt.clean.filters import REASONS, RECORD_REASONS
from langadapt.layout import REPORT

SENTENCE_REASONS = tuple(r for r in REASONS if r not in RECORD_REASONS)
COLUMNS = ("source", "type", "original_bytes", "cleaned_bytes", "kept_bytes_pct", "sentences_in", "sentences_out",
           "documents_out", *REASONS)


def collect_counts(logs_dir: Path) -> Counter:
    """Sum every ``source|metric`` statistic of every task of every pass under ``logs_dir``."""
    counts: Counter = Counter()
    for f in sorted(Path(logs_dir).glob("*/stats/*.json")):
        for step in json.loads(f.read_text(encoding="utf-8")):
            for label, value in step.get("stats", {}).items():
                if "|" in label:
                    counts[label] += value["total"] if isinstance(value, dict) else value
    return counts


def build_report(sources, counts: Counter, *, near_dedup: bool) -> dict:
    """Per-source rows and totals from the summed counts."""
    rows = []
    for s in sources:
        c = {k.split("|", 1)[1]: v for k, v in counts.items() if k.split("|", 1)[0] == s.name}
        drops = {
            "invalid_utf8": c.get("invalid_utf8", 0),
            "empty_text": c.get("empty_text", 0),
            "too_short": c.get("too_short", 0),
            "code": c.get("code", 0),
            "boilerplate": c.get("boilerplate", 0),
            "language": c.get("language", 0),
            "duplicate": c.get("exact_in", 0) - c.get("exact_out", 0),
            "near_duplicate": (c.get("near_in", 0) - c.get("out", 0)) if near_dedup else 0,
        }
        row = {
            "source": s.name,
            "type": s.type,
            "original_bytes": int(c.get("bytes_in", 0)),
            "cleaned_bytes": int(c.get("out_bytes", 0)),
            "sentences_in": int(c.get("sentences_in", 0)),
            "sentences_out": int(c.get("out", 0)),
            "documents_out": int(c.get("documents_out", 0)),  # the kept sentences, put back together
            "drops": {k: int(v) for k, v in drops.items()},
        }
        lost = row["sentences_in"] - sum(row["drops"][r] for r in SENTENCE_REASONS) - row["sentences_out"]
        if lost:
            raise RuntimeError(f"clean report: {lost} sentences of source '{s.name}' are unaccounted for")
        rows.append(row)
    totals = {
        "source": "total",
        "type": "",
        "original_bytes": sum(r["original_bytes"] for r in rows),
        "cleaned_bytes": sum(r["cleaned_bytes"] for r in rows),
        "sentences_in": sum(r["sentences_in"] for r in rows),
        "sentences_out": sum(r["sentences_out"] for r in rows),
        "documents_out": sum(r["documents_out"] for r in rows),
        "drops": {k: sum(r["drops"][k] for r in rows) for k in REASONS},
    }
    return {"sources": rows, "totals": totals}


def empty_result(report: dict) -> str | None:
    """Why no sentence came out of any source (one line naming the sources), or None when some did."""
    rows = report["sources"]
    if report["totals"]["sentences_out"] or not rows:
        return None
    names = ", ".join(f"'{r['source']}'" for r in rows)
    t = report["totals"]
    drops = {k: v for k, v in t["drops"].items() if v}
    dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1]))
    if not t["sentences_in"]:
        what = "no text in them: every file is empty or blank" if not drops else f"no text read from them ({dropped})"
        return f"clean: no sentences from source(s) {names}: {what}; check the paths and formats"
    return (f"clean: every sentence of source(s) {names} was dropped ({t['sentences_in']:,} in; {dropped}); "
            "see report.json and clean.min_words / clean.lang_threshold / language.code")


def _pct(row: dict) -> float:
    return round(100.0 * row["cleaned_bytes"] / row["original_bytes"], 2) if row["original_bytes"] else 0.0


def _flat(row: dict) -> dict:
    out = {k: row[k] for k in ("source", "type", "original_bytes", "cleaned_bytes")}
    out["kept_bytes_pct"] = _pct(row)
    out["sentences_in"], out["sentences_out"] = row["sentences_in"], row["sentences_out"]
    out["documents_out"] = row.get("documents_out", 0)
    out.update(row["drops"])
    return out


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in [*report["sources"], report["totals"]]:
        w.writerow(_flat(row))
    return buf.getvalue()


def write_report(out_dir: Path, report: dict) -> None:
    """``report.json`` and ``report.csv``, atomically."""
    from langadapt.files import atomic_path, write_json

    write_json(out_dir / REPORT, report)
    with atomic_path(out_dir / "report.csv") as tmp:
        tmp.write_text(to_csv(report), encoding="utf-8")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


_SHORT = {"invalid_utf8": "utf8", "empty_text": "empty", "too_short": "short", "code": "code", "boilerplate": "boiler", "language": "lang",
          "duplicate": "dup", "near_duplicate": "near"}


def print_report(report: dict, console=None) -> None:
    """The report as two tables (sizes and sentences; drops per reason), narrow enough for 80 columns."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = [*report["sources"], report["totals"]]
    sizes = Table(title="clean: sizes per source", title_justify="left")
    for col in ("source", "type", "MB in", "MB out", "kept %", "sentences in", "sentences out"):
        sizes.add_column(col, justify="left" if col in ("source", "type") else "right", no_wrap=col == "source")
    drops = Table(title="clean: sentences dropped, by reason", title_justify="left",
                  caption="utf8: invalid_utf8 (lines), empty: empty_text (documents), short: too_short, boiler: boilerplate, lang: language, "
                  "dup: duplicate, near: near_duplicate", caption_justify="left")
    drops.add_column("source", no_wrap=True)
    for reason in REASONS:
        drops.add_column(_SHORT[reason], justify="right")
    for i, r in enumerate(rows):
        last = i == len(rows) - 1
        style, end = ("bold" if last else None), i == len(rows) - 2
        sizes.add_row(r["source"], r["type"], _mb(r["original_bytes"]), _mb(r["cleaned_bytes"]), f"{_pct(r):.1f}",
                      f"{r['sentences_in']:,}", f"{r['sentences_out']:,}", style=style, end_section=end)
        drops.add_row(r["source"], *(f"{r['drops'][k]:,}" for k in REASONS), style=style, end_section=end)
    console.print(sizes)
    console.print(drops)


def markdown_table(report: dict) -> str:
    """The report as a Markdown table (for bench/README.md)."""
    head = ["source", "type", "MB in", "MB out", "kept %", "sentences in", "sentences out", *REASONS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in [*report["sources"], report["totals"]]:
        cells = [r["source"], r["type"], _mb(r["original_bytes"]), _mb(r["cleaned_bytes"]), f"{_pct(r):.1f}",
                 f"{r['sentences_in']:,}", f"{r['sentences_out']:,}", *(f"{r['drops'][k]:,}" for k in REASONS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
