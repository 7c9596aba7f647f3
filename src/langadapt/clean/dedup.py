"""Deduplication across every worker, with datatrove's multi-pass exact and MinHash dedup.

Exact (always): each filtering task writes a 64-bit hash of every surviving sentence (already
normalized) to signature files split by hash range; one finder task per hash range merges the
sorted signatures of all tasks and lists every copy but one; each task then drops the listed
positions of its own shard. A sentence repeated in two shards read by different workers is
therefore found, which a per-shard set could not do. Of the copies, the one from the source
listed first in the recipe is kept (then the earliest in its shard).

Near-duplicates (``near_dedup: true``): datatrove's MinHash passes (signatures, LSH buckets,
clustering, filter) on word n-grams of the exact-deduplicated sentences; one sentence per
cluster is kept.
"""

from __future__ import annotations

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.dedup import exact_dedup, minhash
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupSignature, get_sig_dtype
from datatrove.utils.typeshelper import StatHints
from datatrove.utils.word_tokenizers import WordTokenizer

# Sentences are short, so LSH is set looser than datatrove's document default (14 x 8, ~0.72):
# 20 bands of 5 hashes find pairs of Jaccard similarity 0.75 (one word changed in a 15-word
# sentence, on word pairs) 99.6% of the time, and pairs at 0.5 about half the time.
MINHASH_BUCKETS = 20
MINHASH_HASHES_PER_BUCKET = 5


def _quiet_tqdm(iterable=None, *args, **kwargs):
    return iterable


# The dedup passes wrap their start-up in tqdm bars, which would print into our own progress
# display from every task; the numbers they show are in the task logs anyway.
exact_dedup.tqdm = _quiet_tqdm
minhash.tqdm = _quiet_tqdm


def sentence_text(doc: Document) -> bytes:
    """What two sentences must share to be duplicates: their normalized text (as UTF-8, for xxhash)."""
    return doc.text.encode("utf-8")


def source_priority(doc: Document) -> int:
    """Higher wins among duplicates: the source listed first in the recipe."""
    return 65535 - min(doc.metadata["src"], 65534)


def exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=sentence_text, document_priority=source_priority)


class SentenceSignature(ExactDedupSignature):
    """datatrove's exact-dedup signature pass, holding signatures in numpy chunks (14 bytes a
    sentence, about 40 while sorting) instead of a Python list of tuples (well over 100), so a
    task's memory stays small; sorted with ``lexsort``, several times faster than sorting the
    structured array by its fields."""

    name = "💥 exact dedup: signatures"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        dtype = get_sig_dtype(self.config.hash_config)
        chunks, buf, n, total = [], np.empty(1 << 16, dtype=dtype), 0, 0
        hash_fc, content, priority = self.hash_fc, self.config.content_getter, self.config.document_priority
        for doc_idx, doc in enumerate(data):
            buf[n] = (hash_fc(content(doc)), priority(doc), doc_idx)
            n += 1
            total += 1
            if n == len(buf):
                chunks.append(buf)
                buf, n = np.empty(1 << 16, dtype=dtype), 0
        chunks.append(buf[:n])
        self.stat_update(StatHints.total, value=total)
        with self.track_time():
            self.save_hashes(rank, np.concatenate(chunks))

    def save_hashes(self, rank: int, signatures) -> None:
        # the parent checks priorities row by row in Python; ours are in range by construction
        signatures = np.array(signatures, dtype=get_sig_dtype(self.config.hash_config))
        signatures["priority"] = -signatures["priority"].astype(np.int32) & 0xFFFF
        order = np.lexsort((signatures["doc"], signatures["priority"], signatures["hash"]))
        signatures = signatures[order]
        signatures["priority"] = -signatures["priority"].astype(np.int32) & 0xFFFF
        hashes_per_worker = self.config.hash_config.max // self.finder_workers
        left = 0
        for hash_i in range(self.finder_workers):
            right_hash = (hash_i + 1) * hashes_per_worker if hash_i != self.finder_workers - 1 else np.iinfo(np.uint64).max
            right = left + int(signatures["hash"][left:].searchsorted(right_hash, side="right"))
            with self.output_folder.open(f"{hash_i:04d}/{rank:05d}.c4_sig", mode="wb") as f:
                if right > left:
                    f.write(signatures[left:right].tobytes())
            left = right


class SpaceWordTokenizer(WordTokenizer):
    """Words for MinHash shingles: whitespace-separated (datatrove's own tokenizers need spaCy)."""

    def __init__(self):
        super().__init__("any")

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def minhash_config(ngrams: int):
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    # sha1: datatrove hands shingles to the hash as str, which the installed xxhash refuses
    return MinhashConfig(n_grams=ngrams, num_buckets=MINHASH_BUCKETS, hashes_per_bucket=MINHASH_HASHES_PER_BUCKET,
                         hash_config=HashConfig(precision=64, hash_fc="sha1"))
