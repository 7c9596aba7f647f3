"""Checkpoints of a training call: what the loop saves every ``save_every`` steps and at its end, and
how a killed run finds and restores the newest one.

``<out_dir>/checkpoints/<name>/step-N/`` holds ``model/`` (what training changed and nothing else: the
trainable tensors in ``trainable.safetensors``, or a PEFT adapter folder; plus the tokenizer), ``state/``
(optimizer, scheduler and every process's RNG through ``Accelerator.save_state``) and
``trainer_state.json`` (data position, totals, held-out history), written last. Frozen weights are never
saved: they are what the stage loaded. The checkpoint of the last step has no ``state/``: no step follows
it, so optimizer and scheduler would never be read (a resumed run that finds it only reloads the
weights); under FSDP or DeepSpeed the engines' own shards are always saved. A checkpoint is built under
``.tmp-step-N`` and renamed when complete; only the newest is kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.files import read_json, write_json
from langadapt.weights import no_progress_bars


def checkpoint_root(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir) / "checkpoints" / name


def last_checkpoint(out_dir: str | os.PathLike, name: str) -> Path | None:
    """The newest complete checkpoint of ``name`` (``trainer_state.json`` is written last)."""
    root = checkpoint_root(out_dir, name)
    if not root.is_dir():
        return None
    done = []
    for d in root.iterdir():
        if d.name.startswith("step-") and d.name[5:].isdigit() and (d / "trainer_state.json").is_file():
            done.append((int(d.name[5:]), d))
    return max(done)[1] if done else None


def _trains_full_embeddings(model) -> bool:
    """A PEFT model whose full embedding/head tensors train (not LoRA, not trainable-token deltas)."""
    return any(
        p.requires_grad and "lora_" not in n and "trainable_tokens" not in n for n, p in model.named_parameters()
    )


def _tied_head_key(model) -> str | None:
    """The state-dict name of an output head that is the input embeddings' tensor, or None."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or emb is None or head.weight is not emb.weight:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    return f"{names[id(head)]}.weight" if id(head) in names else None


def adapter_save_kwargs(model, state_dict=None) -> dict:
    """``PeftModel.save_pretrained`` arguments: trained embeddings/head saved with the adapter, a tied head
    once (PEFT would otherwise write the same tensor twice; loading the embeddings restores both)."""
    embeddings = _trains_full_embeddings(model)
    if state_dict is None and embeddings:
        head = _tied_head_key(model)
        if head is not None:
            state_dict = {k: v for k, v in model.state_dict().items() if k != head}
    return {"state_dict": state_dict, "save_embedding_layers": embeddings}


def save_model(model, path: str | os.PathLike, *, state_dict=None) -> None:
    """``save_pretrained`` for a plain model or a PEFT adapter (with trained embeddings/head)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.save_pretrained(str(path), **adapter_save_kwargs(model, state_dict))
    else:
        model.save_pretrained(str(path), state_dict=state_dict)


TRAINABLE = "trainable.safetensors"


def save_trainable(model, path: str | os.PathLike) -> None:
    """What training changes in a plain model: its trainable tensors (a tied head once), in
    ``path/trainable.safetensors``; ``load_trained_weights`` puts them back into the loaded model."""
    from safetensors.torch import save_file

    from langadapt.weights import METADATA

    Path(path).mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(Path(path) / TRAINABLE), metadata=METADATA)


def load_trained_weights(model, path: str | os.PathLike) -> None:
    """Load the tensors a checkpoint's ``model/`` folder holds into ``model`` (same architecture)."""
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        if getattr(result, "unexpected_keys", None):
            raise LangadaptError(f"checkpoint {path} does not fit the model: unexpected {result.unexpected_keys[:3]}")
        return
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LangadaptError(f"checkpoint {path} has no .safetensors weights")
    for f in files:
        result = model.load_state_dict(load_file(str(f)), strict=False)
        if result.unexpected_keys:
            raise LangadaptError(f"checkpoint {f} does not fit the model: unexpected {result.unexpected_keys[:3]}")


def nonfinite_weights(model, *, trainable_only: bool = False) -> tuple[int, list[str]]:
    """How many weights of ``model`` (this process's shard of them; only those that train with
    ``trainable_only``) are NaN or infinite, and the first tensors holding some. One device sync per device
    when all are finite."""
    import torch

    params = [(n, p.detach()) for n, p in model.named_parameters()
              if p.is_floating_point() and (p.requires_grad or not trainable_only)]
    params = [(n, t.to_local() if hasattr(t, "to_local") else t) for n, t in params]  # DTensor shards (FSDP2)
    per_device: dict = {}
    for _, t in params:
        if t.numel():
            per_device[t.device] = per_device.get(t.device, 0) + (~torch.isfinite(t)).sum()
    bad = sum(int(v) for v in per_device.values())
    names = [n for n, t in params if t.numel() and not bool(torch.isfinite(t).all())][:3] if bad else []
    return bad, names


def sum_over_processes(n: int) -> int:
    """``n`` summed over the processes of a distributed run (``n`` itself in a single process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return n
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(n)], device=device)
    dist.all_reduce(t)
    return int(t.item())


class Checkpoints:
    """Saving and restoring the checkpoints of one training call (``name``) under ``out_dir``.

    ``sharded``: FSDP or DeepSpeed, whose engines save and load their own shards through the
    accelerator state; otherwise the weights go only to the standard ``model/`` folder.
    """

    def __init__(self, accelerator, out_dir: Path, name: str, *, sharded: bool):
        self.accelerator = accelerator
        self.root = checkpoint_root(out_dir, name)
        self.out_dir, self.name, self.sharded = out_dir, name, sharded

    def restore(self, model, unwrapped, expect: dict) -> tuple[Path, dict] | tuple[None, None]:
        """Load the newest checkpoint into ``model`` and the accelerator; (path, trainer state), or
        (None, None) when there is none. ``expect``: settings the checkpoint must have been made with."""
        ckpt = last_checkpoint(self.out_dir, self.name)
        if ckpt is None:
            return None, None
        state = read_json(ckpt / "trainer_state.json")
        got = {k: state.get(k) for k in expect}
        if got != expect:
            raise LangadaptError(f"checkpoint {ckpt} was made with other data or settings ({got} != {expect}); "
                                 "run the stage with --restart to start over")
        if not self.sharded:
            load_trained_weights(unwrapped, ckpt / "model")
        if (ckpt / "state").is_dir():
            self.accelerator.load_state(str(ckpt / "state"))
        elif self.sharded or state.get("step") != state.get("total_steps"):
            raise LangadaptError(f"checkpoint {ckpt} has no optimizer state (state/); run the stage with --restart to start over")
        return ckpt, state

    def clear(self) -> None:
        """A fresh start: earlier checkpoints of this name go."""
        if self.accelerator.is_main_process:
            shutil.rmtree(self.root, ignore_errors=True)

    def save(self, step: int, model, unwrapped, tokenizer, trainer_state: dict) -> Path:
        """Write ``step-<step>`` (every process takes part) and keep only it; return its path."""
        from peft import PeftModel

        acc, main = self.accelerator, self.accelerator.is_main_process
        final, tmp = self.root / f"step-{step}", self.root / f".tmp-step-{step}"
        last = trainer_state.get("step") == trainer_state.get("total_steps")
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(model) if self.sharded else None
        if main:
            with no_progress_bars():
                if self.sharded or isinstance(unwrapped, PeftModel):
                    save_model(unwrapped, tmp / "model", state_dict=state_dict)
                else:
                    save_trainable(unwrapped, tmp / "model")
            tokenizer.save_pretrained(str(tmp / "model"))
        if self.sharded or not last:
            acc.save_state(str(tmp / "state"))
        acc.wait_for_everyone()
        if main:
            write_json(tmp / "trainer_state.json", trainer_state)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.root.iterdir():
                if old.name.startswith("step-") and old != final:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final
