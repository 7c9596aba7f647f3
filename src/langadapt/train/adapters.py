"""A LoRA trained on top of a merged LoRA, saved as one adapter on the first adapter's own base.

The sft stage starts from pretrain's adapter: it merges it into its base (align's model) and trains a
fresh LoRA on the merged weights. The merged model is a pure function of two folders the run already
holds, so it is not written again: the sft adapter is saved on align's model instead, holding both
LoRAs side by side. Two LoRAs on one layer add up, W + s1·B1A1 + s2·B2A2, and that is one LoRA of rank
r1 + r2 with A = [A1; A2] and B = [B1·s1/s, B2·s2/s] at scale s = s2 (a layer only one of them adapts
gets zero rows, which add exactly nothing). The embeddings and head are the trained model's own. The
result is a standard PEFT folder: ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
folder)`` gives the trained model (the two LoRAs are summed in another order than the merged training
weights, so outputs agree to float rounding, not bit for bit).

Only plain LoRA combines this way (no DoRA, rsLoRA, per-layer ranks, trainable-token rows or extra
modules); ``combine_reason`` says why not, and the stage then keeps the merged model as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

_PLAIN = {"use_dora": False, "use_rslora": False, "use_qalora": False, "lora_bias": False, "bias": "none",
          "rank_pattern": {}, "alpha_pattern": {}, "trainable_token_indices": None, "modules_to_save": None,
          "layer_replication": None, "alora_invocation_tokens": None, "target_parameters": None,
          "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None}
_INITS = (True, False, "gaussian")  # initialisations that leave the base weights as they were


def _config(adapter_dir: str | os.PathLike) -> dict:
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))


def combine_reason(start_adapter: str | os.PathLike, lora, rows: str) -> str | None:
    """Why a LoRA trained on ``start_adapter`` merged into its base cannot be saved on that base as one
    adapter (None: it can). ``lora``: the stage's LoRA settings (None: no LoRA); ``rows``: its train_rows."""
    if lora is None:
        return "no LoRA in this stage"
    if rows == "new":
        return "train_rows: new keeps trainable-token rows"
    cfg = _config(start_adapter)
    if cfg.get("peft_type") != "LORA":
        return f"the start adapter is {cfg.get('peft_type')}, not LoRA"
    for key, plain in _PLAIN.items():
        value = cfg.get(key)
        if (value not in (None, plain)) if isinstance(plain, str) else bool(value):
            return f"the start adapter sets {key}: {value}"
    if isinstance(cfg.get("target_modules"), str):
        return "the start adapter names its layers by a pattern"
    if cfg.get("init_lora_weights", True) not in _INITS:
        return f"the start adapter's init_lora_weights {cfg['init_lora_weights']!r} changes its base weights"
    return None


def _lora_tensors(state: dict) -> dict[str, dict[str, object]]:
    """``{module key: {"A": tensor, "B": tensor}}`` from an adapter state dict (PEFT's saved key names)."""
    out: dict[str, dict[str, object]] = {}
    for k, v in state.items():
        for part in ("A", "B"):
            tag = f".lora_{part}.weight"
            if k.endswith(tag):
                out.setdefault(k[: -len(tag)], {})[part] = v
    return out


def save_combined(model, start_adapter: str | os.PathLike, folder: str | os.PathLike, *, save_kwargs: dict) -> str:
    """Write ``folder`` (adapter_config.json, adapter_model.safetensors): ``model``'s LoRA (trained on the
    start adapter merged into its base) and the start adapter's LoRA as one adapter on that base, with the
    model's embeddings/head. ``save_kwargs``: what ``PeftModel.save_pretrained`` would be given (the state
    dict without a tied head, whether embeddings are saved). Returns the base's path."""
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    from langadapt.models import adapter_base
    from langadapt.train.checkpoint import _tied_head_key
    from langadapt.weights import METADATA

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first_cfg = _config(start_adapter)
    first = load_file(str(Path(start_adapter) / "adapter_model.safetensors"))
    second = get_peft_model_state_dict(model, state_dict=save_kwargs.get("state_dict"),
                                       save_embedding_layers=save_kwargs.get("save_embedding_layers", "auto"))
    cfg2 = model.peft_config["default"]
    r1, r2 = int(first_cfg["r"]), int(cfg2.r)
    s1, s2 = float(first_cfg["lora_alpha"]) / r1, float(cfg2.lora_alpha) / r2
    a_mods, b_mods = _lora_tensors(first), _lora_tensors(second)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(set(a_mods) | set(b_mods)):
        one, two = a_mods.get(key), b_mods.get(key)
        ref = one or two
        n_in, n_out = ref["A"].shape[1], ref["B"].shape[0]
        dtype = ref["A"].dtype
        a1 = one["A"] if one else torch.zeros(r1, n_in, dtype=dtype)
        b1 = one["B"] * (s1 / s2) if one else torch.zeros(n_out, r1, dtype=dtype)
        a2 = two["A"] if two else torch.zeros(r2, n_in, dtype=dtype)
        b2 = two["B"] if two else torch.zeros(n_out, r2, dtype=dtype)
        out[f"{key}.lora_A.weight"] = torch.cat([a1.to(dtype), a2.to(dtype)], dim=0).contiguous()
        out[f"{key}.lora_B.weight"] = torch.cat([b1.to(dtype), b2.to(dtype)], dim=1).contiguous()
    # embeddings/head: the trained model's, which hold the start adapter's when this stage left them alone
    for k, v in second.items():
        if ".lora_" not in k:
            out[k] = v.detach().contiguous()
    head = _tied_head_key(model)
    for k, v in first.items():
        if ".lora_" not in k and k not in out and k != head:
            out[k] = _current(model, k, v)
    save_file(out, str(folder / "adapter_model.safetensors"), metadata=METADATA)

    base = adapter_base(start_adapter)
    cfg = json.loads(json.dumps(cfg2.to_dict(), default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))
    targets = set(_names(first_cfg.get("target_modules"))) | set(_names(cfg.get("target_modules")))
    cfg.update(r=r1 + r2, lora_alpha=s2 * (r1 + r2), target_modules=sorted(targets), inference_mode=True,
               base_model_name_or_path=base)
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return base


def _names(targets) -> list[str]:
    """``target_modules`` as a list of names (PEFT also allows one name, or a regular expression, as a string)."""
    if targets is None:
        return []
    if isinstance(targets, str):
        raise ValueError(f"target_modules as a pattern ({targets!r}) cannot be combined")
    return list(targets)


def _current(model, key: str, saved):
    """The model's present value of a non-LoRA tensor the start adapter saved (its embeddings/head)."""
    state = model.state_dict()
    name = key.removeprefix("base_model.model.")
    for candidate in (key, f"base_model.model.{name}"):
        if candidate in state:
            return state[candidate].detach().contiguous()
    return saved
