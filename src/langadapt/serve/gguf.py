"""``langadapt export --format gguf``: a merged model as one GGUF file that llama.cpp and Ollama run.

Written with the ``gguf`` package (its writer, architecture names, tensor-name maps, special-token
reader and quantizers); no converter script of another project is run. What llama.cpp needs beyond
the tensors, and why:

* Llama (and Mistral, written as the ``llama`` architecture): llama.cpp's rotary embedding turns
  adjacent pairs of dimensions, transformers' turns the two halves of each head, so the rows of the
  query and key projections are reordered per head. Qwen2 and Gemma use the halves layout in both.
  Gemma's norms multiply by ``1 + weight`` in transformers and by ``weight`` in llama.cpp.
* Tied embeddings: no ``output`` tensor; llama.cpp then reads the head from ``token_embd``.
* Rows without a token (a model padded past its tokenizer) get ``[PAD<i>]`` placeholders, since
  llama.cpp wants one token per embedding row.
* Byte-level BPE (GPT-2, SmolLM2, Llama-3, Qwen2) is written as ``tokenizer.ggml.model = "gpt2"``
  with tokens, token types and merges. llama.cpp does not read the pre-tokenizer from
  ``tokenizer.json``: it picks one of its own built-in regexes by the name in ``tokenizer.ggml.pre``.
  We name it by comparing the tokenizer's pre-tokenizer with the ones whose llama.cpp twin is known
  to split identically (``PRE_TOKENIZERS``) and refuse any other.
* The tokenizer stage puts a target-word alternative in front of a byte-level pattern (see
  ``tokenizer/merge.py``). llama.cpp has no such pre-tokenizer, so the file names the base's and
  llama.cpp splits target words where the base does (Persian: at U+200C); merged pieces spanning
  that point never form. ``llama_cpp_tokenizer`` builds that tokenizer with ``tokenizers`` so the
  difference can be measured before anyone runs llama.cpp (bench/gguf_check.py checks it against
  llama.cpp itself); ``export`` reports it.
* Nor does llama.cpp apply a ``tokenizer.json`` normalizer (byte-level: none at all; SentencePiece:
  only its own space escaping). The tokenizer stage's character rewrites (Persian: Arabic yeh and
  kaf to Persian, tatweel removed) are therefore lost there: text written with those characters
  meets the base's pieces for them. No GGUF field can say two byte strings are one token, so this
  is reported (``dropped_rewrites``) and measured the same way, not fixed.
* SentencePiece-style BPE (Llama-2, Mistral, Gemma) is written as ``"llama"`` with scores.
  llama.cpp's SentencePiece tokenizer joins the adjacent pair whose joined text is the
  highest-scoring token; transformers joins the pair of the earliest merge. A token's score is
  therefore minus the rank of the first merge that builds it, which makes the two orders agree.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from langadapt.errors import LangadaptError

QUANTS = ("f32", "f16", "q8_0")

# HF pre-tokenizer patterns whose llama.cpp pre-tokenizer (by name) splits text the same way.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[tuple, str] = {
    (("regex", GPT2_PATTERN),): "gpt-2",
    (("digits",), ("regex", GPT2_PATTERN)): "smollm",
    (("regex", LLAMA3_PATTERN),): "llama-bpe",
    (("regex", QWEN2_PATTERN),): "qwen2",
}
"""Byte-level pre-tokenizers as (step, ...) tuples -> ``tokenizer.ggml.pre``. "gpt-2" is what
transformers makes of SmolLM2's own GGUF (it drops the digit split that llama.cpp's "smollm" has)."""

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_EXTENDED = re.compile(r"^(?P<word> \?\[[^\]]+\]\[[^\]]+\]\*)\|\(\?:(?P<base>.*)\)$", re.S)


@dataclass(frozen=True)
class Arch:
    """How one transformers architecture is written for llama.cpp."""

    gguf_arch: str  # a gguf.MODEL_ARCH member name
    permute_qk: bool  # llama.cpp rotates adjacent pairs, transformers the two halves of a head
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + weight)
    activation: tuple[str, ...] = ("silu",)
    write_vocab_size: bool = False
    always_tied: bool = False


ARCHITECTURES = {
    "LlamaForCausalLM": Arch("LLAMA", permute_qk=True, write_vocab_size=True),
    "MistralForCausalLM": Arch("LLAMA", permute_qk=True, write_vocab_size=True),
    "Qwen2ForCausalLM": Arch("QWEN2", permute_qk=False),
    "GemmaForCausalLM": Arch("GEMMA", permute_qk=False, norm_offset=1.0,
                             activation=("gelu_pytorch_tanh", "gelu"), always_tied=True),
}


def check_architecture(model) -> Arch:
    """The ``Arch`` for ``model``, or a one-line error naming what is supported."""
    name = type(model).__name__
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise LangadaptError(f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {name} "
                             "(export it with --format hf and convert it with llama.cpp's own tools)")
    cfg = model.config
    act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
    if act not in arch.activation:
        raise LangadaptError(f"GGUF export: {name} with activation {act!r} is not what llama.cpp's "
                             f"{arch.gguf_arch.lower()} architecture computes ({', '.join(arch.activation)})")
    if getattr(cfg, "mlp_bias", False):
        raise LangadaptError(f"GGUF export: {name} with mlp_bias=True has no llama.cpp equivalent")
    return arch


# ---------------------------------------------------------------------------- the tokenizer


def _steps(node: dict | None, key: str = "pretokenizers") -> list[dict]:
    """The steps of a tokenizer.json pre-tokenizer (or normalizer, with ``key``), Sequences flattened."""
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [s for child in node.get(key, []) for s in _steps(child, key)]
    return [node]


def pre_tokenizer_signature(pre: dict | None) -> tuple[tuple, str | None]:
    """(signature, target-word pattern or None) of a byte-level tokenizer.json pre-tokenizer.

    The signature lists the splitting steps (``("regex", pattern)`` or ``("digits",)``) with the
    ByteLevel step's built-in GPT-2 regex written out, so equivalent spellings compare equal. The
    tokenizer stage's target-word alternative is taken off the pattern and returned apart.
    """
    sig: list[tuple] = []
    word = None
    for s in _steps(pre):
        kind = s.get("type")
        if kind == "ByteLevel":
            if s.get("add_prefix_space"):
                sig.append(("bytelevel-prefix-space",))
            if s.get("use_regex", True):
                sig.append(("regex", GPT2_PATTERN))
        elif kind == "Split" and "Regex" in s.get("pattern", {}) and s.get("behavior") == "Isolated" \
                and not s.get("invert"):
            pattern = s["pattern"]["Regex"]
            m = _EXTENDED.match(pattern)
            if m:
                word, pattern = m.group("word"), m.group("base")
            sig.append(("regex", pattern))
        elif kind == "Digits":
            sig.append(("digits",) if s.get("individual_digits") else ("digits-grouped",))
        else:
            sig.append((kind or "?", json.dumps(s, sort_keys=True)))
    return tuple(sig), word


def llama_cpp_pre(tj: dict) -> tuple[str, str | None]:
    """(``tokenizer.ggml.pre`` name, target-word pattern llama.cpp will not apply, or None)."""
    sig, word = pre_tokenizer_signature(tj.get("pre_tokenizer"))
    name = PRE_TOKENIZERS.get(sig)
    if name is None:
        shown = ", ".join(s[0] if s[0] != "regex" else f"regex {s[1][:40]}…" for s in sig) or "none"
        raise LangadaptError(f"GGUF export: llama.cpp picks a byte-level pre-tokenizer by name and none of the "
                             f"known ones ({', '.join(sorted(set(PRE_TOKENIZERS.values())))}) splits like this "
                             f"tokenizer's ({shown}); export with --format hf")
    return name, word


def _is_space_escape(step: dict) -> bool:
    """SentencePiece's own space handling, which llama.cpp does itself."""
    return step.get("type") == "Prepend" or (step.get("type") == "Replace" and step.get("pattern") == {"String": " "}
                                             and step.get("content") == "\u2581")


def normalizer_for_llama_cpp(tj: dict) -> tuple[dict | None, dict[str, str]]:
    """(the part of ``tj``'s normalizer llama.cpp applies, the string rewrites it drops: from -> to).

    llama.cpp's byte-level tokenizer normalizes nothing, its SentencePiece one only escapes spaces."""
    from langadapt.tokenizer.merge import BYTE_LEVEL, detect_family

    steps = _steps(tj.get("normalizer"), "normalizers")
    kept = [] if detect_family(tj) == BYTE_LEVEL else [s for s in steps if _is_space_escape(s)]
    dropped = {s["pattern"]["String"]: s.get("content", "") for s in steps
               if s not in kept and s.get("type") == "Replace" and "String" in s.get("pattern", {})}
    return ({"type": "Sequence", "normalizers": kept} if kept else None), dropped


def llama_cpp_tokenizer(tj: dict):
    """A ``tokenizers.Tokenizer`` that splits text the way llama.cpp will run the exported file:
    the same vocabulary and merges, without the target-word alternative of the pre-tokenizer and
    without the normalizer steps llama.cpp does not apply."""
    from tokenizers import Tokenizer

    from langadapt.tokenizer.merge import BYTE_LEVEL, detect_family

    tj = json.loads(json.dumps(tj))
    if detect_family(tj) == BYTE_LEVEL:
        _, word = llama_cpp_pre(tj)
        if word is not None:
            tj["pre_tokenizer"] = _strip_word(tj["pre_tokenizer"], word)
    tj["normalizer"], _ = normalizer_for_llama_cpp(tj)
    return Tokenizer.from_str(json.dumps(tj))


def tokenizer_drift(tokenizer, lines: list[str]) -> dict | None:
    """How many of ``lines`` llama.cpp will tokenize differently from ``tokenizer`` (None without lines)."""
    if not lines:
        return None
    seen_by_llama_cpp = llama_cpp_tokenizer(json.loads(tokenizer.backend_tokenizer.to_str()))
    differ = tokens = tokens_llama_cpp = 0
    for x in lines:
        ours = tokenizer(x, add_special_tokens=False)["input_ids"]
        theirs = seen_by_llama_cpp.encode(x, add_special_tokens=False).ids
        differ += ours != theirs
        tokens += len(ours)
        tokens_llama_cpp += len(theirs)
    return {"lines": len(lines), "differ": differ, "tokens": tokens, "tokens_llama_cpp": tokens_llama_cpp}


def _strip_word(pre: dict, word: str) -> dict:
    out = []
    prefix = f"{word}|(?:"
    for s in _steps(pre):
        rx = s.get("pattern", {}).get("Regex", "") if s.get("type") == "Split" else ""
        if rx.startswith(prefix):
            out.append({**s, "pattern": {"Regex": rx[len(prefix):-1]}})
        else:
            out.append(s)
    return {"type": "Sequence", "pretokenizers": out}


@dataclass
class GgufVocab:
    """What the GGUF file says about the tokenizer."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    dropped_word_pattern: str | None = None  # the tokenizer stage's alternative llama.cpp does not apply
    add_space_prefix: bool | None = None
    dropped_rewrites: dict[str, str] = field(default_factory=dict)  # normalizer rewrites llama.cpp does not apply


def _add_space_prefix(tj: dict) -> bool:
    for n in _steps(tj.get("normalizer"), "normalizers"):
        if n.get("type") == "Prepend":
            return True
    for p in _steps(tj.get("pre_tokenizer")):
        if p.get("type") == "Metaspace":
            return p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never") != "never"
    return False


def gguf_vocab(tj: dict, rows: int) -> GgufVocab:
    """Tokens (one per embedding row), types, scores or merges, and pre-tokenizer name for ``tj``."""
    import gguf

    from langadapt.tokenizer.merge import BYTE_LEVEL, detect_family

    family = detect_family(tj)
    model = tj["model"]
    by_id: dict[int, str] = {i: s for s, i in model["vocab"].items()}
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    if max([*by_id, *added], default=-1) >= rows:
        raise LangadaptError(f"GGUF export: the tokenizer uses id {max([*by_id, *added]):,} but the model has only "
                             f"{rows:,} embedding rows")
    unk = model.get("unk_token")
    tokens: list[str] = []
    types: list[int] = []
    T = gguf.TokenType
    for i in range(rows):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(T.CONTROL if added[i].get("special") else T.USER_DEFINED)
        elif i in by_id:
            s = by_id[i]
            tokens.append(s)
            if family != BYTE_LEVEL and _BYTE_TOKEN.match(s):
                types.append(T.BYTE)
            elif s == unk:
                types.append(T.UNKNOWN)
            else:
                types.append(T.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        dup = next(t for t in tokens if t in seen or seen.add(t))
        raise LangadaptError(f"GGUF export: the token {dup!r} appears twice; llama.cpp needs unique token texts")
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    _, rewrites = normalizer_for_llama_cpp(tj)
    if family == BYTE_LEVEL:
        if any(" " in a or " " in b for a, b in pairs):
            raise LangadaptError("GGUF export: a merge holds a raw space, which byte-level BPE never produces")
        pre, word = llama_cpp_pre(tj)
        return GgufVocab("gpt2", tokens, [int(t) for t in types], merges=[f"{a} {b}" for a, b in pairs],
                         pre=pre, dropped_word_pattern=word, dropped_rewrites=rewrites)
    # SentencePiece-style: score = minus the rank of the first merge that builds the token, so
    # llama.cpp's "best-scoring joined token first" replays transformers' "earliest merge first".
    first_rank: dict[str, int] = {}
    for r, (a, b) in enumerate(pairs):
        first_rank.setdefault(a + b, r)
    floor = -float(len(pairs) + 1)  # tokens no merge builds: joined only when nothing else can be
    scores = [-float(first_rank[t]) if types[i] == T.NORMAL and t in first_rank else
              (floor if types[i] == T.NORMAL and len(t) > 1 else 0.0) for i, t in enumerate(tokens)]
    return GgufVocab("llama", tokens, [int(t) for t in types], scores=scores, add_space_prefix=_add_space_prefix(tj),
                     dropped_rewrites=rewrites)


def _adds_special(tokenizer) -> tuple[bool, bool]:
    """Whether encoding adds bos / eos, as the tokenizer behaves (not as its config claims)."""
    probe = "a"
    with_special = tokenizer(probe)["input_ids"]
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    extra = len(with_special) - len(bare)
    bos = extra > 0 and tokenizer.bos_token_id is not None and with_special[0] == tokenizer.bos_token_id
    eos = extra > 0 and tokenizer.eos_token_id is not None and with_special[-1] == tokenizer.eos_token_id
    return bool(bos), bool(eos)


# ---------------------------------------------------------------------------- the tensors


def permute_for_llama_cpp(w, n_head: int):
    """Rows of a q/k projection (or bias) from transformers' half-split rotary layout to llama.cpp's
    interleaved one: within each head, dimension i of the first half goes next to dimension i of the second."""
    shape = w.shape
    head_dim = shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def _rope(cfg) -> dict:
    """Rope settings of a transformers 5 config (``rope_parameters``) or a 4.x one (``rope_scaling``)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if not params:
        params = dict(getattr(cfg, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    params = dict(params.get("full_attention", params))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _llama3_rope_factors(cfg):
    """Per-frequency divisors llama.cpp applies for Llama-3.1-style rope scaling (``rope_freqs``),
    taken from transformers' own computation so both readers agree."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    theta = _rope(cfg)["rope_theta"]
    plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    return (plain / scaled.float()).numpy()


@dataclass
class _Tensor:
    name: str
    source: str | None  # state_dict key, or None for a computed tensor
    qtype: object
    shape: tuple[int, ...]
    transform: str = ""  # "permute_q", "permute_k", "norm_offset"


def _qtype_for(name: str, shape: tuple[int, ...], quant: str):
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) == 1 or name.endswith("_norm.weight") or quant == "f32":
        return Q.F32  # norms and biases stay full precision, as llama.cpp's converter keeps them
    if quant == "q8_0":
        block, _ = gguf.GGML_QUANT_SIZES[Q.Q8_0]
        return Q.Q8_0 if shape[-1] % block == 0 else Q.F16
    return Q.F16


def _plan_tensors(model, arch: Arch, quant: str) -> list[_Tensor]:
    import gguf

    cfg = model.config
    state = model.state_dict()
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf_arch), cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    if arch.always_tied and not tied:
        raise LangadaptError(f"GGUF export: llama.cpp's {arch.gguf_arch.lower()} architecture always ties the output "
                             "head to the embeddings, and this model's are untied")
    plan: list[_Tensor] = []
    rope = _rope(cfg)
    if rope["rope_type"] == "llama3":
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        plan.append(_Tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None,
                            gguf.GGMLQuantizationType.F32, (head_dim // 2,), "llama3_factors"))
    for key, t in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key == "lm_head.weight" and tied:
            continue
        stem, suffix = (key[: -len(".weight")], ".weight") if key.endswith(".weight") else \
            (key[: -len(".bias")], ".bias") if key.endswith(".bias") else (key, "")
        name = tmap.get_name(stem)
        if name is None or not suffix:
            raise LangadaptError(f"GGUF export: no llama.cpp tensor for {key} in the {arch.gguf_arch.lower()} "
                                 "architecture; this model has parts llama.cpp would not run")
        name += suffix
        shape = tuple(t.shape)
        transform = ""
        if arch.permute_qk and stem.endswith("self_attn.q_proj"):
            transform = "permute_q"
        elif arch.permute_qk and stem.endswith("self_attn.k_proj"):
            transform = "permute_k"
        elif arch.norm_offset and stem.endswith("norm"):
            transform = "norm_offset"
        plan.append(_Tensor(name, key, _qtype_for(name, shape, quant), shape, transform))
    return plan


def _tensor_data(model, arch: Arch, item: _Tensor, state: dict):
    import gguf
    import numpy as np
    import torch

    cfg = model.config
    if item.transform == "llama3_factors":
        data = np.asarray(_llama3_rope_factors(cfg), dtype=np.float32)
    else:
        t = state[item.source].detach().to(torch.float32).cpu()
        if item.transform == "permute_q":
            t = permute_for_llama_cpp(t, cfg.num_attention_heads)
        elif item.transform == "permute_k":
            t = permute_for_llama_cpp(t, cfg.num_key_value_heads)
        elif item.transform == "norm_offset":
            t = t + arch.norm_offset
        data = t.numpy()
    Q = gguf.GGMLQuantizationType
    if item.qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if item.qtype == Q.F16:
        return np.ascontiguousarray(data.astype(np.float16))
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), item.qtype)


# ---------------------------------------------------------------------------- the file


@dataclass
class GgufReport:
    """What ``write_gguf`` wrote."""

    path: Path
    arch: str
    quant: str
    tokens: int
    tokenizer_model: str
    pre: str | None
    dropped_word_pattern: str | None
    tensors: int
    bytes: int
    dropped_rewrites: dict[str, str] = field(default_factory=dict)

    @property
    def tokenizes_differently(self) -> bool:
        """Whether llama.cpp may tokenize some text other than transformers does with this tokenizer."""
        return self.dropped_word_pattern is not None or bool(self.dropped_rewrites)


def write_gguf(model, tokenizer, path: str | os.PathLike, *, quant: str = "f16", name: str = "model",
               log=print) -> GgufReport:
    """Write ``model`` (a plain transformers causal LM, LoRA already merged) and ``tokenizer`` to ``path``."""
    import gguf
    import numpy as np

    from langadapt.files import atomic_path

    if quant not in QUANTS:
        raise LangadaptError(f"--quant must be one of {', '.join(QUANTS)} (got {quant})")
    arch = check_architecture(model)
    cfg = model.config
    rows = model.get_input_embeddings().weight.shape[0]
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise LangadaptError("GGUF export needs a tokenizer with a tokenizer.json (a fast tokenizer); "
                             f"this one is {type(tokenizer).__name__}")
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = gguf_vocab(tj, rows)
    rope = _rope(cfg)
    if rope["rope_type"] not in ("default", "linear", "llama3", "yarn"):
        raise LangadaptError(f"GGUF export: rope scaling {rope['rope_type']!r} is not supported")
    sliding = getattr(cfg, "sliding_window", None)
    if sliding and arch.gguf_arch == "LLAMA" and sliding < cfg.max_position_embeddings:
        log(f"note: llama.cpp's llama architecture attends over the whole context, not a {sliding}-token window")
    plan = _plan_tensors(model, arch, quant)
    state = model.state_dict()
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    path = Path(path)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch.gguf_arch)])
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_freq_base(float(rope["rope_theta"]))
        if head_dim != cfg.hidden_size // cfg.num_attention_heads or arch.gguf_arch == "GEMMA":
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        if arch.write_vocab_size:
            w.add_vocab_size(rows)
            w.add_rope_dimension_count(head_dim)
        if rope["rope_type"] == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope["factor"]))
        elif rope["rope_type"] == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(rope["factor"]))
            w.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings",
                                                         cfg.max_position_embeddings)))
        w.add_file_type(int(ftype))
        if quant == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(w, tokenizer, vocab, cfg, rows)
        plain = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
        for item in plan:  # sizes first: the header lists every tensor before any data
            dtype = np.dtype(plain.get(item.qtype, np.uint8))
            shape = item.shape if item.qtype in plain else gguf.quants.quant_shape_to_byte_shape(item.shape, item.qtype)
            w.add_tensor_info(item.name, shape, dtype, int(np.prod(shape)) * dtype.itemsize,
                              raw_dtype=None if item.qtype in plain else item.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for item in plan:  # one tensor in memory at a time: a 7B model is not copied whole
            w.write_tensor_data(_tensor_data(model, arch, item, state))
        w.close()
    return GgufReport(path, arch.gguf_arch.lower(), quant, rows, vocab.model, vocab.pre, vocab.dropped_word_pattern,
                      len(plan), path.stat().st_size, vocab.dropped_rewrites)


def _add_tokenizer(w, tokenizer, vocab: GgufVocab, cfg, rows: int) -> None:
    import gguf

    w.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    # SpecialVocab reads the ids and chat template from a saved folder, as the hub files hold them.
    with tempfile.TemporaryDirectory(prefix="langadapt-gguf-") as d:
        tokenizer.save_pretrained(d)
        cfg.to_json_file(str(Path(d) / "config.json"))
        special = gguf.SpecialVocab(d, load_merges=False, n_vocab=rows)
    bos, eos = _adds_special(tokenizer)
    special.add_special_token = {"bos": bos, "eos": eos}
    for typ, tok_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                        ("pad", tokenizer.pad_token_id), ("unk", tokenizer.unk_token_id)):
        if tok_id is not None and tok_id < rows:
            special.special_token_ids[typ] = tok_id  # the loaded tokenizer is what training used
    special.add_to_gguf(w, quiet=True)
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)


def tokenizer_caveats(report: GgufReport, lang: str = "target-language") -> list[str]:
    """Why llama.cpp may tokenize text otherwise than transformers, one clause per cause (none: [])."""
    out = []
    if report.dropped_word_pattern is not None:
        out.append(f"llama.cpp has no pre-tokenizer for the tokenizer stage's target-word pattern, so the file names "
                   f"the base's ('{report.pre}') and llama.cpp splits {lang} words where the base tokenizer does "
                   "(Persian: at the zero-width non-joiner)")
    if report.dropped_rewrites:
        shown = ", ".join(f"{k}\u2192{v}" if v else f"{k} removed" for k, v in report.dropped_rewrites.items())
        out.append(f"llama.cpp applies no tokenizer.json normalizer, so the tokenizer stage's character rewrites "
                   f"({shown}) are not made there: text written with those characters gets the base's pieces")
    return out


def usage_lines(file_name: str) -> list[str]:
    """The model card's "Use" section for a GGUF export."""
    return ["## Use", "",
            "With llama.cpp (`llama-cli` and `llama-server` ship with it):", "",
            "```bash", f"llama-cli -m {file_name} -cnv", f"llama-server -m {file_name} --port 8080", "```", "",
            "With Ollama, a `Modelfile` beside the file:", "",
            "```text", f"FROM ./{file_name}", "```", "",
            "```bash", "ollama create my-model -f Modelfile && ollama run my-model", "```", ""]
