"""datatrove pipeline blocks of the clean stage that are not filters: reading, sentences, documents,
counting, writing.

Every block counts per corpus source in its datatrove statistics, under labels
``"<source>|<metric>"``; :mod:`langadapt.clean.report` adds them up over all tasks into the
report. Documents carry ``source`` (name), ``type`` and ``src`` (index of the source in the
recipe, which decides which copy of a duplicate is kept) in their metadata.

The rules judge sentences (paper 3.1); what the stage writes is documents (C4's way, which the
paper follows): `SplitSentences` cuts each source document into sentences with ids
``<document id>/<k>`` and the line each was on, the filters and dedup drop sentences, and
`JoinDocuments` puts the kept sentences of each document back together in order (a dropped
sentence leaves a gap, not a split), a space between sentences of one line, a line break
between lines.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.typeshelper import StatHints

from langadapt.clean.normalize import normalize
from langadapt.clean.split import sentences_by_line
from langadapt.data.corpus import Piece, read_piece


def flush_counts(step: PipelineStep, counts: Counter) -> None:
    """Move per-source counts into the block's datatrove stats (one update per label, not per document)."""
    for label, n in counts.items():
        step.stat_update(label, value=n)
    counts.clear()


# --------------------------------------------------------------------------- rows on disk


def document_row(writer, doc: Document) -> dict:
    """A line of ``documents/*.jsonl``: the contract later stages read (``layout.clean_shards``)."""
    m = doc.metadata
    return {"text": doc.text, "source": m["source"], "type": m["type"], "sentences": m.get("sentences", 1),
            "lang_prob": round(m.get("lang_prob", 0.0), 4)}


def work_row(writer, doc: Document) -> dict:
    """A line of an intermediate shard: a sentence plus what the next pass needs."""
    m = doc.metadata
    return {"text": doc.text, "source": m["source"], "type": m["type"], "lang_prob": m.get("lang_prob", 0.0),
            "src": m["src"], "doc": doc.id, "line": m.get("line", 0)}


class RejectRow:
    """Adapter for a rejects writer: the sentence, why it was dropped, and where it came from."""

    def __init__(self, reason: str):
        self.reason = reason

    def __call__(self, writer, doc: Document) -> dict:
        return {"text": doc.text, "reason": self.reason, "source": doc.metadata["source"], "doc": doc.id}


class ShardWriter(JsonlWriter):
    """datatrove's JSONL writer, lean: files named by rank only, the name worked out once per rank,
    and the document count added to the statistics once at the end (per-document file-name
    templating and statistics cost more than writing the line)."""

    _names: dict | None = None
    _count = 0

    def _get_output_filename(self, document: Document, rank: int | str = 0, **kwargs) -> str:
        if self._names is None:
            self._names = {}
        if rank not in self._names:
            self._names[rank] = self.output_filename.substitute(rank=str(rank).zfill(5))
        return self._names[rank]

    def write(self, document: Document, rank: int = 0, **kwargs) -> None:
        name = self._get_output_filename(document, rank)
        self._write(self.adapter(document), self.output_mg.get_file(name), name)
        self._count += 1

    def close(self) -> None:
        if self._count:
            self.stat_update(StatHints.total, value=self._count)
            self._count = 0
        super().close()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self:
            for document in data:
                self.write(document, rank)
                yield document


def rejects_writer(folder: str | os.PathLike | None, reason: str) -> JsonlWriter | None:
    """A JSONL writer for dropped sentences of one reason (``<folder>/<reason>/<rank>.jsonl``), or None."""
    if folder is None:
        return None
    return ShardWriter(str(folder), output_filename=f"{reason}/${{rank}}.jsonl", compression=None,
                       adapter=RejectRow(reason))


# --------------------------------------------------------------------------- reading


class CorpusReader(PipelineStep):
    """Reads this task's pieces of the corpus (see :func:`langadapt.data.corpus.plan_pieces`).

    Lines that are not valid UTF-8 are counted (``invalid_utf8``, once per line) and skipped, and so
    are documents without text (``empty_text``: a JSONL ``null``, an empty or blank field or cell).
    Bytes read are written to ``progress_dir/<rank>`` about once a second for the progress bar.
    """

    type = "📖 - READER"
    name = "corpus"

    def __init__(self, sources: list, plan: list[list[Piece]], *, progress_dir: str | None = None,
                 rejects_dir: str | None = None):
        super().__init__()
        self.sources = sources
        self.plan = plan
        self.progress_dir = progress_dir
        self.rejects_dir = rejects_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()
        done = 0
        last = time.monotonic()
        writer = rejects_writer(self.rejects_dir, "invalid_utf8")
        try:
            for piece in self.plan[rank]:
                source = self.sources[piece.source]
                name = source.name
                md = {"source": name, "type": source.type, "src": piece.source}
                for rec in read_piece(piece, source):
                    counts[f"{name}|bytes_in"] += rec.nbytes
                    done += rec.nbytes
                    if rec.empty:
                        counts[f"{name}|empty_text"] += 1
                        continue
                    if rec.invalid:
                        if not rec.repeat:
                            counts[f"{name}|invalid_utf8"] += 1
                            if writer is not None:
                                writer.write(Document(rec.text, rec.where, metadata=dict(md)), rank)
                        continue
                    counts["documents"] += 1
                    yield Document(rec.text, rec.where, metadata=dict(md))
                    if self.progress_dir and time.monotonic() - last > 1.0:
                        self._progress(rank, done)
                        last = time.monotonic()
        finally:
            if writer is not None:
                writer.close()
            if self.progress_dir:
                self._progress(rank, done)
            flush_counts(self, counts)

    def _progress(self, rank: int, done: int) -> None:
        path = Path(self.progress_dir) / f"{rank:05d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(done))
        os.replace(tmp, path)


class ShardReader(PipelineStep):
    """Reads back the intermediate shard ``<folder>/<rank>.jsonl`` that the same rank wrote in the pass before.

    Dedup filters identify sentences by their position in the shard, so a rank must read
    exactly the file its own rank wrote (datatrove's folder readers deal files out by sorted
    name, which shifts when a rank wrote nothing).
    """

    type = "📖 - READER"
    name = "shard"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import orjson

        path = Path(self.folder) / f"{rank:05d}.jsonl"
        if not path.is_file():
            return
        with open(path, "rb") as f:
            for line in f:
                r = orjson.loads(line)
                yield Document(r["text"], r["doc"], metadata={
                    "source": r["source"], "type": r["type"], "src": r["src"], "lang_prob": r["lang_prob"],
                    "line": r.get("line", 0)})


# --------------------------------------------------------------------------- documents to sentences


class SplitSentences(PipelineStep):
    """Normalizes each document for the target language and splits it into sentences, one datatrove
    document each (id ``<document>/<k>``, metadata ``line``: the line of the document it was on)."""

    type = "✂️ - SPLITTER"
    name = "normalize + split"

    def __init__(self, lang: str, digits: str = "keep"):
        super().__init__()
        self.lang = lang
        self.digits = digits

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()
        lang, digits = self.lang, self.digits
        try:
            for doc in data:
                m = doc.metadata
                sentences = sentences_by_line(normalize(doc.text, lang, digits), lang)
                counts[f"{m['source']}|sentences_in"] += len(sentences)
                if len(sentences) == 1:  # a document that is one sentence (a verse, a short line): reuse it
                    doc.text, doc.id = sentences[0][0], f"{doc.id}/0"
                    m["line"] = 0
                    yield doc
                    continue
                for k, (s, line) in enumerate(sentences):
                    yield Document(s, f"{doc.id}/{k}", metadata={"source": m["source"], "type": m["type"], "src": m["src"],
                                                                 "line": line})
        finally:
            flush_counts(self, counts)


class JoinDocuments(PipelineStep):
    """Puts the kept sentences of each source document back together, in order: consecutive sentences whose
    ids share the document part (``<document>/<k>``) become one document, joined by a space within a line
    and a line break across lines. Metadata: ``sentences`` (how many were kept), ``lang_prob`` (their mean)."""

    type = "🧩 - JOIN"
    name = "sentences -> documents"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()
        group: list[Document] = []

        def joined() -> Document:
            first = group[0].metadata
            parts = [group[0].text]
            for prev, doc in zip(group, group[1:]):
                parts.append(("\n" if doc.metadata.get("line", 0) != prev.metadata.get("line", 0) else " ") + doc.text)
            probs = [d.metadata.get("lang_prob", 0.0) for d in group]
            counts[f"{first['source']}|documents_out"] += 1
            return Document("".join(parts), group[0].id.rsplit("/", 1)[0], metadata={
                "source": first["source"], "type": first["type"], "src": first["src"],
                "sentences": len(group), "lang_prob": sum(probs) / len(probs)})

        try:
            for doc in data:
                if group and doc.id.rsplit("/", 1)[0] != group[-1].id.rsplit("/", 1)[0]:
                    yield joined()
                    group = []
                group.append(doc)
            if group:
                yield joined()
        finally:
            flush_counts(self, counts)


class Tally(PipelineStep):
    """Counts the sentences (and their UTF-8 bytes) that pass this point, per source."""

    type = "🔢 - COUNT"

    def __init__(self, label: str):
        super().__init__()
        self.label = label
        self.name = f"tally {label}"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()
        label = self.label
        try:
            for doc in data:
                src = doc.metadata["source"]
                counts[f"{src}|{label}"] += 1
                counts[f"{src}|{label}_bytes"] += len(doc.text.encode("utf-8"))
                yield doc
        finally:
            flush_counts(self, counts)


def shard_writer(folder: str, output_format: str, *, work: bool = False):
    """The writer of the final document shards (or, with ``work``, of intermediate sentence shards), one file per rank."""
    if output_format == "parquet" and not work:
        from datatrove.pipeline.writers.parquet import ParquetWriter

        return ParquetWriter(folder, output_filename="${rank}.parquet", adapter=document_row)
    return ShardWriter(folder, output_filename="${rank}.jsonl", compression=None,
                       adapter=work_row if work else document_row)
