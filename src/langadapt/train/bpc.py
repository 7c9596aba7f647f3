"""Held-out bits per UTF-8 character: a loss that stays comparable when the tokenizer changes.

Each line of the held-out text is scored on its own, like the one-sentence documents the
stages train on: the boundary token training documents start with (``examples.boundary_id``:
BOS for tokenizers that add it, else EOS) followed by the line's tokens, every token predicted
(a line longer than ``seq_len`` tokens continues in further windows). The summed negative
log-likelihood, in bits, is divided by the number of characters of the lines. The number
depends neither on the tokenizer (a merged tokenizer that spends fewer tokens on the same text
is neither rewarded nor punished) nor on a stage's training ``seq_len``, so the values of all
stages of a run can be compared.
"""

from __future__ import annotations

import math
from pathlib import Path

from langadapt.errors import DataError

WINDOW = 512
"""Tokens per scoring window (longer lines are split); one value for every stage."""


def bits_per_char(model, tokenizer, text: str, *, seq_len: int = WINDOW, batch_size: int = 16) -> float:
    """Bits per UTF-8 character of the non-empty lines of ``text`` under ``model`` (lower is better)."""
    import torch

    from langadapt.train.examples import boundary_id

    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("bits_per_char needs a non-empty text")
    start = boundary_id(tokenizer)
    width = max(2, seq_len) - 1
    windows = []
    for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]:
        windows.extend([start] + ids[i : i + width] for i in range(0, len(ids), width))
    windows.sort(key=len)  # similar lengths share a batch: little padding
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for b in range(0, len(windows), batch_size):
                chunk = windows[b : b + batch_size]
                longest = max(len(w) for w in chunk)
                input_ids = torch.full((len(chunk), longest), start, dtype=torch.long)
                mask = torch.zeros((len(chunk), longest), dtype=torch.long)
                for r, w in enumerate(chunk):
                    input_ids[r, : len(w)] = torch.tensor(w)
                    mask[r, : len(w)] = 1
                input_ids, mask = input_ids.to(device), mask.to(device)
                logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                target = input_ids[:, 1:]
                nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                total += float((nll * mask[:, 1:]).sum().item())
    finally:
        if was_training:
            model.train()
    return total / math.log(2) / sum(len(line) for line in lines)


def read_heldout(recipe) -> dict[str, str]:
    """The recipe's held-out texts, ``{"target": ..., "english": ...}`` (keys absent when not set).

    Each file is read up to ``data.heldout.max_chars`` characters, cut at the last line break
    inside that limit so no sentence is scored half; a dataset gives the lines of its records'
    ``text_field`` up to that limit.
    """
    h = recipe.data.heldout
    out: dict[str, str] = {}
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
