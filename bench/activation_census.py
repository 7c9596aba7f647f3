"""What a training step keeps for its backward pass, module by module, on a finished run's sft model.

    python bench/activation_census.py runs/demo [--recipe configs/demo.yaml] [--batch 8] [--seq-len 256]
                                      [--mode lean|plain|checkpoint] [--steps 2]

Loads the run's pretrain adapter merged into its base (the model the sft stage trains), freezes it with the
recipe's sft policy (LoRA + embeddings), and runs ``--steps`` forward/backward passes of ``--batch`` x
``--seq-len`` random tokens (packed: positions restart twice per row; the first 40 tokens of each row carry
no loss). Prints the bytes autograd keeps between forward and backward, grouped by the module that saved
them (saved-tensor hooks, each storage counted once, the model's own weights not counted), peak resident
memory, step times, and a hash of the gradients and of the random state after each step, so that two
modes can be checked bit for bit.

Modes: ``lean`` is what the training core runs (LoRA dropout through train/activations.py), ``plain``
PEFT's own layers, ``checkpoint`` transformers' gradient checkpointing on top of ``lean``. Run it with
``MALLOC_MMAP_THRESHOLD_=131072`` in the environment to see live memory instead of what glibc keeps.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import time
from pathlib import Path


def status_mb() -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder (its pretrain/adapter is loaded), e.g. runs/demo")
    ap.add_argument("--recipe", default=str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--mode", choices=["lean", "plain", "checkpoint"], default="lean")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()

    import torch

    from langadapt.models import load_model
    from langadapt.recipe import load_recipe
    from langadapt.train import activations
    from langadapt.train import loss as fused
    from langadapt.train.freeze import apply_policy, stage_policy

    recipe = load_recipe(args.recipe)
    model = load_model(str(Path(args.run) / "pretrain" / "adapter")).merge_and_unload()
    rows, lora = stage_policy(recipe, "sft")
    model, _ = apply_policy(model, embeddings=rows, lora=lora, seed=0)
    lm = fused.causal_lm_of(model)
    if args.mode != "plain":
        activations.install(lm)
    if args.mode == "checkpoint":
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fused.install(model, 1024)
    model.train()
    print(f"loaded: RSS {status_mb()[0]:,} MB", flush=True)

    torch.manual_seed(0)
    bsz, seq = args.batch, args.seq_len
    ids = torch.randint(0, model.get_input_embeddings().weight.shape[0], (bsz, seq))
    third = max(1, seq // 3)
    pos = torch.cat([torch.arange(third), torch.arange(third), torch.arange(seq - 2 * third)]).repeat(bsz, 1)
    labels = ids.clone()
    labels[:, : min(40, seq - 1)] = -100

    stack = ["(outside a module)"]
    for name, module in model.named_modules():
        tag = ".".join(p for p in name.split(".") if not p.isdigit() and p not in ("base_model", "model", "layers"))
        module.register_forward_pre_hook(lambda m, a, tag=tag or "(top)": stack.append(tag))
        module.register_forward_hook(lambda m, a, o: (stack.pop(), None)[1])  # a hook's return value replaces o
    layers = model.config.num_hidden_layers

    # parameters that autograd references (a frozen layer's weight, for its input's gradient) cost nothing extra
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for step in range(args.steps):
        kept: dict[int, int] = {ptr: 0 for ptr in weights}
        by_module: collections.Counter = collections.Counter()

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in kept:
                kept[storage.data_ptr()] = storage.nbytes()
                by_module[stack[-1]] += storage.nbytes()
            return t

        t0 = time.time()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=ids, labels=labels, position_ids=pos, use_cache=False)
        t1 = time.time()
        out.loss.backward()
        t2 = time.time()
        digest = hashlib.sha256()
        for p in model.parameters():
            if p.grad is not None:
                digest.update(p.grad.numpy().tobytes())
        digest.update(torch.get_rng_state().numpy().tobytes())
        model.zero_grad(set_to_none=True)
        rss, hwm = status_mb()
        total = sum(kept.values())
        print(f"step {step}: loss {out.loss.item()!r}, gradients+rng {digest.hexdigest()[:16]}, "
              f"forward {t1 - t0:.2f} s, backward {t2 - t1:.2f} s, kept for backward {total / 2**20:,.0f} MiB "
              f"({total / (bsz * seq * layers) / 1024:.1f} KiB per token per layer), RSS {rss:,} MB, peak {hwm:,} MB",
              flush=True)
        if step == 0:
            for tag, nbytes in by_module.most_common(16):
                print(f"    {nbytes / 2**20:8,.0f} MiB  {tag}")


if __name__ == "__main__":
    main()
