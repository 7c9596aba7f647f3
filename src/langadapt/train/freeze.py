"""Which tensors train in which stage: one component every stage (and `plan`) uses.

Policies (set per stage in the recipe):
- embeddings ``all``: every row of the input embeddings and output head trains (the paper);
- embeddings ``new``: only rows added by the tokenizer merge train; old rows stay bit-identical
  because they are not parameters of the optimizer at all (PEFT trainable tokens hold a delta
  for the new rows only, so there is no optimizer state for frozen rows);
- embeddings ``none``: embeddings and head frozen;
- optional LoRA on every linear layer of every transformer block, found from the model.

Tied input/output embeddings are one tensor and are counted once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

EmbeddingRows = Literal["all", "new", "none"]


@dataclass
class ParamCounts:
    """Total and trainable parameter counts, with where each trainable count comes from."""

    total: int
    trainable: int
    lines: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    # GPT-2 style models use transformers' Conv1D (a linear layer with transposed weight).
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def lora_targets(model: nn.Module) -> list[str]:
    """Names (last path component) of every linear layer inside the transformer blocks.

    Discovered from the model: every linear module except the output head (and anything
    outside the repeated blocks, such as a vision tower's projector, is excluded because it
    has no layer index in its path).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: OrderedDict[str, None] = OrderedDict()
    for name, module in model.named_modules():
        if module is head or not _is_linear(module):
            continue
        parts = name.split(".")
        if not any(p.isdigit() for p in parts):
            continue
        names[parts[-1]] = None
    if not names:
        raise ValueError(f"no linear layers found inside the transformer blocks of {type(model).__name__}")
    return list(names)


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = module.weight  # Conv1D: (in, out)
    return int(w.shape[0]), int(w.shape[1])


def _embedding_modules(model: nn.Module) -> tuple[nn.Module, nn.Module | None, bool, str, str | None]:
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    names = {id(m): n for n, m in model.named_modules()}
    emb_name = names[id(emb)].split(".")[-1]
    head_name = names[id(head)].split(".")[-1] if head is not None else None
    return emb, head, tied, emb_name, head_name


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) over unique tensors; PEFT trainable-token deltas are not added to the total
    because they re-parameterise rows that are already counted."""
    total = trainable = 0
    for name, p in model.named_parameters():  # named_parameters() yields a tied tensor once
        if p.requires_grad:
            trainable += p.numel()
        if "trainable_tokens_delta" not in name:
            total += p.numel()
    return total, trainable


def apply_policy(
    model: nn.Module,
    *,
    embeddings: EmbeddingRows,
    lora=None,
    base_vocab: int | None = None,
    seed: int | None = None,
) -> tuple[nn.Module, ParamCounts]:
    """Freeze ``model`` for a stage and return the (possibly PEFT-wrapped) model and its counts.

    ``lora`` is a recipe ``LoraSettings`` or None. ``base_vocab`` is the number of rows the base
    model had before the merge (rows from it onward are new); needed for ``embeddings='new'``.
    ``seed`` makes the random initialisation of new LoRA matrices reproducible (the global RNG
    is left as it was). Works on the meta device, so `plan` can call it without weights.
    """
    emb, head, tied, emb_name, head_name = _embedding_modules(model)
    hidden = emb.weight.shape[1]
    rows = emb.weight.shape[0]
    lines: list[tuple[str, int, str]] = []

    for p in model.parameters():
        p.requires_grad_(False)

    new_ids: list[int] = []
    if embeddings == "new":
        if base_vocab is None:
            raise ValueError("embeddings='new' needs base_vocab (rows before the merge)")
        new_ids = list(range(base_vocab, rows))
        if not new_ids:
            raise ValueError(f"embeddings='new' but the model has no rows beyond the base vocabulary ({rows})")
    token_indices: dict[str, list[int]] = {}
    if new_ids:
        token_indices[emb_name] = new_ids
        if head is not None and not tied:
            token_indices[head_name] = new_ids

    if lora is not None:
        from peft import LoraConfig, get_peft_model

        targets = lora_targets(model) if lora.targets == "all-linear" else list(lora.targets)
        shapes: OrderedDict[str, list[tuple[int, int]]] = OrderedDict((t, []) for t in targets)
        for name, module in model.named_modules():
            last = name.split(".")[-1]
            if last in shapes and _is_linear(module) and module is not head:
                shapes[last].append(_linear_shape(module))
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets,
            trainable_token_indices=token_indices or None,
            bias="none",
        )
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = get_peft_model(model, config)
        for t, shp in shapes.items():
            n = sum(lora.r * (i + o) for i, o in shp)
            if shp:
                i, o = shp[0]
                lines.append((f"LoRA {t}", n, f"A {lora.r}x{i} + B {o}x{lora.r} = {lora.r * (i + o):,} x {len(shp)} layers"))
    elif token_indices:
        from peft import TrainableTokensConfig, get_peft_model

        config = TrainableTokensConfig(target_modules=list(token_indices), token_indices=new_ids)
        model = get_peft_model(model, config)

    if embeddings == "all":
        emb.weight.requires_grad_(True)
        if head is not None:
            head.weight.requires_grad_(True)
        lines.insert(0, ("input embeddings", rows * hidden, f"{rows:,} rows x {hidden} (all rows)"))
        if tied:
            lines.insert(1, ("output head", 0, "tied to the input embeddings, counted once"))
        elif head is not None:
            hrows = head.weight.shape[0]
            lines.insert(1, ("output head", hrows * hidden, f"{hrows:,} rows x {hidden} (all rows)"))
    elif embeddings == "new":
        n = len(new_ids)
        lines.insert(0, ("input embeddings (new rows)", n * hidden, f"{n:,} new rows x {hidden}; {base_vocab:,} base rows frozen"))
        if tied:
            lines.insert(1, ("output head", 0, "tied to the input embeddings, counted once"))
        else:
            lines.insert(1, ("output head (new rows)", n * hidden, f"{n:,} new rows x {hidden}"))

    total, trainable = count_parameters(model)
    return model, ParamCounts(total=total, trainable=trainable, lines=lines)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that train (for checks and checkpoints), keyed by parameter name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def stage_policy(recipe, stage: str, step: str | None = None) -> tuple[EmbeddingRows, object | None]:
    """(embedding rows that train, LoRA settings or None) for a training stage of a recipe.

    ``step`` picks the align sub-step ('monolingual' or 'bilingual'). Stages, `plan` and the
    tests all ask here, so the counts `plan` prints are the counts training uses.
    """
    if stage == "align":
        settings = getattr(recipe.align, step or "monolingual")
        return settings.train_rows, None
    if stage == "pretrain":
        return recipe.pretrain.train_rows, recipe.pretrain.lora
    if stage == "sft":
        sft = recipe.sft
        rows = sft.train_rows
        if rows == "new" and sft.start_from == "base":
            rows = "all"  # the base vocabulary has no new rows; the paper's noLoRA trains them all
        return rows, sft.lora
    raise ValueError(f"stage '{stage}' does not train")
