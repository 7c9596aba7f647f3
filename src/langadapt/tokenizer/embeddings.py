"""Grow the input embeddings and output head to the merged vocabulary and initialise the new rows.

``mean``: a new token's row is the mean of the base rows of the base tokens that spell it (for an
untied head, likewise from the head's rows), so a new Persian word starts where the base model's
reading of its bytes would put it; the mean is weighted very slightly by position (`position_weights`)
so that anagram pieces (ان / نا: 318 pairs among 20,000 pieces on Llama-2) start apart. ``plain``: the model's own initialisation of new rows (normal
with ``initializer_range``), as a plain ``resize_token_embeddings`` does - the paper's choice.
Rows without a spelling (padding up to a multiple, reserved ids, an added pad token) start as the
mean of all base rows. Existing rows are left bit-identical, which is checked.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Resized:
    old_rows: int
    new_rows: int
    tied: bool
    init: str


def _is_tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


RAMP = 0.1
"""Position weights of a spelling run from 1 - RAMP (first token) to 1 + RAMP (last), then sum to 1."""


def position_weights(n: int) -> list[float]:
    """Weights of the ``n`` tokens of a spelling: nearly equal, rising slightly from first to last, so
    two pieces spelled by the same tokens in another order (ان / نا) do not get the same row."""
    if n == 1:
        return [1.0]
    raw = [1 - RAMP + 2 * RAMP * k / (n - 1) for k in range(n)]
    return [w / sum(raw) for w in raw]


def mean_rows(weight, spellings: list[list[int]]):
    """One row per spelling: the position-weighted mean of ``weight``'s rows it lists (`position_weights`),
    all rows' mean for an empty one."""
    import torch

    w = weight.detach().float()
    flat = [i for s in spellings for i in s]
    out = torch.empty(len(spellings), w.shape[1])
    has = torch.tensor([bool(s) for s in spellings], dtype=torch.bool)
    if flat:
        offsets = torch.tensor([0] + [len(s) for s in spellings if s][:-1]).cumsum(0)
        weights = torch.tensor([x for s in spellings if s for x in position_weights(len(s))])
        out[has] = torch.nn.functional.embedding_bag(torch.tensor(flat), w, offsets, mode="sum",
                                                     per_sample_weights=weights)
    out[~has] = w.mean(0)
    return out.to(weight.dtype)


def resize_and_init(model, rows: int, spellings: dict[int, list[int]], *, init: str = "mean", seed: int = 0) -> Resized:
    """Resize ``model`` to ``rows`` embedding rows; ``spellings[id]`` = base ids spelling new token ``id``."""
    import torch

    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    if rows < old_rows:
        raise ValueError(f"cannot shrink the embeddings from {old_rows} to {rows} rows")
    tied = _is_tied(model)
    head = model.get_output_embeddings()
    old_in = emb.weight.detach().clone()
    old_out = None if tied or head is None else head.weight.detach().clone()
    old_bias = None if head is None or getattr(head, "bias", None) is None else head.bias.detach().clone()

    torch.manual_seed(seed)  # the `plain` rows come from the model's own random initialisation
    model.resize_token_embeddings(rows, mean_resizing=False)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    new_ids = list(range(old_rows, rows))
    with torch.no_grad():
        if init == "mean":
            spelled = [spellings.get(i, []) for i in new_ids]
            emb.weight[old_rows:] = mean_rows(old_in, spelled)
            if old_out is not None:
                head.weight[old_rows:] = mean_rows(old_out, spelled)
            if old_bias is not None:
                head.bias[old_rows:] = mean_rows(old_bias[:, None], spelled)[:, 0]
        elif init != "plain":
            raise ValueError(f"unknown init {init!r}")
        else:
            # Reserved/padding rows have no token; keep them harmless rather than random.
            blank = [i - old_rows for i in new_ids if not spellings.get(i)]
            if blank:
                emb.weight[[old_rows + b for b in blank]] = old_in.mean(0).to(emb.weight.dtype)
                if old_out is not None:
                    head.weight[[old_rows + b for b in blank]] = old_out.mean(0).to(head.weight.dtype)
    if not torch.equal(model.get_input_embeddings().weight[:old_rows], old_in):
        raise RuntimeError("resizing changed existing embedding rows")
    if old_out is not None and not torch.equal(model.get_output_embeddings().weight[:old_rows], old_out):
        raise RuntimeError("resizing changed existing output-head rows")
    model.config.vocab_size = rows
    return Resized(old_rows, rows, tied, init)
