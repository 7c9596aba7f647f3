"""Turning tokenized examples into training rows: packed fixed-length blocks, or padded rows.

Packing concatenates documents into ``seq_len`` blocks with no padding waste. Each document's
``position_ids`` restart at 0, which transformers (5.x) reads as "packed sequences" when neither
an attention mask nor a KV cache is given (the core passes ``use_cache=False``): the causal
mask becomes block-diagonal for the eager/SDPA/flex
attention paths of the models built on ``masking_utils`` (Llama, Mistral, Qwen, GPT-2, ...),
and flash-attention 2 uses the variable-length kernel. Models whose attention ignores
``position_ids`` for masking (older remote-code models) attend across document boundaries
inside a block; their loss is still never computed across a boundary because the label of
each document's first token is masked.

A document longer than ``seq_len`` continues in the next block (positions restart there).

``pack_whole`` packs without splitting: every example lies inside one block (instruction tuning,
where a conversation cut in two would train its tail without its prompt). Blocks are filled best
fit, longest examples first, and padded at the end; padding carries no loss.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class Rows:
    """Training rows as tensors: ``input_ids``, ``labels``, ``position_ids`` (all ``[n, seq_len]``),
    and for padded rows an ``attention_mask``. ``tokens`` counts non-padding tokens per row."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    tokens: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model inputs for rows ``index`` (padded rows trimmed to the longest one)."""
        out = {"input_ids": self.input_ids[index].long(), "labels": self.labels[index].long()}
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids[index].long()
        if self.attention_mask is not None:
            mask = self.attention_mask[index]
            width = int(mask.sum(dim=1).max().item()) if len(index) else 0
            out = {k: v[:, :width] for k, v in out.items()}
            out["attention_mask"] = mask[:, :width].long()
        return out


def _check(example: dict, i: int) -> tuple[list[int], list[int]]:
    ids = list(example["input_ids"])
    labels = list(example.get("labels", ids))
    if len(ids) != len(labels):
        raise ValueError(f"example {i}: input_ids has {len(ids)} tokens but labels has {len(labels)}")
    return ids, labels


def pack(examples: Sequence[dict], seq_len: int, pad_id: int, *, across: bool = False) -> Rows:
    """Pack examples into ``seq_len`` blocks; document starts reset ``position_ids`` to 0.

    The label of each document's first token is masked, so no token is ever predicted from
    another document. The final block is padded (padding has label -100 and its own positions).
    ``across``: a plain concatenation instead (positions run from each block start, attention and
    prediction cross document boundaries; CLA's ``group_texts``).
    """
    ids_out: list[int] = []
    labels_out: list[int] = []
    pos_out: list[int] = []
    for i, ex in enumerate(examples):
        ids, labels = _check(ex, i)
        if not ids:
            continue
        if not across:
            labels = [IGNORE] + labels[1:]
        start = 0
        while start < len(ids):
            room = seq_len - len(ids_out) % seq_len
            piece = ids[start : start + room]
            first = seq_len - room if across else 0  # across: positions continue from the block's start
            ids_out.extend(piece)
            labels_out.extend(labels[start : start + len(piece)])
            pos_out.extend(range(first, first + len(piece)))
            start += len(piece)
    if not ids_out:
        raise ValueError("no tokens to train on (every example is empty)")
    real = len(ids_out)
    tail = -len(ids_out) % seq_len
    ids_out.extend([pad_id] * tail)
    labels_out.extend([IGNORE] * tail)
    pos_out.extend(range(tail))
    n = len(ids_out) // seq_len
    tokens = torch.full((n,), seq_len, dtype=torch.int64)
    tokens[-1] = seq_len - tail if real else 0
    return Rows(
        input_ids=torch.tensor(ids_out, dtype=torch.int32).view(n, seq_len),
        labels=torch.tensor(labels_out, dtype=torch.int32).view(n, seq_len),
        position_ids=torch.tensor(pos_out, dtype=torch.int32).view(n, seq_len),
        attention_mask=None,
        tokens=tokens,
    )


def pack_whole(examples: Sequence[dict], seq_len: int, pad_id: int) -> tuple[Rows, int]:
    """Pack whole examples into ``seq_len`` blocks, none split across blocks; returns (rows, truncated count).

    An example longer than ``seq_len`` is truncated to it and fills a block alone. Positions restart
    and the first label is masked per example, as in ``pack``; each block is padded at its end.
    """
    items: list[tuple[list[int], list[int]]] = []
    truncated = 0
    for i, ex in enumerate(examples):
        ids, labels = _check(ex, i)
        if not ids:
            continue
        if len(ids) > seq_len:
            truncated += 1
            ids, labels = ids[:seq_len], labels[:seq_len]
        items.append((ids, [IGNORE] + labels[1:]))
    if not items:
        raise ValueError("no tokens to train on (every example is empty)")
    # Best fit decreasing: each example goes to the open block with the least room that still fits it.
    blocks: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, block), sorted
    for k in sorted(range(len(items)), key=lambda k: -len(items[k][0])):
        n = len(items[k][0])
        j = bisect_left(rooms, (n, -1))
        if j == len(rooms):
            block, room = len(blocks), seq_len
            blocks.append([])
        else:
            room, block = rooms.pop(j)
        blocks[block].append(k)
        if room - n > 0:
            insort(rooms, (room - n, block))
    input_ids = torch.full((len(blocks), seq_len), pad_id, dtype=torch.int32)
    labels_t = torch.full((len(blocks), seq_len), IGNORE, dtype=torch.int32)
    positions = torch.zeros((len(blocks), seq_len), dtype=torch.int32)
    tokens = torch.zeros(len(blocks), dtype=torch.int64)
    for row, members in enumerate(blocks):
        at = 0
        for k in sorted(members):  # input order inside a block
            ids, labels = items[k]
            input_ids[row, at : at + len(ids)] = torch.tensor(ids, dtype=torch.int32)
            labels_t[row, at : at + len(ids)] = torch.tensor(labels, dtype=torch.int32)
            positions[row, at : at + len(ids)] = torch.arange(len(ids), dtype=torch.int32)
            at += len(ids)
        positions[row, at:] = torch.arange(seq_len - at, dtype=torch.int32)
        tokens[row] = at
    return Rows(input_ids, labels_t, positions, None, tokens), truncated


def pad(examples: Sequence[dict], seq_len: int, pad_id: int) -> tuple[Rows, int]:
    """One row per example, truncated to ``seq_len`` and right-padded; returns (rows, truncated count)."""
    kept = [(i, *_check(ex, i)) for i, ex in enumerate(examples)]
    kept = [(i, ids, labels) for i, ids, labels in kept if ids]
    if not kept:
        raise ValueError("no tokens to train on (every example is empty)")
    n = len(kept)
    input_ids = torch.full((n, seq_len), pad_id, dtype=torch.int32)
    labels_t = torch.full((n, seq_len), IGNORE, dtype=torch.int32)
    mask = torch.zeros((n, seq_len), dtype=torch.int8)
    truncated = 0
    for row, (_, ids, labels) in enumerate(kept):
        if len(ids) > seq_len:
            truncated += 1
            ids, labels = ids[:seq_len], labels[:seq_len]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        labels_t[row, : len(ids)] = torch.tensor(labels, dtype=torch.int32)
        mask[row, : len(ids)] = 1
    rows = Rows(input_ids, labels_t, None, mask, mask.sum(dim=1).to(torch.int64))
    return rows, truncated
