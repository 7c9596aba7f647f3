"""Monolingual corpus readers: plain text, JSONL, Parquet and Hugging Face datasets, in pieces.

A source (a ``data.corpus`` entry of the recipe) is cut into :class:`Piece` s that workers read
independently: byte ranges of plain-text and JSONL files (a line belongs to the piece its first
byte lies in), row groups of Parquet files, a Hugging Face dataset (read with its config, split,
caps and shuffle by :mod:`langadapt.data.hub`; the clean stage reads those with datatrove's own
reader instead, see :mod:`langadapt.clean.hub`). :func:`plan_pieces` spreads the pieces over
tasks so that each reads about the same number of bytes, whatever the file sizes.

:func:`read_piece` yields :class:`Record` s, one per line (or per document), each at most
``max_bytes`` long: a longer line (a 1 GB single-line file, a huge document) is cut into several
records after the last sentence end in the second half of the limit (else after a space), so
memory stays bounded whatever the input and the cuts split no sentence. A line that is not valid
UTF-8 comes back as a record with ``invalid=True`` (text decoded with replacement characters),
to be counted and skipped; it never stops the run. A document with no text (a JSONL ``"text":
null``, an empty or blank field or cell, an empty file read whole) comes back as a record with
``empty=True``, to be counted. Mistakes the user must fix (a JSONL line that
is not JSON, a missing text field or column) raise :class:`~langadapt.errors.DataError` naming the
file and line.
"""

from __future__ import annotations

import glob
import gzip
import heapq
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langadapt.errors import DataError

MAX_RECORD_BYTES = 1 << 20
"""Longest record handed on; longer lines and documents are cut into several, at a sentence end (else a space)."""

MAX_JSON_LINE_BYTES = 64 << 20
"""A JSONL record must be parsed whole; beyond this size it is refused rather than held in memory."""

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)

# Where a long line may be cut: after a sentence end (terminators of the scripts corpora come in,
# with closing quotes or brackets) and the spaces after it. Cutting at any space left a
# half sentence on each side of every cut (12% of the sentences of a 50 MB single-line file).
_TERMINATORS = ".!?…؟؛۔।॥።。！？"  # Latin, Arabic script, Devanagari dandas, Ethiopic, CJK
_CLOSERS = "\"'»”’)]}›"


def _alternatives(chars: str) -> bytes:
    return b"|".join(re.escape(c.encode("utf-8")) for c in chars)


_SENTENCE_END_BYTES = re.compile(rb"(?:" + _alternatives(_TERMINATORS) + rb")+(?:" + _alternatives(_CLOSERS)
                                 + rb")*[ \t]+")
# in a document (not a line) a line break ends a sentence too
_SENTENCE_END_TEXT = re.compile(f"[{re.escape(_TERMINATORS)}]+[{re.escape(_CLOSERS)}]*\\s+|\n\\s*")


def _last_end(pattern: re.Pattern, text, start: int, end: int | None = None) -> int:
    """Where the last match of ``pattern`` in ``text[start:end]`` ends (0: none)."""
    end = len(text) if end is None else end
    # from the end backwards, in growing windows: scanning half a MiB for every cut doubled the
    # reading time of a single-line file, and the last sentence end is usually near the end
    window = 4096
    while True:
        lo = max(start, end - window)
        last = 0
        for m in pattern.finditer(text, lo, end):
            last = m.end()
        if last or lo == start:
            return last
        window *= 4


@dataclass(frozen=True)
class Piece:
    """A unit of reading work: part of one source that one task reads alone."""

    source: int  # index of the source in data.corpus
    path: str  # file, or dataset folder/id for kind "hf"
    kind: str  # "lines": byte range [start, end) of a text/JSONL file; "file": a whole file;
    #            "parquet": row group ``start``; "hf": the whole dataset
    start: int = 0
    end: int = 0
    size: int = 0  # bytes (estimate for "hf"), for balancing the tasks


@dataclass(slots=True)
class Record:
    text: str
    where: str  # "file:byte offset" (or dataset:row), a stable id for the document
    nbytes: int  # UTF-8 bytes of the text as read (for the report's "original bytes")
    invalid: bool = False  # the line was not valid UTF-8; ``text`` holds it with replacement characters
    repeat: bool = False  # an earlier part of the same (long) line was already reported invalid
    empty: bool = False  # a document without text (null, empty or blank): counted, never cleaned


# --------------------------------------------------------------------------- finding the files


def source_files(source, resolve: Callable[[str], Path]) -> list[Path]:
    """The files of a text/JSONL/Parquet source: a file, every matching file in a folder, or a glob."""
    p = resolve(source.path)
    if any(c in str(p) for c in "*?["):
        found = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    elif p.is_file():
        found = [p]
    elif p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if source.format == "jsonl":
            found = [f for f in found if f.name.endswith(JSONL_SUFFIXES)]
        elif source.format == "parquet":
            found = [f for f in found if f.name.endswith(PARQUET_SUFFIXES)]
    else:
        raise DataError(f"corpus source '{source.name}': input not found: {source.path} (resolved to {p})")
    if not found:
        raise DataError(f"corpus source '{source.name}': no {source.format} files in {source.path} (resolved to {p})")
    return found


# --------------------------------------------------------------------------- planning


def plan_pieces(sources: Sequence, resolve: Callable[[str], Path], tasks: int,
                *, piece_bytes: int | None = None, datasets: bool = True) -> list[list[Piece]]:
    """Cut every source into pieces and give each of ``tasks`` tasks about the same number of bytes.

    Missing inputs raise DataError here, before any work starts. Pieces keep corpus order within
    a task; the plan depends only on the sources, the files and ``tasks`` (so a resumed run
    gets the same plan). ``datasets=False`` leaves out the Hugging Face dataset sources (format
    hf), which the clean stage reads with datatrove's own reader (``langadapt.clean.hub``).
    """
    files: list[tuple[int, Any, Path, int]] = []
    pieces: list[Piece] = []
    for i, s in enumerate(sources):
        if s.format == "hf":
            if datasets:
                pieces += _dataset_pieces(i, s, resolve)
            continue
        for f in source_files(s, resolve):
            files.append((i, s, f, f.stat().st_size))
    splittable = sum(size for _, s, f, size in files if _splittable(s, f))
    if piece_bytes is None:
        # several pieces per task so that unequal files still balance, but not so small that
        # seeking to line starts costs anything
        piece_bytes = min(256 << 20, max(1 << 20, splittable // max(1, tasks * 4)))
    for i, s, f, size in files:
        if s.format == "parquet":
            pieces += _parquet_pieces(i, s, f)
        elif not _splittable(s, f):
            pieces.append(Piece(i, str(f), "file", 0, size, size))
        else:
            n = max(1, -(-size // piece_bytes))
            step = -(-size // n) if size else 0
            for k in range(n):
                a, b = k * step, min(size, (k + 1) * step)
                pieces.append(Piece(i, str(f), "lines", a, b, b - a))
    order = {p: n for n, p in enumerate(pieces)}
    plan: list[list[Piece]] = [[] for _ in range(tasks)]
    load = [(0, t) for t in range(tasks)]
    for p in sorted(pieces, key=lambda p: (-p.size, order[p])):
        used, t = heapq.heappop(load)
        plan[t].append(p)
        heapq.heappush(load, (used + max(p.size, 1), t))
    for task in plan:
        task.sort(key=order.__getitem__)
    return plan


def _splittable(source, f: Path) -> bool:
    return source.doc_per in ("line", "lines", "record") and not f.name.endswith(".gz") and source.format in ("text", "jsonl")


def _parquet_pieces(i: int, source, f: Path) -> list[Piece]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(f).metadata
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise DataError(f"not a readable Parquet file: {e}", path=str(f)) from None
    names = meta.schema.names
    if source.text_field not in names:
        raise DataError(f"no column '{source.text_field}' (columns: {', '.join(names)}); "
                        f"set text_field of corpus source '{source.name}'", path=str(f))
    return [Piece(i, str(f), "parquet", g, g + 1, meta.row_group(g).total_byte_size) for g in range(meta.num_row_groups)]


def _dataset_pieces(i: int, source, resolve) -> list[Piece]:
    from langadapt.data.hub import open_dataset

    # fail early: a wrong config, split or field stops the run here
    open_dataset(source, resolve(source.path), what=f"corpus source '{source.name}'", streaming=True,
                 fields=(source.text_field,))
    return [Piece(i, str(resolve(source.path)), "hf", 0, 1, 0)]


# --------------------------------------------------------------------------- reading


def read_piece(piece: Piece, source, *, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[Record]:
    """The records of one piece, in order, none longer than ``max_bytes`` (UTF-8)."""
    if piece.kind == "parquet":
        yield from _read_parquet(piece, source, max_bytes)
    elif piece.kind == "hf":
        yield from _read_dataset(piece, source, max_bytes)
    elif source.format == "jsonl":
        yield from _read_jsonl(piece, source, max_bytes)
    elif source.doc_per in ("file", "lines"):
        yield from _read_runs(piece, source, max_bytes)
    else:
        yield from _read_text(piece, max_bytes)


def read_source(source, resolve: Callable[[str], Path], *, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[Record]:
    """Every record of a source, in order (one process; the clean stage reads pieces in parallel)."""
    for task in plan_pieces([source], resolve, 1):
        for piece in task:
            yield from read_piece(piece, source, max_bytes=max_bytes)


def _open(piece: Piece):
    if piece.path.endswith(".gz"):
        return gzip.open(piece.path, "rb")
    return open(piece.path, "rb")


def _raw_lines(f, start: int, end: int | None, max_bytes: int) -> Iterator[tuple[int, bytes, bool]]:
    """(offset of the line, bytes, complete) for the lines starting in [start, end).

    A line longer than ``max_bytes`` comes in several parts (``complete`` False for all but the
    last), cut after the last sentence end in the second half of the buffer, else after a space
    there, else at a character boundary: memory never holds more than ``max_bytes`` of a line.
    """
    if start > 0:
        f.seek(start - 1)
        if f.read(1) != b"\n":  # this line began in the previous piece, which reads it
            while (chunk := f.readline(max_bytes)) and not chunk.endswith(b"\n"):
                pass
    carry = b""
    offset = 0
    in_line = False  # inside a long line whose first part was already given
    while True:
        if not in_line:
            offset = f.tell()
            if end is not None and offset >= end:
                return
        data = f.readline(max_bytes - len(carry))
        buf = carry + data if carry else data
        carry = b""
        if not buf:
            return
        if buf.endswith(b"\n"):
            yield offset, buf.rstrip(b"\r\n"), True
        elif len(buf) < max_bytes:  # the file ends without a newline
            yield offset, buf, True
        else:
            # 0 when the second half holds neither a sentence end nor a space
            cut = _last_end(_SENTENCE_END_BYTES, buf, max_bytes // 2) or buf.rfind(b" ", max_bytes // 2) + 1
            if cut == 0:
                # no space: cut before the last character, whole or not, so no UTF-8 character is split
                cut = len(buf)
                while cut > 0 and buf[cut - 1] & 0xC0 == 0x80:
                    cut -= 1
                if cut > 0 and buf[cut - 1] >= 0xC0:
                    cut -= 1
                if cut == 0:  # not UTF-8 at all: any cut will do
                    cut = len(buf)
            yield offset, buf[:cut], False
            carry = buf[cut:]
            in_line = True
            continue
        in_line = False


def _decode_lines(piece: Piece, max_bytes: int) -> Iterator[tuple[int, str | None, bytes, bool]]:
    """(offset, text or None when invalid UTF-8, raw bytes, complete) per line part."""
    with _open(piece) as f:
        end = piece.end if piece.kind == "lines" else None
        for offset, raw, complete in _raw_lines(f, piece.start if piece.kind == "lines" else 0, end, max_bytes):
            if offset == 0 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            yield offset, text, raw, complete


def _read_text(piece: Piece, max_bytes: int, *, blank_lines: bool = False) -> Iterator[Record]:
    """One record per line (blank lines skipped, or given as ``empty`` records with ``blank_lines``)."""
    whole_file = piece.kind == "file"
    bad_line = -1
    found = False
    for offset, text, raw, complete in _decode_lines(piece, max_bytes):
        where = piece.path if whole_file else f"{piece.path}:{offset}"
        if text is None:
            # a long line comes in parts: count it once, skip every bad part
            yield Record(raw.decode("utf-8", errors="replace"), where, len(raw), invalid=True, repeat=bad_line == offset)
            bad_line = offset
            continue
        found = True
        if text.strip():
            yield Record(text, f"{piece.path}:{offset}" if blank_lines else where, len(raw))
        elif blank_lines:
            yield Record("", where, 0, empty=True)
    if whole_file and not found and not blank_lines:
        yield Record("", piece.path, 0, empty=True)


def _read_runs(piece: Piece, source, max_bytes: int) -> Iterator[Record]:
    """Documents of consecutive lines of a text file: the whole file (``doc_per: file``), or runs of lines
    of at most ``doc_chars`` characters that a blank line also ends (``doc_per: lines``: poems, verses).
    A document keeps its line breaks; it is named after its first line."""
    limit = None if source.doc_per == "file" else source.doc_chars
    lines: list[str] = []
    size = nbytes = 0
    where = ""

    def flush() -> Iterator[Record]:
        nonlocal lines, size, nbytes
        if lines:
            text = "\n".join(lines)
            if len(text.encode("utf-8")) <= max_bytes:
                yield Record(text, where, nbytes)
            else:
                yield from _cut(text, where, max_bytes)
        lines, size, nbytes = [], 0, 0

    found = False
    for record in _read_text(piece, max_bytes, blank_lines=True):
        if record.invalid:
            yield record
            continue
        found = found or not record.empty
        if record.empty:  # a blank line ends a run of lines (a stanza, a paragraph)
            if limit is not None:
                yield from flush()
            continue
        if limit is not None and lines and size + 1 + len(record.text) > limit:
            yield from flush()
        if not lines:
            where = record.where if limit is not None else piece.path
        lines.append(record.text)
        size += len(record.text) + (1 if size else 0)
        nbytes += record.nbytes
    yield from flush()
    if piece.kind == "file" and not found:
        yield Record("", piece.path, 0, empty=True)


def _read_jsonl(piece: Piece, source, max_bytes: int) -> Iterator[Record]:
    import orjson

    for offset, text, raw, complete in _decode_lines(piece, MAX_JSON_LINE_BYTES):
        if not complete:
            raise DataError(f"line {line_number(piece.path, offset)}: JSONL record longer than "
                            f"{MAX_JSON_LINE_BYTES >> 20} MiB; split it, or use format 'text'", path=piece.path)
        where = f"{piece.path}:{offset}"
        if text is None:
            yield Record(raw.decode("utf-8", errors="replace"), where, len(raw), invalid=True)
            continue
        if not text.strip():
            continue
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise DataError(f"line {line_number(piece.path, offset)}: not valid JSON ({e.msg} at column {e.colno})"[:300],
                            path=piece.path) from None
        value = _field(rec, source, piece.path, offset)
        if value and not value.isspace():
            yield from _cut(value, where, max_bytes)
        else:
            yield Record("", where, 0, empty=True)


def _field(rec: Any, source, path: str, offset: int) -> str | None:
    if not isinstance(rec, dict):
        raise DataError(f"line {line_number(path, offset)}: a JSONL record must be an object, got {type(rec).__name__}", path=path)
    if source.text_field not in rec:
        keys = ", ".join(list(rec)[:12])
        raise DataError(f"line {line_number(path, offset)}: no field '{source.text_field}' (fields: {keys}); "
                        f"set text_field of corpus source '{source.name}'", path=path)
    value = rec[source.text_field]
    if value is not None and not isinstance(value, str):
        raise DataError(f"line {line_number(path, offset)}: field '{source.text_field}' is {type(value).__name__}, "
                        "not text", path=path)
    return value


def _read_parquet(piece: Piece, source, max_bytes: int) -> Iterator[Record]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(piece.path)
    row = sum(pf.metadata.row_group(g).num_rows for g in range(piece.start))
    for batch in pf.iter_batches(batch_size=1024, row_groups=[piece.start], columns=[source.text_field]):
        for value in batch.column(0).to_pylist():
            if value is not None and not isinstance(value, str):
                raise DataError(f"row {row + 1}: column '{source.text_field}' is {type(value).__name__}, not text",
                                path=piece.path)
            if value and not value.isspace():
                yield from _cut(value, f"{piece.path}:{row}", max_bytes)
            else:
                yield Record("", f"{piece.path}:{row}", 0, empty=True)
            row += 1


def _read_dataset(piece: Piece, source, max_bytes: int) -> Iterator[Record]:
    from langadapt.data.hub import rows

    field = source.text_field
    for where, row in rows(source, piece.path, what=f"corpus source '{source.name}'", streaming=True,
                           fields=(field,), text_of=lambda r: r.get(field) if isinstance(r.get(field), str) else None):
        value = row.get(field)
        if value is not None and not isinstance(value, str):
            raise DataError(f"corpus source '{source.name}': field '{field}' of {where} is "
                            f"{type(value).__name__}, not text")
        if value and not value.isspace():
            yield from _cut(value, where, max_bytes)
        else:
            yield Record("", where, 0, empty=True)


def _cut(text: str, where: str, max_bytes: int) -> Iterator[Record]:
    """A document as records of at most ``max_bytes`` (see :func:`cut_document`)."""
    for part in cut_document(text, max_bytes):
        yield Record(part, where, len(part.encode("utf-8")))


def cut_document(text: str, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[str]:
    """A document in parts of at most ``max_bytes`` (UTF-8), cut after a sentence end, else a space or
    newline, when possible; a short document is one part."""
    if len(text) * 4 <= max_bytes or len(text.encode("utf-8")) <= max_bytes:
        yield text
        return
    step = max(1, max_bytes // 4)  # characters: at most 4 bytes each, so a part never exceeds max_bytes
    i = 0
    while i < len(text):
        j = min(len(text), i + step)
        if j < len(text):
            end = _last_end(_SENTENCE_END_TEXT, text, i + step // 2, j)
            k = max(text.rfind(" ", i + step // 2, j), text.rfind("\n", i + step // 2, j))
            j = end or (k + 1 if k >= 0 else j)
        yield text[i:j]
        i = j


def line_number(path: str, offset: int) -> int:
    """1-based line number of the byte ``offset`` (counted only when an error needs it)."""
    n = 1
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        left = offset
        while left > 0 and (chunk := f.read(min(left, 1 << 20))):
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


def describe_sources(sources: Sequence, resolve: Callable[[str], Path]) -> list[dict]:
    """Name, type, format and total input bytes of each source, for logs and reports."""
    out = []
    for s in sources:
        if s.format == "hf":
            size = None
        else:
            size = sum(os.path.getsize(f) for f in source_files(s, resolve))
        out.append({"name": s.name, "type": s.type, "format": s.format, "bytes": size})
    return out


__all__ = ["Piece", "Record", "plan_pieces", "read_piece", "read_source", "source_files", "line_number",
           "cut_document", "describe_sources", "MAX_RECORD_BYTES"]
