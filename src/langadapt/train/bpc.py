"""Held-out bits per UTF-8 character: a loss that stays comparable when the tokenizer changes.

Each line of the held-out text is scored on its own, like the one-sentence documents the
stages train on: the boundary token training documents start with (``examples.boundary_id``:
BOS for tokenizers that add it, else EOS) followed by the line's tokens, every token predicted
(a line longer than ``seq_len`` tokens continues in further windows). The summed negative
log-likelihood, in bits, is divided by the number of characters of the lines. The number
depends neither on the tokenizer (a merged tokenizer that spends fewer tokens on the same text
is neither rewarded nor punished) nor on a stage's training ``seq_len``, so the values of all
stages of a run can be compared.

Held-out *documents* (``data.heldout.target_documents``) are scored whole, as a model reads a long
input: each document's tokens in windows of ``WINDOW`` tokens that overlap by half, every token
predicted once, with up to half a window of the earlier text as context (`bits_per_char_documents`).
"""

from __future__ import annotations

import math
from pathlib import Path

from langadapt.errors import DataError

WINDOW = 512
"""Tokens per scoring window (longer lines are split); one value for every stage."""
LOGITS_BUDGET = 128 * 2**20
"""Bytes of fp32 logits one scoring batch may hold (fewer rows per batch for long windows and large
vocabularies: 16 windows of 512 tokens over a 51k vocabulary would be 1.7 GB, twice with log-softmax)."""


def bits_per_char(model, tokenizer, text: str, *, seq_len: int = WINDOW, batch_size: int = 16) -> float:
    """Bits per UTF-8 character of the non-empty lines of ``text`` under ``model`` (lower is better)."""
    from langadapt.train.examples import boundary_id

    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("bits_per_char needs a non-empty text")
    start = boundary_id(tokenizer)
    width = max(2, seq_len) - 1
    pieces = []  # each line alone, in windows of ``width`` tokens after the boundary token
    for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]:
        pieces.extend(([start] + ids[i : i + width], len(ids[i : i + width])) for i in range(0, len(ids), width))
    return _nats(model, pieces, start, batch_size) / math.log(2) / sum(len(line) for line in lines)


def bits_per_char_documents(model, tokenizer, documents: list[str], *, window: int = WINDOW,
                             batch_size: int = 16) -> float:
    """Bits per UTF-8 character of ``documents``, each scored whole: its tokens (after the boundary token)
    in windows of ``window`` tokens that overlap by half, each token predicted once, with the earlier
    tokens of the window as its context."""
    from langadapt.train.examples import boundary_id

    docs = [d for d in documents if d.strip()]
    if not docs:
        raise ValueError("bits_per_char_documents needs a non-empty document")
    start = boundary_id(tokenizer)
    window = max(4, window)
    stride = window // 2
    pieces = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids = [start] + ids
        scored_to = 1  # ids[0] is the boundary: never a target
        begin = 0
        while scored_to < len(ids):
            end = min(begin + window, len(ids))
            pieces.append((ids[begin:end], end - scored_to))
            scored_to = end
            begin += stride
    return _nats(model, pieces, start, batch_size) / math.log(2) / sum(len(d) for d in docs)


def _nats(model, pieces: list[tuple[list[int], int]], pad: int, batch_size: int) -> float:
    """Summed negative log-likelihood (nats) of ``pieces``: (input ids, how many of its last tokens are
    scored, each predicted from the ids before it). Batches of similar lengths, little padding."""
    import torch

    pieces = sorted(pieces, key=lambda p: len(p[0]))
    device = next(model.parameters()).device
    row_bytes = 4 * _vocab_rows(model)
    was_training = model.training
    model.eval()
    total = 0.0
    b = 0
    try:
        with torch.no_grad():
            while b < len(pieces):
                longest = len(pieces[min(b + batch_size, len(pieces)) - 1][0])  # sorted: the batch's longest
                rows = max(1, min(batch_size, LOGITS_BUDGET // (longest * row_bytes)))
                chunk = pieces[b : b + rows]
                b += rows
                longest = max(len(w) for w, _ in chunk)
                input_ids = torch.full((len(chunk), longest), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), longest), dtype=torch.long)
                scored = torch.zeros((len(chunk), longest), dtype=torch.bool)
                for r, (w, n) in enumerate(chunk):
                    input_ids[r, : len(w)] = torch.tensor(w)
                    mask[r, : len(w)] = 1
                    scored[r, len(w) - n : len(w)] = True
                input_ids, mask, scored = input_ids.to(device), mask.to(device), scored.to(device)
                logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                nll = -logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                total += float((nll * scored[:, 1:]).sum().item())
    finally:
        if was_training:
            model.train()
    return total


def _vocab_rows(model) -> int:
    """Rows of the model's output head (the width of its logits)."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.get_text_config().vocab_size)


def read_heldout(recipe) -> dict[str, str | list[str]]:
    """The recipe's held-out texts: ``target`` and ``english`` (lines, as one text), ``target_documents`` and
    ``english_documents`` (lists of documents); keys absent when not set.

    Each file is read up to ``data.heldout.max_chars`` characters, cut at a line break (lines) or between
    documents inside that limit, so nothing is scored half; a dataset (``target``/``english``) gives the
    lines of its records' ``text_field`` up to that limit.
    """
    h = recipe.data.heldout
    out: dict[str, str | list[str]] = {}
    for key in ("target", "english"):
        path = getattr(h, key)
        if path is None:
            continue
        if isinstance(path, str):
            out[key] = read_text_prefix(recipe.resolve(path), h.max_chars)
        else:  # a dataset: the first records' text (a seeded sample with shuffle_buffer)
            from langadapt.data.hub import dataset_lines

            out[key] = "\n".join(dataset_lines(path, recipe.resolve(path.path), max_chars=h.max_chars,
                                               what=f"data.heldout.{key}", seed=recipe.seed))
    for key in ("target_documents", "english_documents"):
        path = getattr(h, key)
        if path is not None:
            out[key] = read_documents(recipe.resolve(path), h.max_chars)
    return out


def read_documents(path: str | Path, max_chars: int) -> list[str]:
    """Documents of a held-out file, up to ``max_chars`` characters in all (at least one): the ``text`` of
    each JSONL record, or the paragraphs of a text file (separated by blank lines, line breaks kept)."""
    import json

    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"held-out documents are not UTF-8 ({e.reason} at byte {e.start})", path=str(p)) from None
    except OSError as e:
        raise DataError(f"cannot read held-out documents: {e.strerror}", path=str(p)) from None
    if p.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise DataError("not a JSON object with a 'text' field", path=str(p), line=n) from None
            if isinstance(text, str) and text.strip():
                docs.append(text.strip())
    else:
        docs = ["\n".join(ln.strip() for ln in para.splitlines() if ln.strip())
                for para in raw.replace("\r\n", "\n").split("\n\n")]
        docs = [d for d in docs if d]
    out, used = [], 0
    for d in docs:
        if out and used + len(d) > max_chars:
            break
        out.append(d)
        used += len(d)
    if not out:
        raise DataError("held-out documents file holds no text", path=str(p))
    return out


def read_text_prefix(path: str | Path, max_chars: int) -> str:
    """Up to ``max_chars`` characters of a UTF-8 text file, ending at a line break when possible."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read(max_chars + 1)
    except UnicodeDecodeError as e:
        raise DataError(f"held-out text is not UTF-8 ({e.reason} at byte {e.start})", path=str(p)) from None
    except OSError as e:
        raise DataError(f"cannot read held-out text: {e.strerror}", path=str(p)) from None
    if len(text) > max_chars:
        text = text[:max_chars]
        cut = text.rfind("\n")
        if cut > max_chars // 2:
            text = text[:cut]
    text = "\n".join(line.strip() for line in text.splitlines() if line.strip())
    if not text:
        raise DataError("held-out text is empty", path=str(p))
    return text
