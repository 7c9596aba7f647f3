"""Packed training rows on disk, for corpora that do not fit in memory as Python lists.

``build`` streams texts through the tokenizer once and appends each document, encoded as
everywhere else (``[boundary] + tokens + [EOS]``, see ``examples``), to a flat file of token ids,
with a second file of where each document starts. ``TokenStore`` maps both files (``numpy.memmap``)
and serves the same rows ``packing.pack`` would build from the same documents: ``seq_len`` blocks
cut from the concatenation, positions restarting at every document start and every block start,
the label of each document's first token masked, the last block padded. Memory stays flat
whatever the corpus size (the operating system pages the files in), and a finished store is
reused when the stage resumes.

Files, in the store's folder: ``tokens.bin`` (uint32), ``starts.bin`` (int64 document starts),
``meta.json`` (counts, the key the store was built for). The folder is written under a temporary
name and renamed when complete, so a killed build never leaves a store that looks finished.

With ``replay`` (``train.replay``), replay documents are interleaved with the corpus's documents
by token count as they are written, so replay holds the requested share of the tokens throughout.
``rows(..., across=True)`` serves plain concatenated blocks instead (positions and attention run
across documents, every token a target: ``pack_across_documents``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from langadapt.distributed import is_main_process, wait_for_everyone
from langadapt.train.examples import boundary_id
from langadapt.train.packing import IGNORE

BATCH_TEXTS = 2048  # texts per tokenizer call


def build(
    texts: Iterable[str],
    tokenizer,
    folder: str | os.PathLike,
    *,
    key: str = "",
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    replay: tuple[Iterable[str], float] | None = None,
) -> TokenStore:
    """Tokenize ``texts`` (at most ``limit``) into a store at ``folder``, or open the one already
    there if it was built for the same ``key`` (a hash of the inputs and the tokenizer).
    ``replay``: (replay documents, share of the tokens they are to hold), interleaved as written."""
    from collections import deque

    from langadapt.train.parallel_store import write_documents
    from langadapt.train.replay import Mixer

    folder = Path(folder)
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            if json.loads(meta_path.read_text(encoding="utf-8")).get("key") == key:
                return TokenStore(folder)
        except ValueError:
            pass
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = boundary_id(tokenizer)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else start
    if len(tokenizer) >= 2**32:
        raise ValueError("vocabulary too large for 32-bit token ids")
    docs = tokens = replay_docs = 0
    mixer = Mixer(replay[1]) if replay else None
    replay_texts = iter(replay[0]) if replay else None
    ready: deque = deque()

    def peek_replay() -> list[int]:
        if not ready:
            ready.extend(tokenizer([next(replay_texts) for _ in range(256)], add_special_tokens=False)["input_ids"])
        return ready[0]

    with open(tmp / "tokens.bin", "wb") as ft, open(tmp / "starts.bin", "wb") as fs:

        def flush(batch: list[str]) -> None:
            nonlocal docs, tokens, replay_docs
            encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
            docs += len(batch)
            if mixer is not None:  # after each document, the replay documents owed so far
                mixed = []
                for ids in encoded:
                    mixed.append(ids)
                    mixer.add_target(len(ids) + 2)
                    while mixer.wants(len(peek_replay()) + 2):
                        r = ready.popleft()
                        mixed.append(r)
                        mixer.add_replay(len(r) + 2)
                        replay_docs += 1
                encoded = mixed
            tokens += write_documents(encoded, ft, fs, tokens, start=start, eos=eos)
            if progress:
                progress(docs, tokens)

        batch: list[str] = []
        for text in texts:
            if limit is not None and docs + len(batch) >= limit:
                break
            if text:
                batch.append(text)
            if len(batch) == BATCH_TEXTS:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    if tokens == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError("no tokens to train on (every text is empty)")
    meta = {"key": key, "documents": docs + replay_docs, "tokens": tokens}
    if mixer is not None:
        meta["replay"] = {"documents": replay_docs, "tokens": mixer.replay, "share": round(mixer.share, 4)}
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return TokenStore(folder)


class TokenStore:
    """Packed ``seq_len`` rows read from a store folder; the interface of ``packing.Rows`` that
    the training loop uses (``len``, ``tokens``, ``batch``), after ``rows(seq_len, pad_id)``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text(encoding="utf-8"))
        self.documents, self.total = int(meta["documents"]), int(meta["tokens"])
        self.replay = meta.get("replay")  # {"documents", "tokens", "share"} when replay text is mixed in
        self.ids = np.memmap(self.folder / "tokens.bin", dtype=np.uint32, mode="r", shape=(self.total,))
        self.starts = np.memmap(self.folder / "starts.bin", dtype=np.int64, mode="r", shape=(self.documents,))
        self.seq_len = self.pad_id = None

    def rows(self, seq_len: int, pad_id: int, *, across: bool = False) -> TokenStore:
        """Serve ``seq_len`` blocks, the last one padded with ``pad_id``; ``across``: plain concatenation."""
        self.seq_len, self.pad_id, self.across = seq_len, pad_id, across
        n = -(-self.total // seq_len)
        self.tokens = torch.full((n,), seq_len, dtype=torch.int64)
        self.tokens[-1] = self.total - (n - 1) * seq_len
        return self

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def remove(self) -> None:
        """Delete the store's files (a stage calls this once its training is over)."""
        del self.ids, self.starts
        shutil.rmtree(self.folder, ignore_errors=True)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs for rows ``index``: ``input_ids``, ``labels``, ``position_ids``."""
        L = self.seq_len
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        pos = rows[:, None] * L + np.arange(L)[None, :]  # global token positions
        pad = pos >= self.total
        ids = np.full(pos.shape, self.pad_id, dtype=np.int64)
        ids[~pad] = self.ids[pos[~pad]]
        labels = ids.copy()
        if self.across:  # one long text cut into blocks: positions from each block start, every token a target
            positions = pos - rows[:, None] * L
        else:
            # Each token's document start; positions count from it or from the block start, whichever is later.
            doc_start = self.starts[np.searchsorted(self.starts, np.minimum(pos, self.total - 1), side="right") - 1]
            positions = pos - np.maximum(doc_start, rows[:, None] * L)
            labels[pos == doc_start] = IGNORE  # a document's first token is never predicted from the one before
        labels[pad] = IGNORE
        # Padding after the last token: its own positions from 0, as packing.pack writes them.
        positions[pad] = pos[pad] - self.total
        return {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions),
        }


def corpus_store(files: list[Path], tokenizer, folder: str | os.PathLike, *, limit: int | None = None,
                 log: Callable[[str], None] | None = None, workers: int | None = None,
                 replay: tuple[Iterable[str], float, str] | None = None) -> TokenStore:
    """The clean stage's documents (its shards, ``RunLayout.clean_shards``) as a ``TokenStore`` in ``folder``:
    built once by the main process (the others wait and open it), reused while the shards, the tokenizer,
    ``limit`` and ``replay`` are unchanged. A fast tokenizer tokenizes in ``workers`` processes (None: one per
    CPU core; see ``parallel_store``: the same store, restartable part by part); any other in this one.
    ``replay``: (replay documents, their share of the tokens, a description of them for the store's key),
    interleaved as `build` writes (in this process: the interleave follows the corpus's order)."""
    import hashlib

    from tqdm.auto import tqdm

    from langadapt.train.examples import iter_documents

    key = hashlib.sha256(json.dumps({
        "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "tokenizer": [getattr(tokenizer, "name_or_path", ""), len(tokenizer), boundary_id(tokenizer),
                      tokenizer.eos_token_id],
        "limit": limit,
        "replay": [replay[1], replay[2]] if replay else None,
    }).encode()).hexdigest()[:16]
    if not is_main_process():  # the main process builds it; the others wait, then open it
        wait_for_everyone()
        return TokenStore(folder)
    bar = tqdm(total=sum(f.stat().st_size for f in files), desc="tokenizing", unit="B", unit_scale=True,
               dynamic_ncols=True, leave=False)
    seen = 0

    def texts():
        nonlocal seen
        for t in iter_documents(files):
            seen += len(t.encode("utf-8")) + 12  # about a JSONL line's bytes
            yield t

    def progress(docs: int, tokens: int) -> None:
        bar.n = min(seen, bar.total)
        bar.set_postfix(documents=f"{docs:,}", tokens=f"{tokens:,}", refresh=False)
        bar.refresh()

    from langadapt.train import parallel_store

    meta = Path(folder) / "meta.json"
    if replay or not parallel_store.can_build(tokenizer):
        store = build(texts(), tokenizer, folder, key=key, limit=limit, progress=progress,
                      replay=(replay[0], replay[1]) if replay else None)
    elif meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("key") == key:
        store = TokenStore(folder)
    else:
        def parts_done(nbytes: int, docs: int, tokens: int) -> None:
            nonlocal seen
            seen = nbytes
            progress(docs, tokens)

        start = boundary_id(tokenizer)
        parallel_store.build_parallel(files, tokenizer, folder, key=key, start=start, limit=limit, workers=workers,
                                      eos=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else start,
                                      progress=parts_done)
        store = TokenStore(folder)
    bar.n = bar.total
    bar.close()
    wait_for_everyone()
    if log:
        log(f"tokenized corpus: {store.documents:,} documents, {store.total:,} tokens ({Path(folder)})")
    return store
