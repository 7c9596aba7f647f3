"""Train the target-language SentencePiece model on a random sample of the cleaned sentences.

The sample is drawn by reservoir sampling over sentence positions: one pass over the corpus keeps
``k`` (file, byte offset or Parquet row) pairs in two numpy arrays (12 bytes a sentence), a second
pass reads just those sentences. Memory is O(k) whatever the corpus size; the paper's 4 GB sample is SentencePiece's
own memory, not ours.

Pieces never cross a boundary between a letter and a non-letter (punctuation, digits, symbols):
the sample is written with SentencePiece's ``pretokenization_delimiter`` at those boundaries. A
piece such as "است." could not be used anyway: the merged tokenizer only adds pieces made of
target-language letters (anything else would change English tokenization), and a byte-level base
cuts the text at exactly those boundaries. On the Persian benchmark this turns 2,155 unusable
pieces of 20,000 into usable ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from langadapt.errors import DataError, LangadaptError

DELIMITER = "\u241f"  # SYMBOL FOR UNIT SEPARATOR: never in real text, removed by SentencePiece


def _boundary_pattern():
    """Where a letter run (letters, marks, joiners) meets a non-space non-letter.

    `regex` (a dependency of transformers) because the stdlib's ``\\w`` would count digits as letters.
    """
    import regex

    letter = r"\p{L}\p{M}\u200c\u200d"
    return regex.compile(rf"(?<=[{letter}])(?=[^{letter}\s])|(?<=[^{letter}\s])(?=[{letter}])")


@dataclass
class Sample:
    path: Path
    sentences_seen: int
    sentences_kept: int
    characters: int


def _positions(path: Path, progress):
    """(position, ...) of every sentence of a file: byte offsets of non-blank JSONL lines, row numbers of Parquet."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from range(pq.ParquetFile(path).metadata.num_rows)
        if progress is not None:
            progress(path.stat().st_size)
        return
    offset = pending = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield offset
            offset += len(line)
            pending += len(line)
            if progress is not None and pending >= 1 << 20:
                progress(pending)
                pending = 0
    if progress is not None and pending:
        progress(pending)


def _read_at(path: Path, positions: list[int]):
    """The texts at sorted ``positions`` of one file (see `_positions`)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise DataError("Parquet file has no 'text' column", path=str(path))
        start, wanted, i = 0, positions, 0
        for g in range(pf.metadata.num_row_groups):
            end = start + pf.metadata.row_group(g).num_rows
            if i < len(wanted) and wanted[i] < end:
                column = pf.read_row_group(g, columns=["text"]).column("text")
                while i < len(wanted) and wanted[i] < end:
                    yield column[wanted[i] - start].as_py()
                    i += 1
            start = end
        return
    with open(path, "rb") as f:
        for off in positions:
            f.seek(off)
            try:
                yield json.loads(f.readline())["text"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"not a JSON object with a 'text' field at byte {off}", path=str(path)) from None


def reservoir_sample(files: list[Path], k: int, out_path: Path, *, seed: int, progress=None) -> Sample:
    """Write a uniform random sample of ``k`` documents (all if fewer) from ``files`` to ``out_path``, one
    line of a document per line.

    The files are the clean stage's output: JSONL lines (or Parquet rows) with a ``text`` field (documents,
    or sentences in runs made before documents).
    ``progress(n)`` is called as ``n`` more bytes have been read.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    file_of = np.zeros(k, dtype=np.int32)
    position_of = np.zeros(k, dtype=np.int64)
    seen = used = 0
    draws = np.empty(0)
    for fi, path in enumerate(files):
        for position in _positions(Path(path), progress):
            if seen < k:
                file_of[seen], position_of[seen] = fi, position
            else:
                if used == len(draws):
                    draws, used = rng.random(65536), 0
                j = int(draws[used] * (seen + 1))  # Algorithm R: keep with probability k / (seen + 1)
                used += 1
                if j < k:
                    file_of[j], position_of[j] = fi, position
            seen += 1
    kept = min(seen, k)
    if kept == 0:
        raise DataError(f"no sentences in {', '.join(str(f) for f in files)}; did the clean stage keep anything?")
    boundary = _boundary_pattern()
    chars = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as out:
        for fi in np.unique(file_of[:kept]):
            for text in _read_at(Path(files[fi]), sorted(position_of[:kept][file_of[:kept] == fi].tolist())):
                for line in str(text).split("\n"):  # a document's lines (verses, paragraphs) one by one
                    line = " ".join(line.split())
                    if line:
                        chars += len(line)
                        out.write(boundary.sub(DELIMITER, line) + "\n")
    return Sample(out_path, seen, kept, chars)


@dataclass
class Trained:
    model_path: Path
    requested: int
    learned: int


def train_sentencepiece(sample: Path, out_model: Path, *, vocab_size: int, model_type: str,
                        character_coverage: float, seed: int, threads: int | None = None) -> Trained:
    """Train SentencePiece on ``sample`` and write the model to ``out_model``.

    Text is not normalised (``identity``): the pieces must match the raw text the base tokenizer
    sees. When the sample supports fewer pieces than ``vocab_size`` (a small corpus), SentencePiece
    stops early (``hard_vocab_limit: false``); ``learned`` says how many it made and the caller warns.
    """
    import tempfile

    import sentencepiece as spm

    from langadapt.files import atomic_path

    spm.set_random_generator_seed(seed)
    with tempfile.TemporaryDirectory(dir=out_model.parent, prefix=".sp-") as tmp:
        prefix = os.path.join(tmp, "sp")
        try:
            spm.SentencePieceTrainer.train(
                input=str(sample), model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
                character_coverage=character_coverage, normalization_rule_name="identity",
                pretokenization_delimiter=DELIMITER, hard_vocab_limit=False, byte_fallback=False,
                input_sentence_size=0, shuffle_input_sentence=False, split_digits=True,
                max_sentence_length=1 << 15,  # a document's paragraph, not only a sentence, is one line here
                num_threads=threads or os.cpu_count() or 1, minloglevel=2,
            )
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise LangadaptError(f"SentencePiece training failed: {msg} (tokenizer.new_pieces is {vocab_size:,})") from None
        with atomic_path(out_model) as tmp_model:
            os.replace(prefix + ".model", tmp_model)
    sp = spm.SentencePieceProcessor(model_file=str(out_model))
    return Trained(out_model, vocab_size, sp.get_piece_size())
