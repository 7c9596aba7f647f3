"""The token store of a corpus built by N tokenizer processes: parts in parallel, then one concatenation.

The clean stage's shards are cut into parts (byte ranges of JSONL shards, a line belonging to the
part its first byte lies in; row groups of Parquet shards), about the same size and several per
process. Each process tokenizes whole parts, one at a time, into a part folder
(``tokens.bin``, ``starts.bin`` counted from the part's start, ``meta.json``), written under a
temporary name and renamed when complete. When every part is there, their files are concatenated in
corpus order (document starts shifted by the tokens before them) into the store ``store.build``
writes: the same files, byte for byte, as one process tokenizing the same texts in order.

A build that is killed keeps its finished parts (``<store>.parts/``, tied to the store's key) and a
rerun tokenizes only the missing ones. Memory stays flat: a process holds one batch of texts, the
concatenation copies files in chunks. Processes are started fresh (``spawn``: nothing of a training
process is inherited), each single-threaded, and die with the process that started them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from langadapt.errors import DataError

BATCH_TEXTS = 2048  # texts per tokenizer call (as store.build)
MIN_PART_BYTES = 1 << 20  # smaller corpora are tokenized in this process: starting a worker costs more
MAX_PART_BYTES = 64 << 20  # a killed build loses at most this much work per process


@dataclass(frozen=True)
class Part:
    """A piece of the corpus one process tokenizes alone."""

    path: str
    kind: str  # "lines": bytes [start, end) of a JSONL shard; "rows": row group ``start`` of a Parquet shard
    start: int
    end: int
    size: int  # bytes, for balancing and progress


def plan_parts(files: list[Path], *, part_bytes: int | None = None) -> list[Part]:
    """Parts of the clean shards ``files``, in corpus order: about 64 (enough to balance many processes),
    between 1 and 64 MiB each. The plan does not depend on the number of processes, so a build resumed
    with another number reuses the parts already finished."""
    total = sum(f.stat().st_size for f in files)
    if part_bytes is None:
        part_bytes = min(MAX_PART_BYTES, max(MIN_PART_BYTES, total // 64))
    parts: list[Part] = []
    for f in files:
        size = f.stat().st_size
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(f).metadata
            parts += [Part(str(f), "rows", g, g + 1, meta.row_group(g).total_byte_size) for g in range(meta.num_row_groups)]
            continue
        n = max(1, -(-size // part_bytes))
        step = -(-size // n) if size else 0
        parts += [Part(str(f), "lines", k * step, min(size, (k + 1) * step), min(size, (k + 1) * step) - k * step)
                  for k in range(n)]
    return parts


def part_texts(part: Part) -> Iterator[str]:
    """The non-empty texts of a part, as ``examples.iter_documents`` reads the whole shard."""
    if part.kind == "rows":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(part.path).iter_batches(columns=["text"], row_groups=[part.start]):
            yield from (str(t) for t in batch.column(0).to_pylist() if t)
        return
    import orjson

    with open(part.path, "rb") as f:
        if part.start > 0:
            f.seek(part.start - 1)
            if f.read(1) != b"\n":  # this line began in the part before, which reads it
                f.readline()
        while f.tell() < part.end:
            at = f.tell()
            line = f.readline()
            if not line:
                return
            if not line.strip():
                continue
            try:
                text = orjson.loads(line)["text"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                try:  # what json reads and orjson refuses (a lone surrogate) is still a record
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    from langadapt.data.corpus import line_number

                    raise DataError("not a clean-stage record ({\"text\": ...})", path=part.path,
                                    line=line_number(part.path, at)) from None
            if text:
                yield text


def write_documents(encoded: list[list[int]], ft, fs, offset: int, *, start: int, eos: int) -> int:
    """Append documents to a store's open files as ``[start] + ids + [eos]`` (``tokens.bin``) and their
    starts counted from ``offset`` (``starts.bin``); returns the tokens written. One writer for
    ``store.build`` and the parallel parts, so their files agree byte for byte."""
    import numpy as np

    lengths = np.fromiter((len(ids) + 2 for ids in encoded), dtype=np.int64, count=len(encoded))
    starts = offset + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    flat = np.empty(int(lengths.sum()), dtype=np.uint32)
    at = 0
    for ids in encoded:
        flat[at] = start
        flat[at + 1 : at + 1 + len(ids)] = ids
        flat[at + 1 + len(ids)] = eos
        at += len(ids) + 2
    flat.tofile(ft)
    starts.tofile(fs)
    return len(flat)


# --------------------------------------------------------------------------- one part, in a worker

_WORKER: dict = {}


def _die_with_parent(parent: int) -> None:
    # a SIGKILLed build must not leave workers writing parts into a folder the rerun uses
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)


def _init_worker(tokenizer_json: str, start: int, eos: int, parent: int | None) -> None:
    """Load the tokenizer once per process; one thread each (the processes are the parallelism)."""
    if parent is not None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        os.environ["RAYON_NUM_THREADS"] = "1"
        _die_with_parent(parent)
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(tokenizer_json)
    tk.no_truncation()
    tk.no_padding()
    _WORKER.update(tokenizer=tk, start=start, eos=eos)


def tokenize_part(part: Part, out: str, limit: int | None) -> tuple[int, int]:
    """Tokenize ``part`` (at most ``limit`` documents) into the part folder ``out``; (documents, tokens)."""

    tk, start, eos = _WORKER["tokenizer"], _WORKER["start"], _WORKER["eos"]
    encode = getattr(tk, "encode_batch_fast", tk.encode_batch)
    tmp = Path(out + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    docs = tokens = 0
    with open(tmp / "tokens.bin", "wb") as ft, open(tmp / "starts.bin", "wb") as fs:

        def flush(batch: list[str]) -> None:
            nonlocal docs, tokens
            encoded = [e.ids for e in encode(batch, add_special_tokens=False)]
            docs += len(batch)
            tokens += write_documents(encoded, ft, fs, tokens, start=start, eos=eos)

        batch: list[str] = []
        for text in part_texts(part):
            if limit is not None and docs + len(batch) >= limit:
                break
            batch.append(text)
            if len(batch) == BATCH_TEXTS:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    (tmp / "meta.json").write_text(json.dumps({"documents": docs, "tokens": tokens}), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return docs, tokens


# --------------------------------------------------------------------------- the build


def can_build(tokenizer) -> bool:
    """Whether ``tokenizer`` can be handed to worker processes (a fast tokenizer with a ``tokenizers`` backend)."""
    return getattr(tokenizer, "backend_tokenizer", None) is not None


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def build_parallel(files: list[Path], tokenizer, folder: str | os.PathLike, *, key: str, start: int, eos: int,
                   limit: int | None = None, workers: int | None = None,
                   progress: Callable[[int, int, int], None] | None = None) -> dict:
    """Tokenize the clean shards ``files`` into a store at ``folder`` (see the module docstring);
    ``start``/``eos`` frame every document. ``progress(bytes done, documents, tokens)`` is called as
    parts finish. Returns the store's ``meta.json``; the caller opens it (``store.TokenStore``)."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    folder = Path(folder)
    workers = workers or default_workers()
    parts = plan_parts(files)
    work = folder.with_name(folder.name + ".parts")
    stamp, plan = work / "key", json.dumps({"key": key, "parts": [list(vars(p).values()) for p in parts]})
    if not (stamp.is_file() and stamp.read_text(encoding="utf-8") == plan):  # parts of another build: start over
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        stamp.write_text(plan, encoding="utf-8")
    names = [str(work / f"{i:05d}") for i in range(len(parts))]
    done = {i: _part_meta(n) for i, n in enumerate(names) if (Path(n) / "meta.json").is_file()}
    tokenizer_json = tokenizer.backend_tokenizer.to_str()

    def finished() -> bool:  # every part, or enough leading parts for ``limit`` documents
        if limit is None:
            return len(done) == len(parts)
        docs = 0
        for i in range(len(parts)):
            if i not in done:
                return False
            docs += done[i][0]
            if docs >= limit:
                return True
        return True

    def report() -> None:
        if progress:
            progress(sum(parts[i].size for i in done), sum(d for d, _ in done.values()),
                     sum(t for _, t in done.values()))

    todo = [i for i in range(len(parts)) if i not in done]
    report()
    if todo and not finished():
        procs = min(workers, len(todo), max(1, sum(parts[i].size for i in todo) // MIN_PART_BYTES))
        if procs <= 1:
            _init_worker(tokenizer_json, start, eos, None)
            for i in todo:
                done[i] = tokenize_part(parts[i], names[i], limit)
                report()
                if finished():
                    break
        else:
            with ProcessPoolExecutor(max_workers=procs, mp_context=get_context("spawn"), initializer=_init_worker,
                                     initargs=(tokenizer_json, start, eos, os.getpid())) as pool:
                running = {pool.submit(tokenize_part, parts[i], names[i], limit): i for i in todo}
                while running:
                    finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished_now:
                        done[running.pop(fut)] = fut.result()  # a worker's DataError reaches the user as itself
                    report()
                    if finished():
                        for fut in running:
                            fut.cancel()
                        break
    meta = _concatenate(names, done, folder, key=key, limit=limit)
    shutil.rmtree(work, ignore_errors=True)
    return meta


def _part_meta(name: str) -> tuple[int, int]:
    m = json.loads((Path(name) / "meta.json").read_text(encoding="utf-8"))
    return int(m["documents"]), int(m["tokens"])


def _copy(src: Path, dst, nbytes: int) -> None:
    """Append the first ``nbytes`` of ``src`` to the open file ``dst`` (in the kernel where it can)."""
    with open(src, "rb") as f:
        left = nbytes
        if hasattr(os, "copy_file_range"):
            try:
                while left > 0:
                    n = os.copy_file_range(f.fileno(), dst.fileno(), min(left, 1 << 30))
                    if n == 0:
                        break
                    left -= n
                return
            except OSError:  # another filesystem, an old kernel: copy through Python instead
                f.seek(nbytes - left)
        while left > 0 and (chunk := f.read(min(left, 16 << 20))):
            dst.write(chunk)
            left -= len(chunk)


def _concatenate(names: list[str], done: dict, folder: Path, *, key: str, limit: int | None) -> dict:
    import numpy as np

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    docs = tokens = 0
    with open(tmp / "tokens.bin", "wb") as ft, open(tmp / "starts.bin", "wb") as fs:
        for i, name in enumerate(names):
            if limit is not None and docs >= limit:
                break
            n_docs, n_tokens = done[i]
            take = n_docs if limit is None else min(n_docs, limit - docs)
            starts = np.memmap(Path(name) / "starts.bin", dtype=np.int64, mode="r", shape=(n_docs,)) if n_docs else None
            if take < n_docs:  # the part holds more documents than the limit leaves: up to the first one past it
                n_tokens = int(starts[take])
            ft.flush()
            _copy(Path(name) / "tokens.bin", ft, n_tokens * 4)
            for a in range(0, take, 1 << 22):  # document starts shifted by the tokens before the part, in chunks
                (starts[a:min(take, a + (1 << 22))] + tokens).astype(np.int64).tofile(fs)
            del starts
            docs += take
            tokens += n_tokens
    if tokens == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError("no tokens to train on (every text is empty)")
    meta = {"key": key, "documents": docs, "tokens": tokens}
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return meta
