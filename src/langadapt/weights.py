"""Weight files written once: a model folder whose tensors another folder already holds byte for byte
links that file (a hard link) instead of writing it again.

A run holds several models that share most of their tensors: the tokenizer stage's resized model and
the align stage's model differ only in the embeddings (every transformer block is frozen in align), and
a training stage's last checkpoint holds exactly the tensors its result then saves. Model folders are
therefore written in two parts, ``model-body.safetensors`` (everything but the embeddings and head) and
``model-embeddings.safetensors``, with the standard ``model.safetensors.index.json`` naming the file of
every tensor, so ``AutoModelForCausalLM.from_pretrained(folder)`` loads them as any sharded checkpoint.
A part is linked only when a candidate file holds the same names, dtypes, shapes and values (checked
here, never assumed); a file system without hard links gets a plain write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

BODY = "body"
EMBEDDINGS = "embeddings"
INDEX = "model.safetensors.index.json"
METADATA = {"format": "pt"}  # what transformers and PEFT write into every safetensors header


def safetensors_files(folders: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The ``.safetensors`` files directly inside each existing folder (the candidates to link)."""
    out = []
    for folder in folders:
        if folder is not None and Path(folder).is_dir():
            out += sorted(Path(folder).glob("*.safetensors"))
    return out


def _holds(path: Path, tensors: dict, metadata: dict | None) -> bool:
    """Whether the file at ``path`` holds exactly ``tensors`` (names, dtypes, shapes, values) and ``metadata``."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if set(f.keys()) != set(tensors) or (metadata is not None and (f.metadata() or {}) != metadata):
                return False
            for name, t in tensors.items():
                if list(f.get_slice(name).get_shape()) != list(t.shape):
                    return False
            for name, t in tensors.items():
                stored = f.get_tensor(name)
                if stored.dtype != t.dtype or not torch.equal(stored, t.detach().to("cpu")):
                    return False
    except (OSError, ValueError, RuntimeError):  # unreadable or not a safetensors file: not a match
        return False
    return True


def link_identical(tensors: dict, dest: Path, candidates: Iterable[Path], *, metadata: dict | None = METADATA) -> bool:
    """Hard-link ``dest`` to the first candidate file holding exactly ``tensors``; False when none does
    (or links are not possible here), and the caller writes the file."""
    for cand in candidates:
        if cand.is_file() and _holds(cand, tensors, metadata):
            try:
                os.link(cand, dest)
            except OSError:
                return False
            return True
    return False


@contextlib.contextmanager
def no_progress_bars():
    """No transformers progress bars ('Writing model shards') while a training stage's own bar is on screen."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def weight_groups(model) -> dict[str, dict]:
    """The model's tensors in two parts: the input embeddings and output head (a tied head once, under the
    embeddings' name, as transformers saves it), and the rest."""
    state = model.state_dict()
    names = {}
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            for pname, p in module.named_parameters(recurse=False):
                names[id(p)] = pname
    emb_keys, seen = [], set()
    params = dict(model.named_parameters(remove_duplicate=False))
    for key in state:
        p = params.get(key)
        if p is not None and id(p) in names:
            if id(p) not in seen:  # the tied head is the same tensor: kept once
                emb_keys.append(key)
                seen.add(id(p))
    emb_ids = {id(params[k]) for k in emb_keys}
    embeddings = {k: state[k] for k in emb_keys}
    body = {k: v for k, v in state.items() if not (k in params and id(params[k]) in emb_ids)}
    return {BODY: body, EMBEDDINGS: embeddings}


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def save_pretrained_shared(model, folder: str | os.PathLike, candidates: Iterable[Path] = ()) -> dict[str, str]:
    """``model.save_pretrained(folder)`` in two parts (``model-body`` and ``model-embeddings``), each a hard
    link to an identical candidate file when there is one; returns ``{part: "linked" | "written"}``.

    The configuration files and every written part come from transformers' own ``save_pretrained`` (so its
    naming rules apply); the index is built from the files' headers.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with no_progress_bars():
        return _save_parts(model, folder, list(candidates))


def _save_parts(model, folder: Path, candidates: list[Path]) -> dict[str, str]:
    model.save_pretrained(str(folder), state_dict={})  # config.json and generation_config.json only
    done: dict[str, str] = {}
    weight_map: dict[str, str] = {}
    total = 0
    for part, tensors in weight_groups(model).items():
        if not tensors:
            continue
        target = folder / f"model-{part}.safetensors"
        if link_identical(tensors, target, candidates):
            files = [target]
            done[part] = "linked"
        else:
            side = folder / f".{part}.tmp"
            shutil.rmtree(side, ignore_errors=True)
            model.save_pretrained(str(side), state_dict=tensors)
            written = sorted(side.glob("*.safetensors"))
            files = [target] if len(written) == 1 else [folder / f"model-{part}-{i + 1:05d}.safetensors"
                                                         for i in range(len(written))]
            for src, dst in zip(written, files):
                os.replace(src, dst)
            shutil.rmtree(side, ignore_errors=True)
            done[part] = "written"
        for f in files:
            for key in _keys(f):
                weight_map[key] = f.name
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return done


def save_adapter_shared(model, folder: str | os.PathLike, candidates: Iterable[str | os.PathLike | None] = (),
                        **save_kwargs) -> str:
    """``PeftModel.save_pretrained(folder, **save_kwargs)``, or, when a candidate adapter folder (a checkpoint's)
    holds exactly the tensors it would write, that folder's files: its ``adapter_model.safetensors`` as a hard
    link, its configuration copied. Returns "linked" or "written"."""
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    found = [Path(c) for c in candidates if c is not None and (Path(c) / "adapter_model.safetensors").is_file()
             and (Path(c) / "adapter_config.json").is_file()]
    if found:
        tensors = get_peft_model_state_dict(model, state_dict=save_kwargs.get("state_dict"),
                                            save_embedding_layers=save_kwargs.get("save_embedding_layers", "auto"))
        folder.mkdir(parents=True, exist_ok=True)
        for cand in found:
            if link_identical(tensors, folder / "adapter_model.safetensors", [cand / "adapter_model.safetensors"]):
                for name in ("adapter_config.json", "README.md"):
                    if (cand / name).is_file():
                        shutil.copyfile(cand / name, folder / name)
                return "linked"
    model.save_pretrained(str(folder), **save_kwargs)
    return "written"
