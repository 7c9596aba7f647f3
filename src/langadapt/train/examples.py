"""Training examples for the language-modelling stages: clean sentences and bilingual pairs.

Every document is encoded the same way, here and in held-out bits per character: a boundary
token, the text's tokens, then EOS. The boundary is BOS for tokenizers that put BOS in front of
text by themselves (Llama-2, Mistral), else EOS ("the previous document ended"), which keeps
chat-template tokens such as SmolLM2's ``<|im_start|>`` out of plain-text training. The packer
masks the boundary's own label, so the text's first token is predicted from the boundary only.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from langadapt.errors import DataError, LangadaptError


def boundary_id(tokenizer) -> int:
    """The token that starts every document and held-out window (see the module docstring)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None:
        probe = tokenizer("a")["input_ids"]
        if probe and probe[0] == bos:
            return int(bos)
    if eos is not None:
        return int(eos)
    if bos is not None:
        return int(bos)
    raise LangadaptError("the tokenizer has neither a BOS nor an EOS token to separate documents with")


def encode(tokenizer, text: str, start: int | None = None) -> list[int]:
    """``[boundary] + tokens(text) + [EOS]``."""
    start = boundary_id(tokenizer) if start is None else start
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else start
    return [start] + tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]


def document_examples(tokenizer, texts: Sequence[str]) -> list[dict]:
    """One example per text, loss on every token."""
    start = boundary_id(tokenizer)
    out = []
    for text in texts:
        ids = encode(tokenizer, text, start)
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def bilingual_texts(pairs, *, order: str = "target_first", separator: str = "\n", reverse_share: float = 0.0,
                    seed: int = 0) -> list[str]:
    """Each pair as one text: the first side, ``separator``, the second side (paper 4.2.1: a
    target-language sentence followed by its English translation).

    ``order`` picks the usual first side; exactly ``round(reverse_share * len(pairs))`` pairs,
    chosen with ``seed``, use the other order.
    """
    flipped = set(random.Random(seed).sample(range(len(pairs)), round(reverse_share * len(pairs))))
    texts = []
    for i, p in enumerate(pairs):
        target_first = (order == "target_first") != (i in flipped)
        first, second = (p.target, p.english) if target_first else (p.english, p.target)
        texts.append(first + separator + second)
    return texts


def bilingual_examples(tokenizer, pairs, settings, seed: int = 0) -> list[dict]:
    """Bilingual examples from ``pairs`` with a recipe ``BilingualSettings``: one example per pair,
    loss on the whole sequence (both sides and the separator)."""
    texts = bilingual_texts(pairs, order=settings.order, separator=settings.separator,
                            reverse_share=settings.reverse_share, seed=seed)
    return document_examples(tokenizer, texts)


def iter_documents(files: list[Path]) -> Iterator[str]:
    """The texts of the clean stage's shards (``RunLayout.clean_shards``: documents, or sentences in older
    runs) one at a time, shard by shard (memory stays flat)."""
    for f in files:
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(f).iter_batches(columns=["text"]):
                yield from (str(t) for t in batch.column(0).to_pylist() if t)
            continue
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise DataError("not a clean-stage record ({\"text\": ...})", path=str(f), line=n) from None
                if text:
                    yield text

