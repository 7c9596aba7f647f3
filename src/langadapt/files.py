"""Small file helpers shared by every stage: atomic writes, JSON/JSONL, fingerprints."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds.

    Works for files and folders. A killed process leaves at most a ``.tmp-*`` sibling, never a
    half-written ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(target, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TEMPORARY_PREFIXES = (".tmp-", ".old-")
"""Names ``atomic_path`` (and the training checkpoints) give what they write before the final rename."""


def remove_leftovers(folder: str | os.PathLike, *, name: str | None = None, recursive: bool = True) -> list[Path]:
    """Delete what killed atomic writes left in ``folder``: ``.tmp-*`` and ``.old-*`` entries (only those
    of ``name``, as ``atomic_path(folder / name)`` makes them, when given); return what was removed.

    A kill between the temporary write and the rename leaves such a sibling behind (a SmolLM2 model is
    half a gigabyte). Call it only when nothing else is writing into ``folder``: a stage folder when the
    stage starts, an export's parent folder before the export.
    """
    folder = Path(folder)
    prefixes = tuple(f"{p}{name}-" for p in TEMPORARY_PREFIXES) if name is not None else TEMPORARY_PREFIXES
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        for entry in [*dirs, *files]:
            if entry.startswith(prefixes):
                path = Path(root) / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        dirs[:] = [d for d in dirs if not d.startswith(prefixes)] if recursive else []
    return removed


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (UTF-8, readable indentation, Persian kept as text)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines atomically; returns the number of rows written."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON line (for logs that grow during a run)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def fingerprint_path(path: str | os.PathLike) -> str:
    """A cheap, stable fingerprint of a file or folder: names, sizes and modification times.

    Content hashing a multi-GB corpus on every ``run`` would cost minutes; size and mtime
    change whenever a file is edited or replaced, which is what re-running stages needs.
    """
    path = Path(path)
    h = hashlib.sha256()
    if not path.exists():
        h.update(b"missing:" + str(path).encode())
        return h.hexdigest()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        rel = f.name if f == path else str(f.relative_to(path))
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
