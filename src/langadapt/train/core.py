"""The training loop every training stage (align, pretrain, sft) calls.

Public entry point (stable; later additions are keyword arguments only)::

    train_model(model, tokenizer, examples, settings, out_dir, *, resume=False, pack=True,
                heldout=None, log=None, name="train", seed=0, bpc_start=None, callback=None,
                report_to=(), project=None)
        -> TrainResult

- ``model``: already frozen by ``langadapt.train.freeze.apply_policy`` (a plain transformers
  model or a ``PeftModel``). Trainable tensors are moved to fp32 (mixed precision keeps fp32
  master weights); frozen ones keep the dtype they were loaded in.
- ``examples``: a ``langadapt.train.store.TokenStore`` (documents tokenized to disk: corpora of
  any size), or a sequence of ``{"input_ids": [...], "labels": [...]}`` dicts, one per
  document or example (``labels`` -100 = no loss; absent = same as ``input_ids``). Special
  tokens (BOS/EOS) are the caller's choice; the core adds none.
  ``pack=True`` packs them into ``settings.seq_len`` blocks (see ``packing.py``: positions
  restart per document so attention does not cross documents on models built on
  transformers' masking utilities, and the first token of each document is never a target).
  ``pack=False`` gives one row per example, truncated to ``seq_len`` and right-padded
  (each micro-batch trimmed to its longest row). ``pack="whole"`` packs without splitting an
  example across blocks (``packing.pack_whole``; instruction tuning).
- ``settings``: a recipe ``TrainSettings`` (or a subclass): ``max_steps`` (else ``epochs``
  passes over the rows), ``batch_size`` (rows per micro-batch per process), ``grad_accum``,
  ``seq_len``, ``lr``, ``schedule`` (cosine/linear/constant, all with linear warm-up over
  ``warmup_ratio`` of the steps), ``weight_decay`` (matrices only), ``max_grad_norm``,
  ``precision`` (auto: fp32 on CPU, bf16 on a GPU that supports it, else fp16),
  ``save_every``, ``eval_every``, ``log_every``, ``max_examples`` (first N examples), and the fast
  paths below.
- ``out_dir``: receives ``checkpoints/<name>/step-N/`` (``model/`` = ``save_pretrained``
  folder of the model or PEFT adapter, plus tokenizer; ``state/`` = optimizer, scheduler and
  per-process RNG via ``Accelerator.save_state``; ``trainer_state.json`` = data position and
  history), built under ``.tmp-step-N`` and renamed when complete, only the newest kept;
  ``metrics.jsonl`` (one row per logged step: loss, lr, grad norm, tokens/s, memory);
  ``bpc.json``; ``tensorboard/<name>/`` with ``report_to=["tensorboard"]``.
- ``resume=True``: continue from the newest complete checkpoint of ``name`` (none: start
  fresh). Data order, RNG, optimizer and schedule are restored, so a killed and resumed run
  ends with the same weights as an uninterrupted one. ``resume=False`` deletes old ones.
- ``heldout``: ``{"target": text, "english": text}`` (either key optional): bits per
  character at the start, every ``eval_every`` steps and at the end; ``bpc_start`` supplies
  already-measured start values (same model, e.g. the previous sub-step's end) to skip one
  evaluation. Written to ``out_dir/bpc.json`` as ``{"target": {"start", "end", "steps",
  "<name>": {"start", "end"}}, ...}``, merged across calls with different ``name``: ``start``
  comes from the first call, ``end`` from the last (``steps`` entries carry their ``name``).
- ``log``: called with human-readable lines (default: ``print``); ``callback(step, metrics)``
  after every optimizer step (tests use it to kill a run at a chosen step).
- ``report_to``: accelerate trackers (the recipe's ``report_to``: tensorboard, wandb, mlflow, ...) that
  receive each logged step's figures and the held-out bits per character, one tracker run per call
  named ``name`` in project ``project`` (the recipe's name); see ``tracking.py``. A tracker whose
  package is missing is refused before anything else happens.
- ``seed``: seeds torch/numpy/random and the data order.
- A NaN or infinite loss, or gradient (except the steps fp16's loss scaler skips), stops training with
  ``DivergedError`` (one line): at the first logged step that shows it, and before any checkpoint, which
  also requires finite trained weights; nothing of a diverged run is saved.

Works unchanged under ``accelerate launch`` (DDP, FSDP, DeepSpeed): every process builds the
same rows and takes its own slice of each global batch; every predicted token weighs the same whichever
process it falls in. Without a GPU, FSDP and DeepSpeed configs still get their engine (``sharding.py``),
so tests/test_sharded.py runs FSDP2 and ZeRO-2 on two CPU processes.

Fast paths (``settings``; none changes the computation beyond floating-point rounding):
``fused_loss`` (on: the head and cross-entropy run ``loss_chunk`` tokens at a time and only on tokens
with a target, see ``loss.py``; models it does not know, FSDP and ZeRO-3 keep the plain loss),
``attention`` (kernel choice), ``gradient_checkpointing``, ``fused_optimizer`` (fused AdamW on a GPU),
``compile`` (``torch.compile`` per transformer block). Always on, unless compiled or sharded: LoRA dropout
on the CPU keeps a one-byte mask instead of two float copies of its input (``activations.py``; the same
bits). The loop itself never waits for the device:
token counts come from the host copy of each batch, and logged losses and gradient norms are copied
back asynchronously and written one logged step later on a GPU (``callback`` then sees the step's
metrics without ``loss`` until they arrive; on the CPU they are immediate).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langadapt.errors import DivergedError, LangadaptError
from langadapt.layout import BPC
from langadapt.train import sharding
from langadapt.train.checkpoint import Checkpoints, last_checkpoint, load_trained_weights, save_model  # noqa: F401
from langadapt.train.metrics import (DIVERGED_HINT, HeldOut, MetricsLog, Totals, describe_bpc, elapsed,  # noqa: F401
                                     memory_mb, merge_bpc)


@dataclass
class TrainResult:
    """What a call to ``train_model`` produced."""

    model: Any  # the trained model, unwrapped from any distributed wrapper (still PEFT if it was); under FSDP
    # gathered from the shards into a plain copy on the CPU of every process (train/sharding.py)
    steps: int
    final_loss: float | None
    tokens_per_s: float
    tokens: int = 0  # training tokens seen (all processes)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the training steps, all threads of this process (contention-proof)
    bpc: dict = field(default_factory=dict)  # {"target": {"start", "end", "steps": [...]}, ...}
    trainable: int = 0
    total: int = 0
    rows: int = 0  # packed blocks or padded rows
    truncated: int = 0  # examples cut to seq_len (pack=False only)
    resumed_from: int | None = None
    checkpoint: Path | None = None

    def summary(self) -> dict:
        """The JSON-friendly figures a stage records in its summary (no model, no paths)."""
        return {
            "rows": self.rows,
            "steps": self.steps,
            "tokens": self.tokens,
            "final_loss": self.final_loss,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "cpu_seconds": round(self.cpu_seconds, 1),
            "bpc": {k: {"start": v["start"], "end": v["end"]} for k, v in self.bpc.items()},
        }


def resolve_precision(precision: str) -> str:
    """The precision a run uses: 'auto' is fp32 on CPU and bf16 (else fp16) on a GPU."""
    import torch

    if precision == "auto":
        if not torch.cuda.is_available():
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not torch.cuda.is_available():
        raise LangadaptError("precision fp16 needs a GPU; use fp32 or bf16 (or auto) on a CPU")
    return precision


def load_dtype(precision: str):
    """The dtype to load a model in for ``precision`` (frozen weights stay in it; trainable ones go to fp32)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision)]


# --------------------------------------------------------------------------- parts of the loop


def _make_accelerator(precision: str, grad_accum: int, log_with: list | None = None):
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # Accelerator keeps process-wide state; a second call in one process (align's two steps,
    # tests) may need another precision or accumulation. The process group itself is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    cpu = not torch.cuda.is_available()
    # accelerate takes FSDP and DeepSpeed settings on GPUs only (plain data parallel on the CPU otherwise)
    plugins = sharding.cpu_plugins() if cpu else {}
    # cpu=True on a machine without a GPU makes `accelerate launch` (torchrun) processes use gloo.
    accelerator = Accelerator(mixed_precision=mp, gradient_accumulation_steps=grad_accum, cpu=cpu,
                              log_with=log_with or None, **plugins)
    sharding.enable(accelerator, plugins)
    return accelerator


def lr_note(settings) -> str:
    """A log fragment naming the embeddings' own learning rate, when they have one."""
    lr = settings.embedding_learning_rate()
    return f", embeddings/head at lr {lr:.2e}" if lr is not None else ""


def embedding_parameters(model) -> set[int]:
    """``id`` of every tensor of the input embeddings and the output head (PEFT copies and deltas included)."""
    ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            ids |= {id(p) for p in module.parameters()}
    return ids


def _optimizer(model, settings, device):
    """AdamW over the trainable tensors only (frozen rows behind PEFT trainable tokens have no state).

    Matrices decay, vectors do not; with ``embedding_lr`` the embeddings and head form groups of their
    own at that rate (the schedule scales every group alike), marked ``embeddings`` for the log.
    """
    import torch

    emb_lr = settings.embedding_learning_rate() if hasattr(settings, "embedding_learning_rate") else None
    emb = embedding_parameters(model) if emb_lr is not None else set()
    parts: dict[tuple[bool, bool], list] = {}
    for _, p in model.named_parameters():
        if p.requires_grad:
            parts.setdefault((id(p) in emb, p.ndim >= 2), []).append(p)
    groups = []
    for is_emb in (False, True):
        for decays in (True, False):
            params = parts.get((is_emb, decays))
            if params or (not is_emb and decays):
                group = {"params": params or [], "weight_decay": settings.weight_decay if decays else 0.0}
                if is_emb:
                    group.update(lr=emb_lr, embeddings=True)
                groups.append(group)
    if device.type == "cuda" and getattr(settings, "fused_optimizer", False):
        return torch.optim.AdamW(groups, lr=settings.lr, fused=True)
    return torch.optim.AdamW(groups, lr=settings.lr, foreach=False)


def _fast_paths(model, settings, accelerator, say, name: str):
    """Switch on the recipe's fast paths; returns (functions that undo them, whether the fused loss is on, the
    LoRA dropout plan that makes micro-batches draw a step's noise as one batch would, or None)."""
    from accelerate.utils import DistributedType

    from langadapt.train import activations
    from langadapt.train import loss as fused

    lm = fused.causal_lm_of(model)
    undo: list[Callable[[], None]] = []
    plan = None
    attention = getattr(settings, "attention", "auto")
    if attention != "auto" and hasattr(lm, "set_attn_implementation"):
        try:
            lm.set_attn_implementation(attention)
        except (ImportError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LangadaptError(f"attention: {attention} is not available here ({first}); use auto or sdpa") from None
    if getattr(settings, "gradient_checkpointing", False):
        if not getattr(lm, "supports_gradient_checkpointing", False):
            raise LangadaptError(f"gradient_checkpointing: {type(lm).__name__} does not support it; set it to false")
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        undo.append(lm.gradient_checkpointing_disable)
    if getattr(settings, "compile", False):
        blocks = [m for m in lm.modules() if type(m).__name__.endswith("DecoderLayer")]
        for block in blocks:
            block.compile()
        undo.append(lambda: [setattr(b, "_compiled_call_impl", None) for b in blocks])
    if not getattr(settings, "compile", False) and accelerator.distributed_type not in (DistributedType.FSDP,
                                                                                      DistributedType.DEEPSPEED):
        # LoRA dropout keeping a one-byte mask instead of two float copies of its input (CPU), drawn per step
        # so that the split into micro-batches does not change it; SiLU MLPs recomputing their activation
        # in backward (the same numbers either way)
        plan = activations.StepDropout()
        undo += [activations.install(lm, plan), plan.close]
    use_fused = False
    if getattr(settings, "fused_loss", False):
        kind = accelerator.distributed_type
        # checked first: why_not reads the head's weight, which a sharded model holds only in pieces
        if kind == DistributedType.FSDP:
            reason = "FSDP shards the head's weight"
        elif kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
            reason = "ZeRO-3 shards the head's weight"
        else:
            reason = fused.why_not(model)
        if reason is None:
            undo.append(fused.install(model, settings.loss_chunk))
            use_fused = True
        else:
            say(f"{name}: plain loss over the full logits: {reason}")
    return undo, use_fused, plan


def _scheduler(optimizer, settings, total_steps: int):
    from transformers import get_scheduler

    warmup = math.ceil(settings.warmup_ratio * total_steps)
    kind = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[settings.schedule]
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


class _Order:
    """Which row each global position reads: a fresh seeded permutation per pass over the rows."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def rows(self, start: int, count: int):
        import torch

        out = []
        for k in range(start, start + count):
            epoch, i = divmod(k, self.n)
            if epoch not in self._cache:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._cache = {epoch: torch.randperm(self.n, generator=g)}
            out.append(int(self._cache[epoch][i]))
        return torch.tensor(out, dtype=torch.long)


# --------------------------------------------------------------------------- the loop


def _rows(examples, settings, pack: bool | str, pad_id: int) -> tuple[Any, int, int]:
    """The training rows for ``examples``, how many examples were cut to ``seq_len``, and how many
    examples were used."""
    from langadapt.train import packing
    from langadapt.train.store import TokenStore

    across = getattr(settings, "pack_across_documents", False)
    if isinstance(examples, TokenStore):  # built with max_examples applied; packed by construction
        if pack is not True:
            raise ValueError("a TokenStore serves packed rows only (pack=True)")
        return examples.rows(settings.seq_len, pad_id, across=across), 0, examples.documents
    if settings.max_examples is not None:
        examples = examples[: settings.max_examples]
    if pack == "whole":
        return *packing.pack_whole(examples, settings.seq_len, pad_id), len(examples)
    if pack:
        return packing.pack(examples, settings.seq_len, pad_id, across=across), 0, len(examples)
    return *packing.pad(examples, settings.seq_len, pad_id), len(examples)


def train_model(
    model,
    tokenizer,
    examples: Sequence[dict],
    settings,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    pack: bool | str = True,
    heldout: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
    name: str = "train",
    seed: int = 0,
    bpc_start: dict[str, float] | None = None,
    callback: Callable[[int, dict], None] | None = None,
    report_to: Sequence[str] = (),
    project: str | None = None,
) -> TrainResult:
    """Train ``model`` on ``examples`` as ``settings`` say; see the module docstring for the contract."""
    import torch
    from accelerate.utils import DistributedType, set_seed
    from tqdm.auto import tqdm

    from langadapt.train.freeze import count_parameters
    from langadapt.train.tracking import Trackers

    out_dir = Path(out_dir)
    trackers = Trackers(report_to, out_dir=out_dir, name=name, project=project, resume=resume)
    precision = resolve_precision(settings.precision)
    accelerator = _make_accelerator(precision, settings.grad_accum, trackers.log_with)
    main = accelerator.is_main_process
    say = (log or (lambda m: print(m, flush=True))) if main else (lambda m: None)

    # ---- rows and steps
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, truncated, used = _rows(examples, settings, pack, pad_id)
    if truncated:
        say(f"{name}: {truncated:,} of {used:,} examples longer than seq_len {settings.seq_len} were truncated")
    world = accelerator.num_processes
    bs, accum = settings.batch_size, settings.grad_accum
    per_step = bs * accum * world
    total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * len(rows) / per_step))
    order = _Order(len(rows), seed)
    # Tokens a row feeds the model: padding excluded, except the tail of the last packed block.
    row_tokens = torch.full_like(rows.tokens, settings.seq_len) if pack is True else rows.tokens

    # ---- model, optimizer, schedule
    set_seed(seed)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # fp32 master weights; autocast handles the compute dtype
    total, trainable = count_parameters(model)
    if trainable == 0:
        raise ValueError("the model has no trainable parameters; freeze it with langadapt.train.freeze.apply_policy")
    optimizer = _optimizer(model, settings, accelerator.device)
    scheduler = _scheduler(optimizer, settings, total_steps)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = bs
        # DeepSpeed clips inside its own step (at 1.0 unless told): the recipe's bound, 0 for none
        ds_config["gradient_clipping"] = settings.max_grad_norm or 0.0
    skeleton = None
    if accelerator.distributed_type == DistributedType.FSDP:  # FSDP shards the model in place
        sharding.check_precision(accelerator, precision)
        model, optimizer, skeleton = sharding.prepare(accelerator, model, optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    # Model weights go to the checkpoint's standard model/ folder, not into accelerate's state;
    # sharded engines (FSDP, DeepSpeed) still save and load their own shards.
    accelerator.register_save_state_pre_hook(lambda models, weights, d: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, d: models.clear())
    unwrapped = accelerator.unwrap_model(model)
    eval_model = model if sharded else unwrapped

    # ---- resume or start fresh
    checkpoints = Checkpoints(accelerator, out_dir, name, sharded=sharded)
    expect = {"rows": len(rows), "per_step": per_step, "total_steps": total_steps, "seed": seed}
    ckpt, state = checkpoints.restore(model, unwrapped, expect) if resume else (None, None)
    totals, start_step, history = Totals(), 0, None
    if state is not None:
        start_step = state["step"]
        totals = Totals(tokens=state["tokens"], train_seconds=state["train_seconds"],
                        cpu_seconds=state.get("cpu_seconds", 0.0), seconds_before=state["seconds"])
        history = state["bpc_history"]
        say(f"{name}: resuming from {ckpt} (step {start_step:,} of {total_steps:,})")
    else:
        checkpoints.clear()
    held = HeldOut(heldout or {}, tokenizer, history)
    metrics = MetricsLog(out_dir, name, main=main, cuda=accelerator.device.type == "cuda",
                         resumed_at=start_step if ckpt is not None else None,
                         trackers=trackers.start(accelerator, {"name": name, **settings.model_dump(mode="json")}))
    # Steps whose loss or (applied) gradient was NaN or infinite, counted on the device without waiting;
    # read where the logged loss reaches the host (MetricsLog) and before every checkpoint.
    nonfinite = torch.zeros((), device=accelerator.device)
    accelerator.wait_for_everyone()

    layout = {"whole": "blocks of whole examples", True: "packed blocks", False: "rows"}[pack]
    say(f"{name}: {len(rows):,} {layout} of <= {settings.seq_len} tokens, "
        f"{total_steps:,} steps x {per_step} rows ({bs} x {accum} accumulation x {world} processes), "
        f"{precision}, trainable {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    t_start = time.time()
    if start_step == 0 and held:
        values = held.measure(eval_model, accelerator, 0, bpc_start)
        metrics.heldout(0, values)
        say(f"{name}: held-out bits per character at start: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))

    # ---- the loop
    undo_fast, use_fused, plan = _fast_paths(unwrapped, settings, accelerator, say, name)
    model.train()
    bar = tqdm(total=total_steps, initial=start_step, desc=name, disable=not main, dynamic_ncols=True, unit="step")
    metrics.bar = bar
    ckpt_path = ckpt
    try:
        for step in range(start_step, total_steps):
            t_step, cpu_step = time.time(), time.process_time()
            batches, n_pred, tokens, n_all = _micro_batches(rows, order, row_tokens, step, bs, accum, world,
                                                            accelerator.process_index, use_fused)
            totals.window_tokens += tokens
            step_loss, grad_norm = _train_step(model, optimizer, scheduler, accelerator, batches, n_pred, settings,
                                               n_all, plan)
            bad = ~torch.isfinite(step_loss)
            if grad_norm is not None and not accelerator.optimizer_step_was_skipped:  # fp16's scaler skips them
                bad |= ~torch.isfinite(torch.as_tensor(grad_norm, device=bad.device))
            nonfinite += bad.float()
            done = step + 1
            totals.window_seconds += time.time() - t_step
            totals.cpu_seconds += time.process_time() - cpu_step
            bar.update(1)
            row = {"name": name, "step": done}
            if done % settings.log_every == 0 or done == total_steps:
                mean_loss, bad = accelerator.reduce(torch.stack([step_loss.float().reshape(()), nonfinite]), reduction="mean")
                norm = torch.as_tensor(float("nan") if grad_norm is None else grad_norm, device=accelerator.device)
                values = torch.stack([mean_loss, norm.float().reshape(()), bad])
                toks, window = totals.flush()
                row = {
                    "name": name, "step": done, "loss": None, "lr": scheduler.get_last_lr()[0], "grad_norm": None,
                    **_embedding_lr(optimizer, scheduler),
                    "tokens_per_s": round(toks / window, 1) if window > 0 else None, "tokens": totals.tokens,
                    "memory_mb": round(memory_mb(), 1), "elapsed_s": round(elapsed(totals, t_start), 2),
                }
                metrics.step(row, values)
            if held and settings.eval_every and done % settings.eval_every == 0 and done != total_steps:
                metrics.resolve(everything=True)
                values = held.measure(eval_model, accelerator, done)
                metrics.heldout(done, values)
                say(f"{name}: step {done:,}: bits per character " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
            if done == total_steps:
                metrics.resolve(everything=True)
                if held:
                    values = held.measure(eval_model, accelerator, done)
                    metrics.heldout(done, values)
                    say(f"{name}: held-out bits per character at end: "
                        + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
            if done == total_steps or (settings.save_every and done % settings.save_every == 0):
                totals.flush()
                metrics.resolve(everything=True)  # final_loss below
                _check_finite(accelerator, unwrapped, nonfinite, name, done, scheduler.get_last_lr()[0])
                ckpt_path = checkpoints.save(done, model, unwrapped, tokenizer, {
                    "name": name, "step": done, "total_steps": total_steps, "rows": len(rows), "per_step": per_step,
                    "seed": seed, "tokens": totals.tokens, "seconds": elapsed(totals, t_start),
                    "train_seconds": totals.train_seconds, "cpu_seconds": totals.cpu_seconds,
                    "bpc_history": held.history, "final_loss": metrics.last_loss,
                })
            if callback is not None:
                callback(done, row)
    finally:
        for undo in reversed(undo_fast):
            undo()
        metrics.close()
    bar.close()

    # ---- the result
    final_loss = metrics.last_loss
    if start_step >= total_steps:  # resumed a finished run: report what it recorded
        final_loss = state.get("final_loss")
    bpc = held.result()
    if main and bpc:
        merge_bpc(out_dir / BPC, name, bpc)
    result_model = skeleton.rebuild(accelerator, model) if skeleton is not None else unwrapped
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return TrainResult(
        model=result_model,
        steps=total_steps,
        final_loss=final_loss,
        tokens_per_s=totals.tokens / totals.train_seconds if totals.train_seconds > 0 else 0.0,
        tokens=totals.tokens,
        seconds=elapsed(totals, t_start),
        cpu_seconds=totals.cpu_seconds,
        bpc=bpc,
        trainable=trainable,
        total=total,
        rows=len(rows),
        truncated=truncated,
        resumed_from=start_step if ckpt is not None else None,
        checkpoint=ckpt_path,
    )


def _check_finite(accelerator, model, nonfinite, name: str, step: int, lr: float) -> None:
    """Before a checkpoint: no step so far had a NaN or infinite loss or gradient, and the trained weights are
    finite (every process; saving waits for the device anyway)."""
    import torch

    from langadapt.train.checkpoint import nonfinite_weights

    weights, names = nonfinite_weights(model, trainable_only=True)
    steps, weights = accelerator.reduce(torch.stack([nonfinite, torch.tensor(float(weights), device=nonfinite.device)]),
                                        reduction="sum").tolist()
    if steps or weights:
        what = "a loss or gradient was NaN or infinite" if steps else \
            f"{int(weights):,} trained weights are NaN or infinite ({', '.join(names) or 'on another process'})"
        raise DivergedError(f"{name}: {what} at step {step:,} or before (lr {lr:.3g}); stopped without saving a "
                            f"checkpoint. {DIVERGED_HINT}")


def _embedding_lr(optimizer, scheduler) -> dict:
    """``{"lr_embeddings": ...}`` when the embeddings and head train at a rate of their own, else {}."""
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
        if group.get("embeddings"):
            return {"lr_embeddings": lr}
    return {}


def _micro_batches(rows, order, row_tokens, step: int, bs: int, accum: int, world: int, rank: int, use_fused: bool):
    """This process's micro-batches for ``step``, the predicted tokens of each, the tokens all processes feed
    the model, and the predicted tokens of all processes' micro-batches (so that every predicted token weighs
    the same whatever micro-batch and process it falls in). Counted on the host copy of the rows, so the loop
    never waits for the device."""
    import torch

    from langadapt.train import loss as fused_loss
    from langadapt.train import packing

    batches, n_pred, tokens, n_all = [], [], 0, 0
    for a in range(accum):
        first = (step * accum + a) * world * bs
        every = order.rows(first, bs * world)
        tokens += int(row_tokens[every].sum())
        b = rows.batch(every[rank * bs : (rank + 1) * bs])
        n_pred.append(int((b["labels"][:, 1:] != packing.IGNORE).sum()))
        n_all += n_pred[-1]
        if world > 1:  # the other processes' rows, counted here instead of asked for over the network
            others = torch.cat([every[: rank * bs], every[(rank + 1) * bs :]])
            n_all += int((rows.batch(others)["labels"][:, 1:] != packing.IGNORE).sum())
        if use_fused:
            b["target_index"] = fused_loss.target_index(b["labels"])
        batches.append(b)
    return batches, n_pred, tokens, n_all


def _train_step(model, optimizer, scheduler, accelerator, batches, n_pred, settings, n_all, plan=None):
    """One optimizer step over the micro-batches; (summed loss on the device, gradient norm or None).
    ``n_all``: predicted tokens of every process's micro-batches of the step; ``plan``: the LoRA dropout plan
    (activations.StepDropout) told where each micro-batch's rows lie in the step."""
    import torch

    cuda = accelerator.device.type == "cuda"
    accum = len(batches)
    # Data parallel engines average gradients over the processes, hence the factor of their number.
    n_total = max(1, n_all) / accelerator.num_processes
    step_loss = torch.zeros((), device=accelerator.device)
    grad_norm = None
    plan = plan if accum > 1 else None
    if plan is not None:
        shapes = [tuple(b["input_ids"].shape) for b in batches]
        step_rows, step_width, first = sum(r for r, _ in shapes), max(w for _, w in shapes), 0
    for b, n in zip(batches, n_pred):
        if plan is not None:
            plan.micro_batch(first, b["input_ids"].shape[0], step_rows, step_width)
            first += b["input_ids"].shape[0]
        if cuda:
            b = {k: v.pin_memory().to(accelerator.device, non_blocking=True) for k, v in b.items()}
        else:
            b = {k: v.to(accelerator.device) for k, v in b.items()}
        with accelerator.accumulate(model), accelerator.autocast():
            out = model(**b, use_cache=False)  # a cache would turn off packed-sequence masking
            if n:
                loss = out.loss * (n / n_total)
            else:  # nothing to predict: a zero that still reaches every trainable tensor
                loss = out.loss * 0.0 if out.logits is None else out.logits.sum() * 0.0
            accelerator.backward(loss * accum)  # backward divides by accum again
            step_loss += loss.detach().float()
            grad_norm = None
            if accelerator.sync_gradients and settings.max_grad_norm:
                grad_norm = sharding.full(accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm))
            optimizer.step()
            if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    if plan is not None:
        plan.stop()
    return step_loss, grad_norm


__all__ = ["TrainResult", "train_model", "resolve_precision", "load_dtype", "last_checkpoint", "save_model",
           "load_trained_weights", "describe_bpc"]
"""``last_checkpoint``, ``save_model`` and ``load_trained_weights`` live in ``checkpoint.py``, ``describe_bpc``
in ``metrics.py``; they are importable from here as before."""
