"""Training throughput: langadapt's training core against the transformers Trainer + PEFT (issue 10).

    python bench/train_throughput.py --device cuda                      # the GPU run (about 5 minutes)
    python bench/train_throughput.py --toy                              # tiny model on the CPU (a test runs this)
    python bench/train_throughput.py --device cpu --models smollm2-135m --stages sft \\
        --variants a2,bn,b --batch 8 --seq-len 256 --steps 3 --warmup 1 --isolate   # CPU memory of the loss

For each model and stage, in one process on one device, the same optimizer steps are trained by:

- a1: transformers ``Trainer`` + PEFT, default settings, padded variable-length batches (one document
  or conversation per row, padded to the longest in the batch): what a user gets by default;
- a2: the same ``Trainer`` fed the packed full-length blocks langadapt trains on (with
  ``position_ids``, so documents do not attend to each other): the best a careful user gets;
- b: langadapt's ``train_model`` with the recipe defaults (fused chunked loss, fused AdamW, no host
  syncs in the loop, packing; sft packs whole conversations);
- optional: bp (langadapt on a1's padded rows), bn (langadapt with ``fused_loss: false``),
  bc (langadapt with ``compile: true``), bg (langadapt with ``gradient_checkpointing: true``).

Stages (freezing from ``langadapt.train.freeze``, as the stages do): align = embeddings and head only;
pretrain = LoRA r=8 (alpha 32, dropout 0) on every linear layer + embeddings/head; sft = the same
trainable tensors on conversations with the loss on answers only. Models: SmolLM2-135M's
architecture (its config, read from the bundled GGUF, stored in ``train_throughput_models.json``)
and a 1.1B Llama (TinyLlama-1.1B's shape with a 49,817-row untied vocabulary, the size of the
paper's merged Llama-2 tokenizer), both with random weights. Data: a synthetic Markov-chain
language (nothing large travels); frozen weights in bf16 on a GPU, trainable ones in fp32, bf16
autocast on a GPU (fp32 on the CPU), same learning rate, linear schedule, AdamW, grad clipping 1.0.

Printed per run: real tokens/s (padding excluded) over the steps after ``--warmup``, its ratio to
a1 and a2, peak memory (GPU: ``max_memory_allocated``; CPU with ``--isolate``: peak RSS of a process
per run) and its ratio to a2, MFU, and the held-out loss after the steps (a fixed set of held-out
blocks, the plain forward) with its difference to the baseline fed the same batches (a2 for b;
a1 for bp). Both trainers stop after ``--steps`` of a ``--steps + 1``-step schedule, so neither
spends the timed run on an end-of-training save.

MFU = tokens/s x FLOPs per token / the chip's dense bf16 peak. FLOPs per token: forward 2N and
backward 2N through every block (the embeddings train in every stage, so gradients reach the
bottom), weight gradients 2 x the trainable matrices multiplied (the head; LoRA's own 6 N_lora),
attention 12 x layers x hidden x seq_len (the convention behind the issue's "0.9 GFLOP per token"
for full training of SmolLM2-135M). N counts every linear layer's weight, the head included.
All variants of a stage share one FLOPs-per-token figure, so MFU ratios equal tokens/s ratios.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent / "src") not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent / "src"))
MODELS_FILE = HERE / "train_throughput_models.json"
VARIANTS = {
    "a1": "Trainer + PEFT, padded",
    "a2": "Trainer + PEFT, packed",
    "b": "langadapt",
    "bp": "langadapt, padded rows",
    "bn": "langadapt, plain loss",
    "bc": "langadapt + compile",
    "bg": "langadapt + gradient checkpointing",
}
STAGES = ("align", "pretrain", "sft")
# Dense bf16 peak FLOP/s by GPU name (vendor data sheets, without sparsity).
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10G", 70e12), ("L4", 121e12), ("4090", 165e12)]
LLAMA_1B = {  # TinyLlama-1.1B's shape; the vocabulary of Llama-2 after the paper's merge
    "model_type": "llama", "vocab_size": 49817, "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4, "hidden_act": "silu",
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}
TOY = {
    "model_type": "llama", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True,
    "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}
PER_MODEL_BATCH = {"smollm2-135m": 32, "llama-1.1b": 16}


class Stop(Exception):
    """Raised by the timing callback after the last timed step (langadapt's loop has no stop request)."""


# --------------------------------------------------------------------------- models


def write_model_configs() -> dict:
    """Store SmolLM2-135M's config (from the bundled GGUF) and the 1.1B shape next to this script."""
    from langadapt.models import load_config

    cfg = load_config("smollm2-135m-instruct").to_diff_dict()
    keep = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("transformers_version", "dtype")}
    rope = keep.pop("rope_parameters", None) or {}
    if rope.get("rope_type", "default") == "default" and "rope_theta" in rope:
        keep["rope_theta"] = rope["rope_theta"]  # the spelling transformers 4.x and 5.x both read
    elif rope:
        keep["rope_parameters"] = rope
    configs = {"smollm2-135m": keep, "llama-1.1b": LLAMA_1B}
    MODELS_FILE.write_text(json.dumps(configs, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return configs


def model_config(name: str):
    from transformers import AutoConfig

    if name == "toy":
        values = dict(TOY)
    else:
        configs = json.loads(MODELS_FILE.read_text(encoding="utf-8"))
        if name not in configs:
            raise SystemExit(f"unknown model {name}; known: toy, {', '.join(configs)}")
        values = dict(configs[name])
    kind = values.pop("model_type")
    return AutoConfig.for_model(kind, **values)


def build_model(config, stage: str, device, frozen_dtype, seed: int):
    """Random weights from ``config``, frozen for ``stage`` by langadapt's policy; trainable tensors fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from langadapt.recipe import LoraSettings
    from langadapt.train.freeze import apply_policy

    torch.manual_seed(seed)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=frozen_dtype)
        except TypeError:  # transformers before 4.56 spells it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=frozen_dtype)
    lora = None if stage == "align" else LoraSettings(r=8, alpha=32, dropout=0.0, targets="all-linear")
    model, counts = apply_policy(model, embeddings="all", lora=lora)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model.to(device), counts


def flops_per_token(model, config, seq_len: int) -> float:
    """Training FLOPs per token for the frozen ``model`` (see the module docstring)."""
    from torch import nn

    dense = lora = head_trainable = 0
    for name, module in model.named_modules():
        if type(module) is nn.Linear:
            n = module.weight.numel()
            if "lora_" in name:
                lora += n
            else:
                dense += n
                if module.weight.requires_grad:
                    head_trainable += n
    hidden = config.hidden_size
    attention = 12 * config.num_hidden_layers * hidden * seq_len
    return 4 * dense + 2 * head_trainable + 6 * lora + attention


def peak_flops(device) -> tuple[float | None, str]:
    import torch

    if device.type != "cuda":
        return None, "CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16:
        if key in name:
            return value, name
    return None, name


# --------------------------------------------------------------------------- data


def markov_documents(vocab: int, count: int, seq_len: int, seed: int, *, active: int = 2000) -> list[list[int]]:
    """``count`` documents of a synthetic language: each of ``active`` tokens has 4 likely successors;
    lengths log-normal (median about seq_len / 3), capped at ``seq_len``; token 1 starts each, 2 ends it."""
    import numpy as np

    language = np.random.default_rng(12345)  # one language for training and held-out documents
    tokens = language.choice(np.arange(3, vocab), size=min(active, vocab // 4), replace=False)
    succ = language.integers(0, len(tokens), size=(len(tokens), 4))
    rng = np.random.default_rng(seed)
    probs = np.array([0.55, 0.25, 0.12, 0.08])
    lengths = np.clip(rng.lognormal(math.log(seq_len / 3), 0.6, size=count).astype(int), 8, seq_len)
    state = rng.integers(0, len(tokens), size=count)
    body = np.empty((count, seq_len), dtype=np.int64)
    for t in range(seq_len):
        body[:, t] = tokens[state]
        pick = rng.choice(4, size=count, p=probs)
        jump = rng.random(count) < 0.05
        state = np.where(jump, rng.integers(0, len(tokens), size=count), succ[state, pick])
    return [[1] + body[i, : lengths[i] - 2].tolist() + [2] for i in range(count)]


def examples_for(stage: str, vocab: int, count: int, seq_len: int, seed: int) -> list[dict]:
    """Documents (align, pretrain: loss everywhere) or conversations (sft: the first part is the prompt,
    no loss; the answer is the rest)."""
    docs = markov_documents(vocab, count, seq_len, seed)
    out = []
    for i, ids in enumerate(docs):
        if stage == "sft":
            cut = max(1, int(len(ids) * (0.3 + 0.4 * ((i * 7919) % 100) / 100)))
            out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
        else:
            out.append({"input_ids": ids, "labels": list(ids)})
    return out


def layouts(stage: str, examples: list[dict], seq_len: int, rows_needed: int, seed: int):
    """Rows per layout, in the order langadapt's loop reads them: {"packed": Rows, "padded": Rows, "order": ...}."""
    from langadapt.train import packing
    from langadapt.train.core import _Order

    if stage == "sft":
        packed, _ = packing.pack_whole(examples, seq_len, 0)
    else:
        packed = packing.pack(examples, seq_len, 0)
    padded, _ = packing.pad(examples, seq_len, 0)
    out = {}
    for name, rows in (("packed", packed), ("padded", padded)):
        if len(rows) < rows_needed:
            raise SystemExit(f"{name}: {len(rows)} rows, {rows_needed} needed; more documents please")
        out[name] = (rows, _Order(len(rows), seed).rows(0, rows_needed))
    return out


# --------------------------------------------------------------------------- runs


def heldout_loss(model, rows, device, autocast_dtype) -> float:
    """Mean loss per target token over ``rows`` with the plain forward (the same for every variant)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for start in range(0, len(rows), 4):
            b = {k: v.to(device) for k, v in rows.batch(torch.arange(start, min(start + 4, len(rows)))).items()}
            labels = b.pop("labels")
            logits = model(**b, use_cache=False).logits.float()
            target = labels[:, 1:]
            total += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                             target.reshape(-1), reduction="sum"))
            count += int((target != -100).sum())
    return total / count


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_trainer(model, rows, order, args, device, out_dir) -> tuple[float, int]:
    """The transformers Trainer on ``rows`` in ``order``; returns (seconds of the timed steps, timed steps)."""
    import torch
    from accelerate.state import AcceleratorState, GradientState
    from torch.utils.data import Dataset, SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Ordered(Dataset):
        def __len__(self):
            return len(order)

        def __getitem__(self, i):
            j = int(order[i])
            item = {"input_ids": rows.input_ids[j].long(), "labels": rows.labels[j].long()}
            if rows.attention_mask is not None:
                item["attention_mask"] = rows.attention_mask[j].long()
            else:
                item["position_ids"] = rows.position_ids[j].long()
            return item

    def collate(items):  # padded rows: cut to the longest in the batch, as DataCollatorForSeq2Seq pads to it
        width = max(int(x["attention_mask"].sum()) if "attention_mask" in x else len(x["input_ids"]) for x in items)
        return {k: torch.stack([x[k][:width] for x in items]) for k in items[0]}

    class OrderedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(self.train_dataset)

    marks = {}

    class Timer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            if state.global_step in (args.warmup, args.steps):
                _sync(device)
                marks[state.global_step] = time.perf_counter()
            if state.global_step >= args.steps:
                control.should_training_stop = True

    AcceleratorState._reset_state(reset_partial_state=False)  # the core's Accelerator may have run before
    GradientState._reset_state()
    targs = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, max_steps=args.steps + 1,
        learning_rate=args.lr, bf16=device.type == "cuda", use_cpu=device.type == "cpu", report_to="none",
        save_strategy="no", seed=args.seed, disable_tqdm=True,
    )
    trainer = OrderedTrainer(model=model, args=targs, train_dataset=Ordered(), data_collator=collate,
                             callbacks=[Timer()])
    trainer.train()
    return marks[args.steps] - marks[args.warmup], args.steps - args.warmup


def run_langadapt(model, examples, pack, args, device, out_dir, **fast) -> tuple[float, int]:
    """langadapt's ``train_model``; returns (seconds of the timed steps, timed steps)."""
    from types import SimpleNamespace

    from langadapt.recipe import TrainSettings
    from langadapt.train.core import train_model

    settings = TrainSettings(max_steps=args.steps + 1, batch_size=args.batch_size, grad_accum=1, seq_len=args.seq_len,
                             lr=args.lr, schedule="linear", warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
                             **fast)
    marks = {}

    def callback(step, metrics):
        if step in (args.warmup, args.steps):
            _sync(device)
            marks[step] = time.perf_counter()
        if step >= args.steps:
            raise Stop

    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    try:
        train_model(model, tokenizer, examples, settings, out_dir, pack=pack, seed=args.seed, callback=callback,
                    log=lambda m: None)
    except Stop:
        pass
    return marks[args.steps] - marks[args.warmup], args.steps - args.warmup


_DATA: dict = {}


def stage_data(stage: str, vocab: int, args):
    """(examples, layouts, held-out rows) for a stage, made once per process."""
    key = (stage, vocab, args.steps, args.batch_size, args.seq_len, args.seed)
    if key not in _DATA:
        from langadapt.train.packing import Rows

        rows_needed = args.steps * args.batch_size
        # documents average about a third of seq_len: six per row fill the packed blocks twice over
        examples = examples_for(stage, vocab, rows_needed * 6, args.seq_len, seed=args.seed)
        lay = layouts(stage, examples, args.seq_len, rows_needed, args.seed)
        held = layouts(stage, examples_for(stage, vocab, 48, args.seq_len, seed=args.seed + 1000), args.seq_len, 8,
                       args.seed)["packed"][0]
        held = Rows(held.input_ids[:8], held.labels[:8], held.position_ids[:8], None, held.tokens[:8])
        _DATA.clear()  # one stage's data at a time
        _DATA[key] = (examples, lay, held)
    return _DATA[key]


def one_run(model_name: str, stage: str, variant: str, args) -> dict:
    """Build, train and measure one (model, stage, variant); the row of the table as a dict."""
    import torch

    device = torch.device(args.device)
    config = model_config(model_name)
    frozen_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    examples, lay, heldout = stage_data(stage, config.vocab_size, args)
    layout = "padded" if variant in ("a1", "bp") else "packed"
    rows, order = lay[layout]
    timed = order[args.warmup * args.batch_size : args.steps * args.batch_size]
    real_tokens = int(rows.tokens[timed].sum())

    row = {"model": model_name, "stage": stage, "variant": variant, "what": VARIANTS[variant], "layout": layout,
           "steps": args.steps, "timed_steps": args.steps - args.warmup, "batch": args.batch_size,
           "seq_len": args.seq_len, "real_tokens_per_step": real_tokens / max(1, args.steps - args.warmup)}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, counts = build_model(config, stage, device, frozen_dtype, args.seed)
    row["trainable"], row["total"] = counts.trainable, counts.total
    fpt = flops_per_token(model, config, args.seq_len)
    row["flops_per_token"] = fpt
    row["start_loss"] = heldout_loss(model, heldout, device, autocast_dtype)
    model.train()
    with tempfile.TemporaryDirectory() as tmp:
        if variant in ("a1", "a2"):
            seconds, timed_steps = run_trainer(model, rows, order, args, device, tmp)
        else:
            pack = False if variant == "bp" else ("whole" if stage == "sft" else True)
            fast = {"bn": {"fused_loss": False}, "bc": {"compile": True},
                    "bg": {"gradient_checkpointing": True}}.get(variant, {})
            # langadapt builds the same rows from the same examples, and reads them in the same order
            seconds, timed_steps = run_langadapt(model, examples, pack, args, device, tmp, **fast)
    row["seconds"] = seconds
    row["tokens_per_s"] = real_tokens / seconds
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    peak, chip = peak_flops(device)
    row["device"] = chip
    row["mfu"] = row["tokens_per_s"] * fpt / peak if peak else None
    row["loss"] = heldout_loss(model, heldout, device, autocast_dtype)
    del model
    gc.collect()
    return row


def run_isolated(model_name: str, stage: str, variant: str, args) -> dict:
    """``one_run`` in a fresh process, so its peak RSS is its own (CPU memory)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--single", f"{model_name}:{stage}:{variant}", "--single-out", out,
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
           str(args.batch_size), "--seq-len", str(args.seq_len), "--lr", str(args.lr), "--seed", str(args.seed)]
    # A fixed mmap threshold hands freed large blocks back to the system at once, so peak RSS follows
    # the tensors alive rather than glibc's heap fragmentation (which otherwise varies by gigabytes).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    row = json.loads(Path(out).read_text())
    os.unlink(out)
    return row


# --------------------------------------------------------------------------- report


def compare(results: list[dict], fp32: bool) -> list[dict]:
    """Ratios to a1/a2 and the loss check, per (model, stage)."""
    by = {(r["model"], r["stage"], r["variant"]): r for r in results}
    for r in results:
        if "error" in r:
            continue
        key = (r["model"], r["stage"])
        for base in ("a1", "a2"):
            ref = by.get((*key, base))
            if ref and "error" not in ref:
                r[f"x_{base}"] = r["tokens_per_s"] / ref["tokens_per_s"]
                for mem in ("peak_gib", "peak_rss_gib"):
                    if r.get(mem) and ref.get(mem):
                        r[f"mem_{base}"] = r[mem] / ref[mem]
        same = {"b": "a2", "bn": "a2", "bc": "a2", "bg": "a2", "bp": "a1"}.get(r["variant"])
        ref = by.get((*key, same)) if same else None
        if ref and "error" not in ref:
            drop = abs(r["start_loss"] - ref["loss"])
            r["loss_vs"] = same
            r["loss_delta"] = r["loss"] - ref["loss"]
            # "within noise": a small share of what training changed (fp32: rounding only)
            r["loss_tolerance"] = (0.001 if fp32 else 0.03) * drop + (1e-4 if fp32 else 2e-3)
            r["loss_agrees"] = abs(r["loss_delta"]) <= r["loss_tolerance"]
    return results


def table(results: list[dict]) -> str:
    head = ("| model | stage | run | real tokens/step | tokens/s | x a1 | x a2 | peak memory | ÷ a2 | MFU "
            "| held-out loss (start → end) | Δ loss (vs) |")
    lines = [head, "| " + " | ".join(["---"] * 3 + ["---:"] * 9) + " |"]

    def f(v, fmt):
        return format(v, fmt) if v is not None else "–"

    for r in results:
        label = f"{r['variant']}: {r['what']}"
        if "error" in r:
            lines.append(f"| {r['model']} | {r['stage']} | {label} | failed: {r['error'][:120]} |" + " |" * 8)
            continue
        mem = r.get("peak_gib") or r.get("peak_rss_gib")
        memtxt = f"{mem:.2f} GiB" + (" RSS" if r.get("peak_rss_gib") and not r.get("peak_gib") else "") if mem else "–"
        delta = "–"
        if "loss_delta" in r:
            delta = f"{r['loss_delta']:+.1e} ({r['loss_vs']}){'' if r['loss_agrees'] else ' DISAGREES'}"
        lines.append(
            f"| {r['model']} | {r['stage']} | {label} | {r['real_tokens_per_step']:,.0f} | {r['tokens_per_s']:,.0f} "
            f"| {f(r.get('x_a1'), '.2f')} | {f(r.get('x_a2'), '.2f')} | {memtxt} | {f(r.get('mem_a2'), '.2f')} "
            f"| {f(r['mfu'] * 100 if r.get('mfu') is not None else None, '.1f')}{'%' if r.get('mfu') else ''} "
            f"| {r['start_loss']:.3f} → {r['loss']:.4f} | {delta} |")
    return "\n".join(lines)


def goals(results: list[dict]) -> list[str]:
    """The issue's goal per stage: b >= 3x a1 and >= 1.5x a2 in tokens/s, at <= 60% of a2's peak memory."""
    out = []
    for r in results:
        if r["variant"] != "b" or "error" in r or "x_a1" not in r or "x_a2" not in r:
            continue
        mem = r.get("mem_a2")
        parts = [f"{r['x_a1']:.2f}x a1 (goal 3x{' met' if r['x_a1'] >= 3 else ': missed by ' + format(3 - r['x_a1'], '.2f')})",
                 f"{r['x_a2']:.2f}x a2 (goal 1.5x{' met' if r['x_a2'] >= 1.5 else ': missed by ' + format(1.5 - r['x_a2'], '.2f')})"]
        if mem is not None:
            parts.append(f"{100 * mem:.0f}% of a2's memory (goal ≤ 60%{' met' if mem <= 0.6 else ': missed'})")
        out.append(f"{r['model']} {r['stage']}: " + ", ".join(parts))
    return out


# --------------------------------------------------------------------------- main


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--models", default=None, help="comma-separated: smollm2-135m, llama-1.1b, toy")
    p.add_argument("--stages", default="align,pretrain,sft")
    p.add_argument("--variants", default="a1,a2,b", help="comma-separated of a1, a2, b, bp, bn, bc, bg")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (GPU default 40, toy 8)")
    p.add_argument("--warmup", type=int, default=None, help="steps before the timed window (GPU default 10, toy 2)")
    p.add_argument("--batch", dest="batch", type=int, default=None,
                   help="rows per step (default: 32 for smollm2-135m, 16 for llama-1.1b, 4 for toy)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per row (default 512; toy 64)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3; toy 1e-2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toy", action="store_true", help="the tiny model on the CPU, few steps (what the test runs)")
    p.add_argument("--isolate", action="store_true", help="one process per run (CPU peak RSS per run)")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip the remaining runs after this many seconds")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--check", action="store_true", help="exit 1 when a loss disagrees with its baseline")
    p.add_argument("--write-configs", action="store_true",
                   help="store SmolLM2-135M's config from the bundled GGUF in train_throughput_models.json and exit")
    p.add_argument("--single", default=None, help=argparse.SUPPRESS)
    p.add_argument("--single-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.toy:
        args.device = args.device or "cpu"
        args.models = args.models or "toy"
        args.steps, args.warmup = args.steps or 8, args.warmup if args.warmup is not None else 2
        args.seq_len = args.seq_len or 64
        args.batch = args.batch or 4
        args.lr = args.lr or 1e-2
    args.lr = args.lr or 1e-3
    return args


def preflight() -> str:
    """The versions this run uses; exits with the missing packages' names if any is absent."""
    import importlib

    missing, versions = [], []
    for name in ("torch", "transformers", "peft", "accelerate", "pydantic", "numpy", "yaml", "tqdm"):
        try:
            module = importlib.import_module(name)
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"missing Python packages: {', '.join(missing)} (pip install -e . installs them)")
    return ", ".join(versions)


def main(argv=None) -> list[dict]:
    versions = preflight()
    import torch

    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.write_configs:
        configs = write_model_configs()
        print(f"wrote {MODELS_FILE} ({', '.join(configs)})")
        return []
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (40 if cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.seq_len = args.seq_len or 512
    if args.warmup < 1 or args.warmup >= args.steps:
        raise SystemExit("--warmup must be at least 1 and below --steps")

    if args.single:
        model_name, stage, variant = args.single.split(":")
        args.batch_size = args.batch or PER_MODEL_BATCH.get(model_name, 8)
        row = one_run(model_name, stage, variant, args)
        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        Path(args.single_out).write_text(json.dumps(row))
        return [row]

    models = (args.models or "smollm2-135m,llama-1.1b").split(",")
    stages = args.stages.split(",")
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v}; known: {', '.join(VARIANTS)}")
    # baselines and langadapt first, optional variants (compile) last, so a tight budget drops those
    plan = [(m, s, v) for pass_ in (0, 1) for m in models for s in stages for v in variants
            if (v in ("a1", "a2", "b")) == (pass_ == 0)]
    t0 = time.time()
    results = []
    for model_name, stage, variant in plan:
        args.batch_size = args.batch or PER_MODEL_BATCH.get(model_name, 8)
        if time.time() - t0 > args.budget_s:
            print(f"skipped {model_name} {stage} {variant}: time budget of {args.budget_s:.0f} s spent", flush=True)
            continue
        t_run = time.time()
        try:
            row = run_isolated(model_name, stage, variant, args) if args.isolate else one_run(model_name, stage, variant, args)
        except Exception as e:  # one failing run must not lose the others' numbers
            traceback.print_exc()
            row = {"model": model_name, "stage": stage, "variant": variant, "what": VARIANTS[variant],
                   "error": f"{type(e).__name__}: {e}".splitlines()[0]}
        results.append(row)
        status = row.get("error") or (f"{row['tokens_per_s']:,.0f} tokens/s, loss {row['loss']:.4f}")
        print(f"[{time.time() - t0:6.0f} s] {model_name} {stage} {variant}: {status} ({time.time() - t_run:.0f} s)",
              flush=True)
    compare(results, fp32=not cuda)
    chip = next((r["device"] for r in results if "device" in r), args.device)
    print(f"\n{chip}; {versions}; {time.strftime('%Y-%m-%d')}; steps {args.steps} "
          f"(timed: the last {args.steps - args.warmup}), seq_len {args.seq_len}, lr {args.lr}\n")
    print(table(results))
    for line in goals(results):
        print("goal:", line)
    if args.out:
        Path(args.out).write_text(json.dumps({"device": chip, "versions": versions, "date": time.strftime("%Y-%m-%d"),
                                              "args": {k: v for k, v in vars(args).items()}, "results": results},
                                             indent=1) + "\n", encoding="utf-8")
    bad = [r for r in results if r.get("loss_agrees") is False or "error" in r]
    if args.check and bad:
        print("loss disagreement or failed runs: " + ", ".join(f"{r['model']} {r['stage']} {r['variant']}" for r in bad))
        sys.exit(1)
    return results


if __name__ == "__main__":
    # no progress bar inside langadapt's loop either (the Trainer runs with disable_tqdm); tqdm reads
    # this when it is imported, so it is set before anything imports it
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
