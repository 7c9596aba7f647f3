"""Parallel text readers: target-language / English sentence pairs for align's bilingual step
and sft's translation instructions.

Three formats (a ``data.parallel`` entry of the recipe):
- ``tsv``: one pair per line, the sides in columns ``target_column`` and ``english_column``;
- ``pair``: two line-aligned files, line i of ``english`` translating line i of ``target``;
- ``hf``: a Hugging Face dataset (a hub id with its ``config``, ``split``, ``data_files``,
  ``revision``, caps and ``shuffle_buffer``, see :mod:`langadapt.data.hub`), a local dataset
  repository or ``save_to_disk`` folder, or a local JSON/JSONL/Parquet/CSV file, with
  ``target_field`` / ``english_field`` (dotted paths such as ``translation.fa`` reach into nested
  records, as in the OPUS sets).

Nothing misaligned is trained on silently. Two files with different line counts are refused
(their alignment is unknowable). Lines with an empty side, and TSV lines with fewer or more
columns than the file's usual count (a stray tab), are skipped and reported with their line
numbers. Then (``checks: true``, the default; see :mod:`langadapt.data.alignment`) pairs whose
sides are swapped or in the wrong language, or whose length ratio is far off the source's, are
skipped and reported the same way, and a source in which one side is shifted against the other
from some line on is refused, naming that line. When the skipped lines are more than
``max_bad_share`` of a source (default 5%) the source is refused as probably misaligned or
mis-declared.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice, zip_longest
from pathlib import Path
from typing import Any, NamedTuple

from langadapt.errors import DataError

MAX_BAD_SHARE = 0.05
"""Default share of unusable lines above which a source is refused (``max_bad_share`` of a source)."""


class Pair(NamedTuple):
    """One sentence pair; ``line`` is the 1-based line (or row) it came from."""

    source: str
    target: str
    english: str
    line: int


@dataclass
class ParallelReport:
    """What reading one source found: pairs kept and lines skipped, by reason, with line numbers."""

    name: str
    where: str
    lines: int = 0
    kept: int = 0
    skipped: dict[str, list[int]] = field(default_factory=dict)
    judged: int = 0  # sides long enough for their language to be checked
    median_length_ratio: float | None = None  # target / English characters, the source's median
    length_ratio_bounds: list[float] | None = None  # pairs outside are skipped ("length ratio")
    shift: dict | None = None  # {"line", "until", "offset"} when one side is shifted (the source is refused)

    def skip(self, reason: str, line: int) -> None:
        self.skipped.setdefault(reason, []).append(line)

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self, show: int = 10) -> str:
        """One line: ``quran: 6,235 lines, 6,230 pairs; skipped 5 (empty english: lines 7, 9, ...)``."""
        text = f"{self.name}: {self.lines:,} lines, {self.kept:,} pairs"
        if self.skipped:
            parts = []
            for reason, lines in self.skipped.items():
                shown = ", ".join(str(n) for n in lines[:show]) + (", ..." if len(lines) > show else "")
                parts.append(f"{reason}: {len(lines):,} (line{'s' if len(lines) > 1 else ''} {shown})")
            text += f"; skipped {self.skipped_count:,} — " + "; ".join(parts)
        return text

    def as_dict(self) -> dict:
        return {"name": self.name, "where": self.where, "lines": self.lines, "kept": self.kept,
                "skipped": {k: {"count": len(v), "lines": v[:100]} for k, v in self.skipped.items()},
                "checks": {"judged_sides": self.judged, "median_length_ratio": self.median_length_ratio,
                           "length_ratio_bounds": self.length_ratio_bounds, "shift": self.shift}}


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the line break), decoding each line on its own so a
    bad byte is reported with its line."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read parallel file: {e.strerror}", path=str(path)) from None
    with f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start} of the line)", path=str(path), line=n) from None


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _keep(report: ParallelReport, out: list[Pair], target: str, english: str, line: int) -> None:
    target, english = target.strip(), english.strip()
    if not target and not english:
        report.skip("blank", line)
    elif not target:
        report.skip("empty target", line)
    elif not english:
        report.skip("empty english", line)
    else:
        out.append(Pair(report.name, target, english, line))
        report.kept += 1


def _read_pair(src, resolve, limit: int | None = None) -> tuple[list[Pair], ParallelReport]:
    tpath, epath = resolve(src.target), resolve(src.english)
    report = ParallelReport(src.name, f"{tpath} + {epath}")
    out: list[Pair] = []
    for (nt, t), (ne, e) in islice(zip_longest(_lines(tpath), _lines(epath), fillvalue=(None, None)), limit):
        if t is None or e is None:
            nt_all, ne_all = _count_lines(tpath), _count_lines(epath)
            raise DataError(
                f"line-aligned files differ in length: {tpath} has {nt_all:,} lines, {epath} has {ne_all:,}; "
                f"line {min(nt_all, ne_all) + 1} has no partner. Fix the files so line i of one translates line i "
                "of the other", path=str(tpath if t is None else epath))
        report.lines = nt
        _keep(report, out, t, e, nt)
    return out, report


def _read_tsv(src, resolve, limit: int | None = None) -> tuple[list[Pair], ParallelReport]:
    path = resolve(src.path)
    report = ParallelReport(src.name, str(path))
    out: list[Pair] = []
    need = max(src.target_column, src.english_column) + 1
    # A stray tab inside a sentence cut its side short ("Please wash"); the file's most common
    # column count (a first pass) tells such lines apart from files that have more columns.
    widths = Counter(line.count("\t") + 1 for _, line in islice(_lines(path), limit) if line.strip())
    usual = max(widths, key=lambda w: (widths[w], -w)) if widths else need
    for n, line in islice(_lines(path), limit):
        report.lines = n
        if not line.strip():
            report.skip("blank", n)
            continue
        cols = line.split("\t")
        if len(cols) < need:
            report.skip(f"fewer than {need} tab-separated columns", n)
            continue
        if len(cols) != usual and usual >= need:
            report.skip(f"not {usual} tab-separated columns like the rest of the file", n)
            continue
        _keep(report, out, cols[src.target_column], cols[src.english_column], n)
    return out, report


def _field(row: Any, dotted: str):
    value = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _read_hf(src, resolve, limit: int | None = None, seed: int = 0) -> tuple[list[Pair], ParallelReport]:
    from langadapt.data.hub import rows

    report = ParallelReport(src.name, src.path)
    out: list[Pair] = []

    def sides(row: dict) -> str | None:
        t, e = _field(row, src.target_field), _field(row, src.english_field)
        return None if t is None or e is None else f"{t}\n{e}"

    records = rows(src, resolve(src.path), what=f"parallel source '{src.name}'", seed=seed,
                   fields=(src.target_field, src.english_field), text_of=sides)
    for n, (_, row) in enumerate(islice(records, limit), 1):
        report.lines = n
        t, e = _field(row, src.target_field), _field(row, src.english_field)
        if t is None or e is None:
            missing = src.target_field if t is None else src.english_field
            report.skip(f"no field '{missing}'", n)
            continue
        _keep(report, out, str(t), str(e), n)
    return out, report


def read_source(src, resolve=Path, *, lang: str | None = None, limit: int | None = None, seed: int = 0
                ) -> tuple[list[Pair], ParallelReport]:
    """Every usable pair of one ``ParallelSource``, and the report of what was skipped.

    ``resolve`` turns the recipe's paths into files (``recipe.resolve``); ``lang`` is the target
    language (``language.code``), whose side is checked to be in it (None: the languages are not
    checked); ``limit``: read only the first lines (rows), and judge the source by them (the checks
    before a run). Raises ``DataError`` for files of different lengths, undecodable lines, a shift
    between the sides, or a source with too many bad lines.
    """
    from langadapt.data.alignment import check_pairs

    if src.format == "hf":
        pairs, report = _read_hf(src, resolve, limit, seed)
    else:
        pairs, report = {"pair": _read_pair, "tsv": _read_tsv}[src.format](src, resolve, limit)
    if src.format == "pair":
        t, e = resolve(src.target), resolve(src.english)
        path, sides = str(t), (f"text in {t.name}", f"text in {e.name}")
    elif src.format == "tsv":
        path, sides = report.where, (f"target (column {src.target_column})", f"English (column {src.english_column})")
    else:
        path, sides = report.where, (f"target ('{src.target_field}')", f"English ('{src.english_field}')")
    if src.checks:
        pairs = check_pairs(pairs, report, lang=lang, path=path, sides=sides)
    if report.lines and report.skipped_count > src.max_bad_share * report.lines:
        first = min(n for lines in report.skipped.values() for n in lines)
        by_count = max(report.skipped, key=lambda k: len(report.skipped[k]))
        hint = ("the sides look swapped: check target_column/english_column (or target/english)"
                if by_count == "swapped columns" else
                "the sides are probably misaligned or the columns/fields are set wrong")
        raise DataError(f"refusing parallel source '{src.name}': {report.summary()} — more than "
                        f"{src.max_bad_share:.0%} of its lines are unusable (max_bad_share); {hint}",
                        path=path, line=first)
    if not pairs:
        raise DataError(f"parallel source '{src.name}' has no usable pairs", path=report.where)
    return pairs, report


def read_parallel(recipe, names: list[str] | None = None) -> tuple[list[Pair], list[ParallelReport]]:
    """The pairs of the recipe's ``data.parallel`` sources (all, or those in ``names``), in order."""
    pairs: list[Pair] = []
    reports: list[ParallelReport] = []
    for src in recipe.data.parallel:
        if names is not None and src.name not in names:
            continue
        p, r = read_source(src, recipe.resolve, lang=recipe.language.code, seed=recipe.seed)
        pairs.extend(p)
        reports.append(r)
    return pairs, reports
