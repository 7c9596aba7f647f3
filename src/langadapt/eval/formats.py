"""Readers for evaluation sets: the ParsiNLU formats, PN-Summary, Super-NaturalInstructions task files,
translation as TSV or two line-aligned files, plain JSONL/CSV with a field mapping, and dataset ids.

Every reader yields raw rows tagged with where they came from (``file:line``), so a malformed row is
reported as one line naming the file, the line and what is wrong.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from langadapt.errors import DataError

# ParsiNLU sentiment labels (dataset card and the data itself): -3 means the aspect is not mentioned,
# 3 means mixed, 0 neutral, -2/-1 negative, 1/2 positive. The paper's Persian sentiment random baseline
# is 0.50, i.e. binary, so by default neutral, mixed and not-mentioned rows are dropped and the rest
# are folded into positive/negative. A task can give its own ``label_map`` (e.g. keep 0 as neutral).
PARSINLU_SENTIMENT_BINARY: dict[str, str | None] = {
    "-3": None, "-2": "negative", "-1": "negative", "0": None, "1": "positive", "2": "positive", "3": None,
}
PARSINLU_ENTAILMENT: dict[str, str | None] = {"e": "entailment", "n": "neutral", "c": "contradiction"}

FORMATS = ("parsinlu_mc", "parsinlu_sentiment", "parsinlu_entailment", "pn_summary", "jsonl", "csv",
           "tsv", "pair", "sni", "hf")

# For each format: our field name -> the file's key. A task's ``fields`` overrides entries.
DEFAULT_FIELDS: dict[str, dict[str, str]] = {
    "parsinlu_mc": {"question": "question", "candidates": "candidates", "answer": "answer",
                    "category": "category", "id": "id"},
    "parsinlu_sentiment": {"text": "review", "question": "question", "aspect": "aspect", "label": "label",
                           "id": "guid"},
    "parsinlu_entailment": {"premise": "sent1", "hypothesis": "sent2", "label": "label", "id": "",
                            "category": "source"},
    "pn_summary": {"article": "article", "summary": "summary", "id": "id"},
}
DEFAULT_LABEL_MAPS: dict[str, dict[str, str | None]] = {
    "parsinlu_sentiment": PARSINLU_SENTIMENT_BINARY,
    "parsinlu_entailment": PARSINLU_ENTAILMENT,
}

# Header cells that mark the first line of a translation TSV as a header rather than a pair.
_HEADER_WORDS = {"source", "target", "reference", "src", "tgt", "ref", "english", "persian", "farsi", "en", "fa",
                 "input", "output", "translation"}


NO_LABEL = ("", "-")
"""Gold labels that mean "not labeled" (the official ParsiNLU entailment test file has two ``-`` rows)."""


class Unlabeled(Exception):
    """A row of a labeled task without a gold label: skipped and counted, not an error."""


@dataclass
class Example:
    """One evaluation item, normalised across formats."""

    id: str
    fields: dict[str, str]  # text fields the templates use (question, text, premise, article, source, ...)
    label: str | None = None  # canonical label (choice tasks); for multiple choice the 1-based index
    options: list[str] | None = None  # multiple-choice candidate texts
    reference: str | None = None  # generation tasks
    category: str | None = None
    where: str = ""  # file:line, for messages


@dataclass
class RawRow:
    values: dict
    where: str
    meta: dict = field(default_factory=dict)


def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise DataError("evaluation file not found", path=str(path)) from None
    except IsADirectoryError:
        raise DataError("expected a file, found a folder", path=str(path)) from None


def read_jsonl(path: Path) -> Iterator[RawRow]:
    with _open_text(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg} at column {e.colno})", path=str(path), line=i) from None
            if not isinstance(obj, dict):
                raise DataError(f"each line must be a JSON object, found {type(obj).__name__}", path=str(path), line=i)
            yield RawRow(obj, f"{path}:{i}")


def read_json_list(path: Path) -> Iterator[RawRow]:
    """A JSON file holding a list of objects (Alpaca-style files, some dataset dumps)."""
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg})", path=str(path), line=e.lineno) from None
    if not isinstance(data, list):
        raise DataError("expected a JSON list of objects", path=str(path))
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"item {i} is not a JSON object", path=str(path))
        yield RawRow(obj, f"{path}[{i}]")


def read_csv(path: Path, delimiter: str = ",") -> Iterator[RawRow]:
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError("empty CSV file (no header)", path=str(path), line=1)
        start = 2
        try:
            for row in reader:
                if None in row:
                    raise DataError(f"more cells than the header has ({len(reader.fieldnames)})", path=str(path), line=start)
                if any(v is None for v in row.values()):
                    raise DataError(f"fewer cells than the header has ({len(reader.fieldnames)})", path=str(path), line=start)
                yield RawRow(dict(row), f"{path}:{start}")
                start = reader.line_num + 1
        except csv.Error as e:
            raise DataError(f"malformed CSV: {e}", path=str(path), line=reader.line_num) from None


def read_translation_tsv(path: Path, source_column: int = 0, reference_column: int = 1,
                         header: str = "auto") -> Iterator[RawRow]:
    """Tab-separated pairs, one per line. A first line made of header words is skipped (``header: auto``)."""
    with _open_text(path) as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cells = line.split("\t")
            if i == 1 and (header == "yes" or (header == "auto" and all(c.strip().lower() in _HEADER_WORDS for c in cells))):
                continue
            need = max(source_column, reference_column) + 1
            if len(cells) < need:
                raise DataError(f"expected at least {need} tab-separated columns, found {len(cells)}", path=str(path), line=i)
            src, ref = cells[source_column].strip(), cells[reference_column].strip()
            if not src or not ref:
                raise DataError("empty source or reference cell", path=str(path), line=i)
            yield RawRow({"source": src, "reference": ref, "id": f"{path.name}:{i}"}, f"{path}:{i}")


def read_pair(source: Path, reference: Path) -> Iterator[RawRow]:
    """Two line-aligned files: line i of ``reference`` translates line i of ``source``. Alignment is by line
    number, never by content, so counts must match."""
    with _open_text(source) as fs:
        src = fs.read().splitlines()
    with _open_text(reference) as fr:
        ref = fr.read().splitlines()
    if len(src) != len(ref):
        raise DataError(f"line-aligned files differ in length: {len(src)} lines here, {len(ref)} in {reference}",
                        path=str(source))
    for i, (s, r) in enumerate(zip(src, ref), 1):
        if not s.strip() and not r.strip():
            continue
        if not s.strip() or not r.strip():
            raise DataError(f"line {i} is empty on one side only ({'source' if not s.strip() else 'reference'})",
                            path=str(source if not s.strip() else reference), line=i)
        yield RawRow({"source": s.strip(), "reference": r.strip(), "id": f"{source.name}:{i}"}, f"{source}:{i}")


def read_sni(path: Path) -> Iterator[RawRow]:
    """A Super-NaturalInstructions task file: ``Definition`` and ``Instances`` [{id, input, output: [...]}].

    The paper took its English tasks (and Persian multiple choice, entailment and translation) from SNI.
    """
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e.msg})", path=str(path), line=e.lineno) from None
    if not isinstance(data, dict) or "Instances" not in data:
        raise DataError("not a Super-NaturalInstructions task file (no 'Instances')", path=str(path))
    definition = data.get("Definition", "")
    if isinstance(definition, list):
        definition = "\n".join(definition)
    for i, inst in enumerate(data["Instances"]):
        out = inst.get("output")
        out = out[0] if isinstance(out, list) and out else out
        if not isinstance(inst.get("input"), str) or not isinstance(out, str):
            raise DataError(f"instance {i} needs a string 'input' and a non-empty 'output'", path=str(path))
        yield RawRow({"input": inst["input"], "output": out, "id": str(inst.get("id", i))}, f"{path}[{i}]",
                     meta={"definition": definition})


def read_hf(path: str, split: str, config: str | None, *, source=None, what: str | None = None) -> Iterator[RawRow]:
    """A Hugging Face dataset: a hub id, a local dataset repository or ``save_to_disk`` folder, read by
    :mod:`langadapt.data.hub` with the task data's ``config``, ``split``, ``data_files``, ``revision``,
    caps and ``shuffle_buffer`` (``source``, a ``DataSpec``)."""
    from types import SimpleNamespace

    from langadapt.data.hub import rows

    if source is None:
        source = SimpleNamespace(path=path, split=split, config=config)
    else:  # the path as resolved (variables expanded; one of several paths)
        source = source.model_copy(update={"path": path})
    for where, row in rows(source, path, what=what or f"task data '{path}'", streaming=False):
        yield RawRow(dict(row), where)


def not_utf8(paths: list[Path]) -> DataError | None:
    """The first place in ``paths`` that is not UTF-8, as a one-line error naming file and line.

    The text decoder reports an offset inside its read buffer only, so the file is decoded whole
    again to find the line (evaluation files are small, and this runs only after a failure).
    """
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError:
            continue
        skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        try:
            data[skip:].decode("utf-8")
        except UnicodeDecodeError as e:
            at = skip + e.start
            line_start = data.rfind(b"\n", 0, at) + 1
            return DataError(f"not UTF-8 text ({e.reason} at byte {at - line_start} of the line); "
                             "save the file as UTF-8", path=str(path), line=data.count(b"\n", 0, at) + 1)
    return None


def read_rows(fmt: str, paths: list[Path], *, split: str = "test", config: str | None = None,
              source_column: int = 0, reference_column: int = 1, header: str = "auto",
              reference: Path | None = None, source=None, what: str | None = None) -> Iterator[RawRow]:
    """Raw rows of one or more files in format ``fmt`` (see ``FORMATS``); ``source`` is the task's
    ``DataSpec`` (its Hugging Face dataset settings, for format hf)."""
    files = [*paths, reference] if fmt == "pair" and reference is not None else list(paths)
    try:
        yield from _read_rows(fmt, paths, split=split, config=config, source_column=source_column,
                              reference_column=reference_column, header=header, reference=reference,
                              source=source, what=what)
    except UnicodeDecodeError:
        err = not_utf8(files) if fmt != "hf" else None
        if err is None:
            raise
        raise err from None


def _read_rows(fmt: str, paths: list[Path], *, split: str, config: str | None, source_column: int,
               reference_column: int, header: str, reference: Path | None, source=None,
               what: str | None = None) -> Iterator[RawRow]:
    if fmt == "pair":
        if reference is None or len(paths) != 1:
            raise DataError("format 'pair' needs one 'path' (source side) and a 'reference' file")
        yield from read_pair(paths[0], reference)
        return
    for p in paths:
        if fmt == "hf":
            yield from read_hf(str(p), split, config, source=source, what=what)
        elif fmt == "sni":
            yield from read_sni(p)
        elif fmt == "tsv":
            yield from read_translation_tsv(p, source_column, reference_column, header)
        elif fmt in ("parsinlu_entailment", "csv") or (fmt == "pn_summary" and p.suffix in (".csv", ".tsv")):
            yield from read_csv(p, delimiter="\t" if p.suffix == ".tsv" else ",")
        elif p.suffix == ".json":
            yield from read_json_list(p)
        else:
            yield from read_jsonl(p)


# --------------------------------------------------------------------------- normalisation per family


def _text(value, key: str, where: str, *, required: bool = True) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise DataError(f"missing or empty field '{key}'", path=where)
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"field '{key}' must be text, found {type(value).__name__}", path=where)
    return value.strip()


def _get(raw: dict, fields: dict[str, str], ours: str, where: str, *, required: bool = True):
    key = fields.get(ours, ours)
    if key == "":
        return None
    if key not in raw and "." in key:  # a dotted path into nested records: translation.fa (OPUS sets)
        value = raw
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return value
    if key not in raw:
        if required:
            have = ", ".join(sorted(map(str, raw)))[:200]
            raise DataError(f"no field '{key}' (for '{ours}'); the row has: {have}", path=where)
        return None
    return raw[key]


def to_example(family: str, row: RawRow, fields: dict[str, str], label_map: dict[str, str | None] | None,
               *, drop_unmapped: bool) -> Example | None:
    """Normalise one raw row; ``None`` means the row is dropped by the label mapping. Raises ``Unlabeled``
    for a row of a labeled task whose gold label is empty or ``-``."""
    raw, where = row.values, row.where
    rid = _get(raw, fields, "id", where, required=False)
    rid = str(rid) if rid not in (None, "") else where.rsplit("/", 1)[-1]

    def label_of(value) -> str | None:
        if value is None or (isinstance(value, str) and value.strip() in NO_LABEL):
            raise Unlabeled(where)
        lab = _text(value, fields.get("label", "label"), where)
        if label_map is None:
            return lab
        if lab in label_map:
            return label_map[lab]
        if lab.lower() in label_map:
            return label_map[lab.lower()]
        if drop_unmapped:
            return None
        known = ", ".join(repr(k) for k in label_map)
        raise DataError(f"label {lab!r} is not in the task's label_map ({known})", path=where)

    if family == "multiple_choice":
        q = _text(_get(raw, fields, "question", where), "question", where)
        cands = _get(raw, fields, "candidates", where)
        if isinstance(cands, str):
            try:
                cands = json.loads(cands)
            except json.JSONDecodeError:
                cands = None
        if not isinstance(cands, list):
            raise DataError("'candidates' must be a list of options", path=where)
        cands = list(cands)
        while cands and (cands[-1] is None or not str(cands[-1]).strip()):
            cands.pop()  # ParsiNLU pads 2- and 3-option questions with empty candidates
        if len(cands) < 2:
            raise DataError("'candidates' must hold at least two non-empty options", path=where)
        cands = [_text(c, "candidates", where) for c in cands]
        ans = _get(raw, fields, "answer", where)
        if ans is None or (isinstance(ans, str) and ans.strip() in NO_LABEL):
            raise Unlabeled(where)
        try:
            idx = int(str(ans).strip())
        except ValueError:
            raise DataError(f"'answer' must be a 1-based option number, found {ans!r}", path=where) from None
        if not 1 <= idx <= len(cands):
            raise DataError(f"'answer' {idx} is outside 1..{len(cands)}", path=where)
        cat = _get(raw, fields, "category", where, required=False)
        return Example(rid, {"question": q}, label=str(idx), options=cands, category=str(cat) if cat else None, where=where)
    if family in ("sentiment", "classification"):
        text = _text(_get(raw, fields, "text", where), "text", where)
        lab = label_of(_get(raw, fields, "label", where))
        if lab is None:
            return None
        f = {"text": text}
        for extra in ("question", "aspect"):
            v = _get(raw, fields, extra, where, required=False)
            if v:
                f[extra] = _text(v, extra, where)
        cat = _get(raw, fields, "category", where, required=False)
        return Example(rid, f, label=lab, category=str(cat).strip() if cat else None, where=where)
    if family == "entailment":
        p = _text(_get(raw, fields, "premise", where), "premise", where)
        h = _text(_get(raw, fields, "hypothesis", where), "hypothesis", where)
        lab = label_of(_get(raw, fields, "label", where))
        if lab is None:
            return None
        cat = _get(raw, fields, "category", where, required=False)
        return Example(rid, {"premise": p, "hypothesis": h}, label=lab, category=str(cat) if cat else None, where=where)
    if family == "summarization":
        a = _text(_get(raw, fields, "article", where), "article", where)
        s = _text(_get(raw, fields, "summary", where), "summary", where)
        return Example(rid, {"article": a}, reference=s, where=where)
    if family == "translation":
        s = _text(_get(raw, fields, "source", where), "source", where)
        r = _text(_get(raw, fields, "reference", where), "reference", where)
        return Example(rid, {"source": s}, reference=r, where=where)
    if family == "sni":  # raw SNI instance: the input is shown as is; the output is a label or a reference
        return Example(rid, {"input": _text(raw["input"], "input", where)}, label=raw["output"].strip(),
                       reference=raw["output"].strip(), where=where)
    raise ValueError(f"unknown task family {family!r}")
