"""How a training stage ends, the same way for align, pretrain and sft: the result saved by the main
process as a standard folder, the checkpoints dropped, every process waiting, and the held-out
bits per character of the stage logged.

A model with LoRA layers is saved as a PEFT adapter folder (``adapter/``) whose
``base_model_name_or_path`` names the model it was trained on (an absolute path for a local
folder, so ``PeftModel``/``AutoPeftModelForCausalLM`` load it without langadapt); any other model
(embeddings and head trained, trainable-token deltas merged back) as a full ``save_pretrained``
folder (``model/``). Both hold the tokenizer.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from langadapt.distributed import is_main_process, wait_for_everyone
from langadapt.files import atomic_path


def base_vocab_of(model, train_rows: str, where: str) -> int | None:
    """Rows before the tokenizer merge (``langadapt_base_vocab_size`` in the model's config)."""
    from langadapt.errors import LangadaptError

    rows = getattr(model.config, "langadapt_base_vocab_size", None)
    if train_rows == "new" and rows is None:
        raise LangadaptError(f"train_rows: new needs to know which embedding rows are new, but {where}/config.json "
                             "has no 'langadapt_base_vocab_size' (was it made by the tokenizer stage?); "
                             "use train_rows: all")
    return rows


def has_lora(model) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


def unpeft(model):
    """A plain model: trainable-token deltas (new rows only) and any LoRA written back into the weights."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def save_result(model, tokenizer, out_dir: Path, *, base: str | None = None, reuse: Iterable[Path] = (),
                stacked_on: str | None = None) -> Path:
    """Write ``out_dir/adapter`` (a model with LoRA; ``base`` is its base model) or ``out_dir/model``; return it.

    Weight files identical to one in a ``reuse`` folder (an earlier stage's model, this stage's last
    checkpoint) are hard links to it rather than a second copy (``langadapt.weights``). ``stacked_on``: the
    adapter whose merge into its base the model's LoRA was trained on; the adapter is then saved on that
    adapter's base, holding both LoRAs (``train.adapters``), and ``base`` is ignored.
    """
    from langadapt.train.adapters import save_combined
    from langadapt.train.checkpoint import adapter_save_kwargs
    from langadapt.weights import safetensors_files, save_adapter_shared, save_pretrained_shared

    reuse = list(reuse)
    candidates = safetensors_files(reuse)
    if has_lora(model):
        final = out_dir / "adapter"
        with atomic_path(final) as tmp:
            if stacked_on is not None:
                base = save_combined(model, stacked_on, tmp, save_kwargs=adapter_save_kwargs(model))
            else:
                save_adapter_shared(model, tmp, reuse, **adapter_save_kwargs(model))
            tokenizer.save_pretrained(str(tmp))
            cfg_path = tmp / "adapter_config.json"
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            cfg["base_model_name_or_path"] = str(Path(base).resolve()) if base and Path(base).exists() else base
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        return final
    final = out_dir / "model"
    with atomic_path(final) as tmp:
        save_pretrained_shared(unpeft(model), tmp, candidates)
        tokenizer.save_pretrained(str(tmp))
    return final


def reusable_folders(ctx) -> list[Path]:
    """Folders whose weight files a stage's result may link: the models of earlier stages and the stage's
    own checkpoints."""
    from langadapt import stages

    earlier = [ctx.layout.model(s) for s in stages.models_before(ctx.stage, base=False)]
    own = sorted((ctx.out_dir / "checkpoints").glob("*/step-*/model"))
    return [p for p in earlier if p is not None] + own


def check_finite(ctx, model) -> None:
    """Refuse (``DivergedError``, on every process) a model with NaN or infinite weights: nothing is saved and
    the stage gets no completion marker."""
    from langadapt.errors import DivergedError
    from langadapt.train.checkpoint import nonfinite_weights, sum_over_processes
    from langadapt.train.metrics import DIVERGED_HINT

    bad, names = nonfinite_weights(model)
    if sum_over_processes(bad):
        where = f"{bad:,} NaN or infinite weights (in {', '.join(names)})" if bad else \
            "NaN or infinite weights (in another process's shard)"
        raise DivergedError(f"{ctx.stage}: the trained model has {where}; it was not saved. {DIVERGED_HINT}")


def drop_checkpoints(out_dir: Path) -> None:
    """The result folder holds what the checkpoints held; they go (a SmolLM2 checkpoint is about 1 GB)."""
    if is_main_process():
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)


def finish_stage(ctx, model, tokenizer, *, base: str | None = None, keep_checkpoints: bool = False,
                 stacked_on: str | None = None) -> Path:
    """Refuse a model with NaN or infinite weights (``check_finite``), save the stage's result (main process;
    ``stacked_on``: see ``save_result``), drop its checkpoints unless ``keep_checkpoints`` (sft keeps them until
    its samples are written), wait for every process, log its bits per character; return the folder written."""
    from langadapt.train.metrics import describe_bpc

    out = ctx.out_dir
    final = out / ("adapter" if has_lora(model) else "model")
    check_finite(ctx, model)
    if is_main_process():
        final = save_result(model, tokenizer, out, base=base, reuse=reusable_folders(ctx), stacked_on=stacked_on)
        if not keep_checkpoints:
            drop_checkpoints(out)
    wait_for_everyone()
    bpc = ctx.layout.bpc(ctx.stage)
    if bpc:
        ctx.log(f"{ctx.stage}: held-out bits per character, before -> after the stage\n" + describe_bpc(bpc))
    else:
        ctx.log(f"{ctx.stage}: no held-out text in data.heldout; bits per character not measured")
    ctx.log(f"{ctx.stage}: saved {final}")
    return final
