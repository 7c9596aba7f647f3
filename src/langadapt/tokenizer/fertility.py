"""Fertility (tokens per word, tokens per character) and throughput of a tokenizer on some text.

Words are whitespace-separated (a Persian word written with a ZWNJ inside counts once); characters
are all characters of the text, spaces included. Special tokens (BOS) are not counted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from langadapt.errors import DataError


def read_lines(path: str | Path, max_chars: int | None = None, *, field: str = "text") -> list[str]:
    """Non-empty lines of a text file (or the ``field`` of each JSONL line), up to ``max_chars`` characters."""
    path = Path(path)
    lines: list[str] = []
    total = 0
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            if path.suffix == ".jsonl":
                try:
                    line = str(json.loads(line)[field]).strip()
                except (ValueError, KeyError, TypeError):
                    raise DataError(f"not a JSON object with a '{field}' field", path=str(path), line=n) from None
            if max_chars is not None and total + len(line) > max_chars and lines:
                break
            lines.append(line)
            total += len(line)
    return lines


def fertility(tokenizer, lines: list[str]) -> dict:
    """Tokens per word and per character of a `tokenizers.Tokenizer` (or HF tokenizer) on ``lines``."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    tokens = sum(len(e.ids) for e in backend.encode_batch(lines, add_special_tokens=False))
    words = sum(len(line.split()) for line in lines)
    chars = sum(len(line) for line in lines)
    return {
        "tokens": tokens,
        "words": words,
        "characters": chars,
        "tokens_per_word": round(tokens / words, 4) if words else None,
        "tokens_per_char": round(tokens / chars, 4) if chars else None,
    }


def throughput(tokenizer, lines: list[str]) -> float:
    """MB of UTF-8 text per CPU second, one line at a time, in one pass.

    CPU time of this process rather than wall-clock time, so that other work on the machine
    distorts less; one pass, because tokenizers caches the segmentation of words it has seen and
    repeating the same lines would measure the cache.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    size = sum(len(line.encode("utf-8")) for line in lines)
    start = time.process_time()
    for line in lines:
        backend.encode(line, add_special_tokens=False)
    return size / max(time.process_time() - start, 1e-9) / 1e6
