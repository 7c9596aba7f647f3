"""Hugging Face datasets as sources of every kind: corpus, parallel, instructions, held-out, evaluation data.

A source names a dataset by hub id (``HuggingFaceFW/fineweb-2``) or local folder, with the settings
of :class:`langadapt.recipe.HubOptions`: ``config`` (subset), ``split``, ``data_files`` (globs inside
the repository), ``revision``, ``streaming``, ``id_field``, caps (``max_documents``, ``max_bytes``,
``max_tokens``) and ``shuffle_buffer``. Everything goes through ``datasets.load_dataset`` exactly as
for a dataset on the Hub, so a local folder laid out as the Hub lays one out (``README.md`` with
``configs:`` front matter, data files per config and split) reads the same way, offline.

Streamed, nothing is downloaded whole: rows arrive file by file, and a cap closes the stream as soon
as it is reached, so reading stops inside the data file the cap falls in (``datasets`` reads a
Parquet file whole when the stream comes to it). Downloaded (``streaming: false``),
the dataset is prepared once in the ``datasets`` cache. Caps count records with text, UTF-8 bytes of
their text, and tokens of the recipe's base model; the record that reaches a cap is the last one
kept.

Access: ``HF_TOKEN`` or the ``huggingface-cli login`` token is used for gated and private datasets
(huggingface_hub reads both). With ``HF_HUB_OFFLINE=1`` a hub id is read from the local cache: the
files huggingface_hub keeps (``huggingface-cli download --repo-type dataset ID``, or an earlier
download by ``datasets``), else a dataset ``datasets`` prepared earlier. Every failure is one
:class:`~langadapt.errors.DataError` line naming the source: no network, a gated dataset without
access, an unknown dataset, revision, config (with the configs there are), split or field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from langadapt.errors import DataError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json", ".parquet": "parquet",
                 ".csv": "csv", ".tsv": "csv", ".arrow": "arrow", ".txt": "text"}
"""A single local file read as a dataset: the ``datasets`` builder for its suffix."""


def looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def is_saved_dataset(folder: Path) -> bool:
    """A ``save_to_disk`` folder (read with ``load_from_disk``)."""
    return folder.is_dir() and any((folder / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))


def is_dataset_repo(folder: Path) -> bool:
    """A folder laid out as a hub dataset repository: a ``README.md`` whose YAML front matter has ``configs:``."""
    readme = folder / "README.md"
    if not readme.is_file():
        return False
    head = readme.read_text(encoding="utf-8", errors="replace")[:200_000]
    if not head.startswith("---"):
        return False
    front = head[3:].split("\n---", 1)[0]
    return re.search(r"^configs:", front, re.MULTILINE) is not None


def _get(source, key: str, default=None):
    # sources are recipe sections; tests and older callers pass plain namespaces without every key
    return getattr(source, key, default)


# --------------------------------------------------------------------------- opening


@dataclass(frozen=True)
class Opened:
    """A dataset located and checked: what to hand ``datasets.load_dataset`` (in any process) to read it."""

    name: str  # the dataset as the recipe names it (for messages)
    where: str  # what load_dataset gets: the hub id, a local folder, a hub-cache snapshot folder, a builder name
    options: dict = field(default_factory=dict)  # name, split, data_files, revision
    streaming: bool = True
    saved: bool = False  # a save_to_disk folder
    n_shards: int = 1  # files (streamed) the dataset's rows come in; tasks beyond this many read nothing
    columns: tuple[str, ...] | None = None
    hub: bool = False  # read from the Hub (or its cache), not a local folder

    def load(self):
        """The dataset (an ``IterableDataset`` when streamed); raises whatever ``datasets`` raises."""
        import datasets

        if self.saved:
            ds = datasets.load_from_disk(self.where)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[self.options["split"]]
            return ds.to_iterable_dataset() if self.streaming else ds
        return datasets.load_dataset(self.where, **self.options, streaming=self.streaming)


def open_dataset(source, path: str | os.PathLike, *, what: str, streaming: bool | None = None,
                 fields: tuple[str, ...] = ()) -> tuple[Opened, Any]:
    """Locate and load ``source``'s dataset at ``path`` (its resolved ``path``, or a hub id); check that
    ``fields`` (top-level names, or the first part of dotted ones) exist. Returns the :class:`Opened`
    description and the loaded dataset. ``what`` names the source in errors ("corpus source 'web'").
    ``streaming`` is the kind's default when the source does not set it."""
    name = str(_get(source, "path", path) or path)
    p = Path(path)
    split = _get(source, "split", "train")
    want_stream = _get(source, "streaming")
    want_stream = (streaming if streaming is not None else False) if want_stream is None else want_stream
    options = {"name": _get(source, "config"), "split": split, "data_files": _get(source, "data_files"),
               "revision": _get(source, "revision")}
    options = {k: v for k, v in options.items() if v is not None}
    if p.exists():
        if is_saved_dataset(p):
            if (p / "dataset_dict.json").is_file():  # one folder per split: readers load the split's alone
                import json

                splits = json.loads((p / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
                if split not in splits:
                    raise DataError(f"{what}: dataset '{name}' has no split '{split}' (splits: {', '.join(splits)})")
                p = p / split
            opened = Opened(name, str(p), {"split": split}, want_stream, saved=True)
        elif p.is_file():
            suffix = next((s for s in FILE_BUILDERS if p.name.endswith(s)), None)
            if suffix is None:
                raise DataError(f"{what}: cannot read a '{p.suffix}' file as a dataset; give JSON, JSONL, Parquet, "
                                "CSV, Arrow or text", path=str(p))
            options = {"split": "train", "data_files": str(p)}
            opened = Opened(name, FILE_BUILDERS[suffix], options, want_stream)
        else:
            options.pop("revision", None)  # a local folder has no revisions
            opened = Opened(name, str(p), options, want_stream)
    elif looks_like_hub_id(name):
        opened = _from_hub(name, options, want_stream)
    else:
        raise DataError(f"{what}: dataset not found: {name} (resolved to {p}; not a local folder nor a hub id like "
                        "'owner/name')")
    try:
        ds = opened.load()
    except Exception as e:  # datasets and huggingface_hub raise many kinds; the user gets one line
        raise explain(e, what=what, opened=opened) from None
    if isinstance(ds, dict):  # no split given to a loader that returned them all
        raise DataError(f"{what}: dataset '{name}' has no split '{split}' (splits: {', '.join(ds)})")
    columns = _columns(ds, what=what, opened=opened)
    missing = [f for f in fields if f and f.split(".")[0] not in columns]
    if missing:
        raise DataError(f"{what}: dataset '{name}' has no field '{missing[0]}' (fields: {', '.join(columns)})")
    n_shards = getattr(ds, "n_shards", 1) if opened.streaming else 1
    opened = Opened(opened.name, opened.where, opened.options, opened.streaming, opened.saved, max(1, n_shards or 1),
                    tuple(columns), opened.hub)
    return opened, ds


def _from_hub(name: str, options: dict, streaming: bool) -> Opened:
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        return Opened(name, name, options, streaming, hub=True)
    # Offline: the repository's files as huggingface_hub cached them read like a local folder, streamed or not.
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, repo_type="dataset", revision=options.get("revision"), local_files_only=True)
    except Exception:  # not cached there: datasets may still hold a dataset it prepared (downloaded) earlier
        return Opened(name, name, options, False, hub=True)
    local = {k: v for k, v in options.items() if k != "revision"}
    return Opened(name, folder, local, streaming, hub=True)


def _columns(ds, *, what: str, opened: Opened) -> list[str]:
    names = getattr(ds, "column_names", None)
    if names:
        return list(names)
    try:  # a stream whose features are not declared: its first record tells
        first = next(iter(ds.take(1) if hasattr(ds, "take") else ds), None)
    except Exception as e:
        raise explain(e, what=what, opened=opened) from None
    return list(first) if isinstance(first, dict) else []


def explain(e: Exception, *, what: str, opened: Opened) -> DataError:
    """One line for a failure to load or read ``opened``: what went wrong and what to do."""
    from huggingface_hub import constants

    if isinstance(e, DataError):
        return e
    name = opened.name
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    kind = type(e).__name__
    page = f"https://huggingface.co/datasets/{name}"
    if opened.hub and ("OfflineModeIsEnabled" in text or (constants.HF_HUB_OFFLINE and isinstance(e, ConnectionError))):
        return DataError(f"{what}: dataset '{name}' is not in the local cache and HF_HUB_OFFLINE=1 is set; download it "
                         f"once with network access (huggingface-cli download --repo-type dataset {name}), or unset "
                         "HF_HUB_OFFLINE")
    if opened.hub and (isinstance(e, ConnectionError) or "Couldn't reach" in text):
        return DataError(f"{what}: cannot reach the Hugging Face Hub for dataset '{name}' (no network?); connect, or "
                         "use a copy in the local cache with HF_HUB_OFFLINE=1")
    if "gated dataset" in text or kind == "GatedRepoError":
        from huggingface_hub import get_token

        if get_token():
            return DataError(f"{what}: dataset '{name}' is gated and the token in use (HF_TOKEN or huggingface-cli "
                             f"login) has no access to it yet; ask for access at {page}")
        return DataError(f"{what}: dataset '{name}' is gated: ask for access at {page}, then log in "
                         "(huggingface-cli login) or set HF_TOKEN")
    if kind in ("DatasetNotFoundError", "RepositoryNotFoundError") and "Revision" not in text:
        return DataError(f"{what}: dataset '{name}' does not exist on the Hub, or is private (check the id; private "
                         "datasets need HF_TOKEN or huggingface-cli login)")
    if "Revision" in text and ("doesn't exist" in text or "not found" in text.lower()):
        return DataError(f"{what}: dataset '{name}' has no revision '{opened.options.get('revision')}'")
    if "BuilderConfig" in text and "not found" in text or "Config name is missing" in text:
        configs = config_names(opened)
        shown = ", ".join(configs[:40]) + (f", ... ({len(configs):,} in all)" if len(configs) > 40 else "")
        if "Config name is missing" in text:
            return DataError(f"{what}: dataset '{name}' has several configs; set config to one of: {shown}")
        return DataError(f"{what}: dataset '{name}' has no config '{opened.options.get('name')}'; available configs: "
                         f"{shown or 'none found'}")
    m = (re.search(r"Bad split: (.*?)\. Available splits: \[(.*)\]", text)
         or re.search(r'Unknown split "(.*?)"\. Should be one of \[(.*)\]', text))
    if m:
        return DataError(f"{what}: dataset '{name}' has no split '{m.group(1)}' (splits: "
                         f"{m.group(2).replace(chr(39), '')})")
    if kind in ("DataFilesNotFoundError", "FileNotFoundError", "EmptyDatasetError") and opened.options.get("data_files"):
        return DataError(f"{what}: data_files {opened.options['data_files']!r} match no file in dataset '{name}' "
                         f"({first[:200]})")
    return DataError(f"{what}: cannot load dataset '{name}': {kind}: {first}"[:500])


def config_names(opened: Opened) -> list[str]:
    """The configs of the dataset (empty when they cannot be listed)."""
    import datasets

    try:
        return list(datasets.get_dataset_config_names(opened.where, revision=opened.options.get("revision")))
    except Exception:
        return []


# --------------------------------------------------------------------------- caps


@lru_cache(maxsize=4)
def _tokenizer(model: str):
    from langadapt.models import load_tokenizer

    return load_tokenizer(model)


def token_counter(model: str | None, *, what: str) -> Callable[[str], int]:
    """Tokens of ``text`` under ``model``'s tokenizer (the recipe's base model), special tokens excluded."""
    if model is None:
        raise DataError(f"{what}: max_tokens needs a tokenizer to count with, and none is known here; use max_bytes")
    tok = _tokenizer(model)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


class Caps:
    """Counts records, UTF-8 bytes and tokens of what a source has given, against its caps.

    With ``share=(k, n)`` the caps are task ``k``'s share when ``n`` tasks read parts of the source at
    once (the clean stage's workers): the totals add up to the source's caps.
    """

    def __init__(self, source, *, what: str, share: tuple[int, int] = (0, 1)):
        k, n = share

        def part(cap: int | None) -> int | None:
            return None if cap is None else cap // n + (1 if k < cap % n else 0)

        self.max_documents = part(_get(source, "max_documents"))
        self.max_bytes = part(_get(source, "max_bytes"))
        self.max_tokens = part(_get(source, "max_tokens"))
        self.count_tokens = (token_counter(_get(source, "_tokens_with"), what=what)
                             if self.max_tokens is not None else None)
        self.documents = self.bytes = self.tokens = 0

    @property
    def any(self) -> bool:
        return self.max_documents is not None or self.max_bytes is not None or self.max_tokens is not None

    def full(self) -> bool:
        """Whether a cap is reached (nothing more is to be read)."""
        return ((self.max_documents is not None and self.documents >= self.max_documents)
                or (self.max_bytes is not None and self.bytes >= self.max_bytes)
                or (self.max_tokens is not None and self.tokens >= self.max_tokens))

    def add(self, text: str, nbytes: int | None = None) -> None:
        self.documents += 1
        self.bytes += len(text.encode("utf-8")) if nbytes is None else nbytes
        if self.count_tokens is not None:
            self.tokens += self.count_tokens(text)


# --------------------------------------------------------------------------- reading


def shuffled(ds, source, seed: int):
    """``ds`` shuffled with the recipe's ``seed`` when the source sets ``shuffle_buffer``: a stream in a
    buffer of that many records (and its files' order), a downloaded dataset whole."""
    buffer = _get(source, "shuffle_buffer")
    if not buffer:
        return ds
    if hasattr(ds, "n_shards"):  # IterableDataset
        return ds.shuffle(seed=seed, buffer_size=buffer)
    return ds.shuffle(seed=seed)


def row_text(row: dict) -> str:
    """The text of a record for the byte and token caps: its string values, nested ones included."""
    parts: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(row)
    return "\n".join(parts)


def rows(source, path: str | os.PathLike, *, what: str, seed: int = 0, streaming: bool | None = None,
         fields: tuple[str, ...] = (), text_of: Callable[[dict], str | None] = row_text) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for the records of ``source``'s dataset, shuffled and capped as the source says.

    ``text_of`` gives the text a record counts for in the caps (None or empty: not counted, and not
    a record with text: it does not count against ``max_documents`` either).
    """
    opened, ds = open_dataset(source, path, what=what, streaming=streaming, fields=fields)
    ds = shuffled(ds, source, seed)
    caps = Caps(source, what=what)
    split = opened.options.get("split", "train")
    id_field = _get(source, "id_field")
    try:
        for i, row in enumerate(ds):
            if caps.any and caps.full():
                break
            rid = row.get(id_field) if id_field else None
            where = f"{opened.name}[{split}]:{rid if rid is not None else i + 1}"
            text = text_of(row) if caps.any else None
            if text:
                caps.add(text)
            yield where, row
    except DataError:
        raise
    except Exception as e:  # a stream can fail midway (network, a damaged file)
        raise explain(e, what=what, opened=opened) from None


def dataset_lines(source, path: str | os.PathLike, *, max_chars: int, what: str, seed: int = 0) -> list[str]:
    """Non-empty lines of the ``text_field`` of a dataset's records, up to ``max_chars`` characters
    (held-out text from a dataset: the first records, or a seeded sample with ``shuffle_buffer``)."""
    field_name = _get(source, "text_field", "text")
    lines: list[str] = []
    total = 0
    for where, row in rows(source, path, what=what, seed=seed, fields=(field_name,),
                           text_of=lambda r: r.get(field_name) if isinstance(r.get(field_name), str) else None):
        value = row.get(field_name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{what}: field '{field_name}' of {where} is {type(value).__name__}, not text")
        for line in value.splitlines():
            line = line.strip()
            if not line:
                continue
            if total + len(line) + bool(lines) > max_chars and lines:  # the lines are joined by line breaks
                return lines
            total += len(line) + bool(lines)
            lines.append(line)
    if not lines:
        raise DataError(f"{what}: dataset '{_get(source, 'path', path)}' gave no text in field '{field_name}'")
    return lines


__all__ = ["Opened", "dataset_lines", "Caps", "open_dataset", "rows", "shuffled", "explain", "token_counter", "looks_like_hub_id",
           "is_saved_dataset", "is_dataset_repo", "row_text"]
