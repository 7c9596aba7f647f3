"""The clean stage's reader of Hugging Face datasets: datatrove's own ``HuggingFaceDatasetReader``.

One reader per dataset source (``format: hf``) follows the corpus reader in the first pass. Each
task reads its share of the dataset as datatrove deals it out: streamed datasets by file (a task
beyond the number of files reads nothing; a single file is split row by row), downloaded ones row by
row; the same with the local executor's workers and with Slurm array tasks. On top of datatrove's
reading this adds what the stage's other readers do: documents without text counted
(``empty_text``), bytes read counted per source (``bytes_in``) and shown in the progress bar, a long
document cut at sentence ends, and the source's caps and shuffle, each task taking its share of the
caps so that all tasks together stop at the source's limits.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.huggingface import HuggingFaceDatasetReader

from langadapt.clean.blocks import flush_counts
from langadapt.data.corpus import MAX_RECORD_BYTES, cut_document
from langadapt.data.hub import Caps, Opened, explain, shuffled
from langadapt.errors import DataError


def _adapter(self, data: dict, path: str, id_in_file):
    """datatrove's row -> document dict: the text field, the id, the source in the metadata."""
    value = data.get(self.text_key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"corpus source '{self.source.name}': field '{self.text_key}' is {type(value).__name__}, "
                        f"not text (record {id_in_file} of {self.opened.name})")
    if not value or value.isspace():
        self.counts[f"{self.source.name}|empty_text"] += 1
        return {"text": ""}  # datatrove drops a document without text
    rid = data.get(self.id_key) if self.id_key else None
    return {"text": value, "id": f"{self.opened.name}:{rid if rid is not None else id_in_file}",
            "metadata": {"source": self.source.name, "type": self.source.type, "src": self.index}}


class HubCorpusReader(HuggingFaceDatasetReader):
    """Reads one ``format: hf`` corpus source with datatrove's Hugging Face reader (see the module docstring)."""

    name = "🤗 hub corpus"

    def __init__(self, source, index: int, opened: Opened, *, seed: int = 0, progress_dir: str | None = None,
                 batch_size: int = 256):
        # a save_to_disk folder is read whole by datatrove, the split picked in _get_dataset_shard
        super().__init__(opened.where, dataset_options=None if opened.saved else dict(opened.options),
                         streaming=opened.streaming and not opened.saved, batch_size=batch_size, adapter=_adapter,
                         text_key=source.text_field, id_key=source.id_field or "", load_from_disk=opened.saved)
        self.source, self.index, self.opened, self.seed = source, index, opened, seed
        self.progress_dir = progress_dir
        self.counts: Counter = Counter()

    def _get_dataset_shard(self, dst, rank: int, world_size: int):
        import datasets

        if isinstance(dst, datasets.DatasetDict):
            dst = dst[self.opened.options.get("split", "train")]
        shard = super()._get_dataset_shard(dst, rank, world_size)
        return shuffled(shard, self.source, self.seed) if shard is not None else None

    def _tasks_with_rows(self, world_size: int) -> int:
        # datatrove gives a streamed dataset of several files out by file: tasks past the last file get none
        if self.opened.streaming and 1 < self.opened.n_shards < world_size:
            return self.opened.n_shards
        return world_size

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        name = self.source.name
        tasks = self._tasks_with_rows(world_size)
        if rank >= tasks:
            return
        caps = Caps(self.source, what=f"corpus source '{name}'", share=(rank, tasks))
        counts = self.counts
        done, last = 0, time.monotonic()
        stream = super().run(None, rank, world_size)
        try:
            while not (caps.any and caps.full()):
                try:
                    doc = next(stream)
                except StopIteration:
                    break
                except DataError:
                    raise
                except Exception as e:  # a stream that fails midway (network, a damaged file): one line
                    raise explain(e, what=f"corpus source '{name}'", opened=self.opened) from None
                text = doc.text
                nbytes = len(text.encode("utf-8"))
                caps.add(text, nbytes)
                counts[f"{name}|bytes_in"] += nbytes
                done += nbytes
                counts[f"{name}|documents"] += 1  # taken (datatrove's own "documents" counts what it read)
                for k, part in enumerate(cut_document(text, MAX_RECORD_BYTES)):
                    yield Document(part, doc.id if k == 0 else f"{doc.id}#{k}", metadata=dict(doc.metadata))
                if self.progress_dir and time.monotonic() - last > 1.0:
                    self._progress(rank, done)
                    last = time.monotonic()
        finally:
            stream.close()  # stops the stream: nothing past a cap is read
            if self.progress_dir:
                self._progress(rank, done)
            flush_counts(self, counts)

    def _progress(self, rank: int, done: int) -> None:
        path = Path(self.progress_dir) / f"{rank:05d}-hub{self.index}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(done))
        os.replace(tmp, path)


def open_datasets(sources, resolve) -> list[tuple[int, object, Opened]]:
    """(index, source, opened) for the ``format: hf`` sources, each located, loaded and checked (config,
    split, text field) before any work starts; streamed unless the source says ``streaming: false``."""
    from langadapt.data.hub import open_dataset

    out = []
    for i, s in enumerate(sources):
        if s.format != "hf":
            continue
        opened, _ = open_dataset(s, resolve(s.path), what=f"corpus source '{s.name}'", streaming=True,
                                 fields=(s.text_field,) + ((s.id_field,) if s.id_field else ()))
        out.append((i, s, opened))
    return out
