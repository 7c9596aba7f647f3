"""Scoring: batched log-likelihood of label options, batched generation, and answer parsing.

Log-likelihood follows lm-evaluation-harness: the score of an option is the sum of the log
probabilities of its tokens after the prompt; the prediction is the option with the highest score.
Options of one prompt share it, so by default a batch of prompts is run once (left-padded, keeping
the KV cache), then all their options continue from that cache in one more call. Options that are a
single token (option numbers, many label words) need no second call at all.

Generation is greedy by default, batched with left padding (prompts sorted by length so a batch
wastes little padding), with a repetition penalty and a token limit from the task.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from langadapt.errors import LangadaptError
from langadapt.models import left_pad

Progress = Callable[[int], None]


# --------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    context: list[int]
    options: list[list[int]]


def encode_requests(tokenizer, contexts: list[str], options: list[list[str]], *, add_special_tokens: bool,
                    max_length: int) -> list[Encoded]:
    """Token ids of each prompt and of each option's continuation.

    The continuation is what the option adds when prompt and option are encoded together (so a
    tokenizer that merges across the boundary is scored the way it would read the text); when that
    prefix does not match the prompt's own encoding, the option is encoded alone. Prompts longer than
    ``max_length`` lose tokens on the left.
    """
    out = []
    for ctx, opts in zip(contexts, options):
        c = tokenizer(ctx, add_special_tokens=add_special_tokens)["input_ids"]
        conts = []
        for o in opts:
            whole = tokenizer(ctx + o, add_special_tokens=add_special_tokens)["input_ids"]
            cont = whole[len(c):] if whole[: len(c)] == c and len(whole) > len(c) else \
                tokenizer(o, add_special_tokens=False)["input_ids"]
            if not cont:
                raise LangadaptError(f"option {o!r} encodes to no tokens")
            conts.append(cont)
        room = max_length - max(len(x) for x in conts)
        if room < 1:
            raise LangadaptError(f"an option is longer than max_length ({max_length} tokens)")
        out.append(Encoded(c[-room:], conts))
    return out


def _forward(model, **kw):
    try:
        return model(**kw)
    except TypeError:  # architectures without logits_to_keep
        kw.pop("logits_to_keep", None)
        return model(**kw)


def _cache_kwarg(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` during 5.x; use whichever forward takes."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _token_logprobs(logits, targets):
    """log p(target) for each position: logits [..., V], targets [...] (no full log-softmax copy kept)."""
    import torch

    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def score_options(model, encoded: list[Encoded], *, batch_size: int, pad_id: int, share_prefix: bool = True,
                  progress: Progress | None = None) -> list[list[float]]:
    """Sum of log-probabilities of every option's tokens given its prompt, for every request.

    ``batch_size`` is the number of prompts per model call (``share_prefix``) or of prompt+option
    sequences per call (without sharing, the way lm-evaluation-harness batches).
    """
    import torch

    device = next(model.parameters()).device
    scores: list[list[float]] = [[0.0] * len(e.options) for e in encoded]
    model.eval()
    with torch.inference_mode():
        if share_prefix:
            prefix_len, prefix_cache = _common_prefix(model, encoded, device)
            order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].context))
            for b in range(0, len(order), batch_size):
                idx = order[b: b + batch_size]
                _score_shared(model, [encoded[i] for i in idx], [scores[i] for i in idx], pad_id, device,
                              prefix_len, prefix_cache)
                if progress:
                    progress(len(idx))
        else:
            flat = [(i, j) for i, e in enumerate(encoded) for j in range(len(e.options))]
            flat.sort(key=lambda ij: -(len(encoded[ij[0]].context) + len(encoded[ij[0]].options[ij[1]])))
            done: dict[int, int] = {}
            for b in range(0, len(flat), batch_size):
                chunk = flat[b: b + batch_size]
                seqs = [encoded[i].context + encoded[i].options[j] for i, j in chunk]
                conts = [encoded[i].options[j] for i, j in chunk]
                keep = max(len(c) for c in conts) + 1
                ids, mask, pos = left_pad(seqs, pad_id, device)
                logits = _forward(model, input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
                logits = logits[:, -keep:]
                for r, ((i, j), c) in enumerate(zip(chunk, conts)):
                    m = len(c)
                    tgt = torch.tensor(c, device=device)
                    lp = _token_logprobs(logits[r, keep - m - 1: keep - 1], tgt)
                    scores[i][j] = float(lp.sum())
                    done[i] = done.get(i, 0) + 1
                    if progress and done[i] == len(encoded[i].options):
                        progress(1)
    return scores


MIN_COMMON_PREFIX = 8  # tokens; below this a separate pass over the common prefix is not worth it


def _common_prefix(model, encoded: list[Encoded], device) -> tuple[int, object]:
    """Run the tokens every prompt starts with (chat preamble, instruction) once, and keep their cache.

    Each prompt keeps at least one token of its own, whose logits score the first option token.
    """
    import os

    import torch

    if len(encoded) < 2:
        return 0, None
    common = len(os.path.commonprefix([e.context for e in encoded]))
    common = min(common, min(len(e.context) for e in encoded) - 1)
    if common < MIN_COMMON_PREFIX:
        return 0, None
    ids = torch.tensor([encoded[0].context[:common]], dtype=torch.long, device=device)
    res = _forward(model, input_ids=ids, use_cache=True, logits_to_keep=1)
    return common, getattr(res, "cache", None) or getattr(res, "past_key_values", None)


def _score_shared(model, batch: list[Encoded], out: list[list[float]], pad_id: int, device,
                  prefix_len: int = 0, prefix_cache=None) -> None:
    """Score one batch: [common prefix (cached)] [padding] [rest of each prompt], then the options."""
    import copy

    import torch

    ids, mask, pos = left_pad([e.context[prefix_len:] for e in batch], pad_id, device)
    rows = [(i, j) for i, e in enumerate(batch) for j, o in enumerate(e.options) if len(o) > 1]
    kw = {}
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(batch))
        kw[_cache_kwarg(model)] = cache
        mask = torch.cat([torch.ones((len(batch), prefix_len), dtype=mask.dtype, device=device), mask], dim=1)
        pos = pos + prefix_len
    res = _forward(model, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=bool(rows) or bool(kw),
                   logits_to_keep=1, **kw)
    last = res.logits[:, -1].float()
    last = last - torch.logsumexp(last, dim=-1, keepdim=True)
    for i, e in enumerate(batch):
        for j, o in enumerate(e.options):
            out[i][j] = float(last[i, o[0]])
    if not rows:
        return
    cache = getattr(res, "cache", None) or getattr(res, "past_key_values", None)
    sel = torch.tensor([i for i, _ in rows], device=device)
    cache.batch_select_indices(sel)
    conts = [batch[i].options[j][:-1] for i, j in rows]
    width = max(len(c) for c in conts)
    ids2 = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask2 = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for r, c in enumerate(conts):
        ids2[r, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask2[r, : len(c)] = 1
    ctx_len = mask.sum(-1)[sel]
    pos2 = ctx_len.unsqueeze(1) + torch.arange(width, device=device).unsqueeze(0)
    logits = _forward(model, input_ids=ids2, attention_mask=torch.cat([mask[sel], mask2], dim=1), position_ids=pos2,
                      use_cache=False, **{_cache_kwarg(model): cache}).logits
    for r, (i, j) in enumerate(rows):
        tgt = torch.tensor(batch[i].options[j][1:], device=device)
        out[i][j] += float(_token_logprobs(logits[r, : len(tgt)], tgt).sum())


# --------------------------------------------------------------------------- answer parsing

_SCRIPT_OF_LANG = {
    **dict.fromkeys(["fa", "ar", "ur", "ps", "ckb", "ug", "sd"], "ARABIC"),
    **dict.fromkeys(["en", "fr", "de", "es", "it", "pt", "nl", "tr", "id", "vi", "pl", "sv", "cs", "ro", "sw"], "LATIN"),
    **dict.fromkeys(["ru", "uk", "bg", "sr", "kk"], "CYRILLIC"),
    "el": "GREEK", "he": "HEBREW", "hi": "DEVANAGARI", "ko": "HANGUL",
}
_DIGITS = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789")
_ARABIC_FORMS = str.maketrans({"ي": "ی", "ك": "ک", "ى": "ی", "\u200c": " "})
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """Case, digits and Arabic/Persian letter variants folded, so answers match label words."""
    return unicodedata.normalize("NFKC", text).translate(_DIGITS).translate(_ARABIC_FORMS).lower()


def script_share(text: str, lang: str) -> float | None:
    """Share of letters written in ``lang``'s script; None when unknown or too few letters to tell."""
    script = _SCRIPT_OF_LANG.get(lang)
    letters = [c for c in text if c.isalpha()]
    if script is None or len(letters) < 3:
        return None
    return sum(1 for c in letters if unicodedata.name(c, "").startswith(script)) / len(letters)


def _ngrams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]


def copies_input(output: str, source: str, *, share: float = 0.6, min_tokens: int = 4) -> bool:
    """Whether most of the output's word trigrams come from the input (the model repeated it)."""
    out = _WORD.findall(normalize(output))
    if len(out) < min_tokens:
        return False
    src = set(_ngrams(_WORD.findall(normalize(source)), 3))
    grams = _ngrams(out, 3)
    return bool(grams) and sum(g in src for g in grams) / len(grams) >= share


_LEADING = re.compile(r"^\s*(?:answer|label|sentiment|output|پاسخ|جواب|برچسب)\s*[:：]\s*", re.IGNORECASE)


def parse_choice(output: str, options: list[tuple[str, list[str]]], *, source: str = "") -> tuple[str | None, str | None]:
    """The label a generated answer names, or (None, reason) when it does not follow the instruction.

    ``options`` pairs each canonical label with the strings that name it (label words in every
    language, or an option's number and text). The earliest mention wins; an answer that copies the
    input is not counted even if a label word occurs inside the copy.
    """
    text = normalize(_LEADING.sub("", output.strip()))
    text = text.strip(" \t\n\"'`*.،,:;()[]«»")
    if not text:
        return None, "empty"
    best: tuple[int, int, str] | None = None
    for label, words in options:
        for w in words:
            w = normalize(w).strip()
            if not w:
                continue
            pat = r"(?<!\d)" + re.escape(w) + r"(?!\d)" if w.isdigit() else r"(?<!\w)" + re.escape(w) + r"(?!\w)"
            m = re.search(pat, text)
            if m and (best is None or (m.start(), -len(w)) < (best[0], best[1])):
                best = (m.start(), -len(w), label)
    if best is None:
        return None, "repeats the input" if source and copies_input(output, source) else "names no label"
    if best[0] > 0 and source and copies_input(output, source):
        return None, "repeats the input"
    return best[2], None


def check_generation(output: str, *, source: str, output_lang: str) -> str | None:
    """Why a generated text does not follow the instruction (None when it does): empty, written in the
    wrong language (e.g. the input repeated instead of translated), or a copy of the input."""
    if not output.strip():
        return "empty"
    share = script_share(output, output_lang)
    if share is not None and share < 0.5:
        return "wrong language"
    out_tokens = _WORD.findall(normalize(output))
    if copies_input(output, source, share=0.8) and len(out_tokens) >= 0.5 * len(_WORD.findall(normalize(source))):
        return "repeats the input"
    return None


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""
