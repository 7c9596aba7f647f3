"""OpenAI's legacy ``/v1/completions`` with ``echo`` and ``logprobs``, and vLLM's tokenizer endpoints.

Together they are what evaluation tools need to score log-likelihoods through an API:
lm-evaluation-harness's ``local-completions`` model tokenizes with ``/tokenize`` (found on its own
from ``base_url``), sends each context + continuation as token ids with ``echo: true, logprobs: 1,
max_tokens: 1`` and adds up the prompt tokens' log-probabilities from ``logprobs.token_logprobs``.

Defaults are OpenAI's (temperature 1, top_p 1, max_tokens 16, no repetition penalty), not the chat
page's: an evaluation wants the model itself. Log-probabilities are the model's own (log-softmax of
its logits in float32, before temperature and penalties). ``tokens`` are the text each token adds,
decoded in context: a token that is only the first bytes of a character (common for Persian in a
byte-level vocabulary) adds "" and the token completing it carries the character, so the tokens
joined are the text. ``top_logprobs`` lists the ``logprobs`` most likely tokens and the chosen one,
keyed the same way, except that a key that would be "" is written as OpenAI writes such tokens,
``bytes:\\xd8`` (or the vocabulary's own string), so that no two are merged. ``text_offset`` is where
each token's text starts in the tokens joined: the returned ``text``, but for a beginning-of-sequence
token that the tokenizer adds to a text prompt.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from langadapt.serve.api import ApiError, number, pick_model, stop_strings
from langadapt.serve.generation import ChatModel, Prepared, Sampling

MAX_PROMPTS = 128  # prompts in one request (lm-eval sends batch_size of them)
MAX_LOGPROBS = 20
_CHUNK = 512  # positions per forward pass when scoring: bounds the logits held (positions x vocabulary)
_WINDOW = 8  # tokens of context when decoding one token's text: enough to join a split letter or a space
_UNSUPPORTED = ("suffix", "logit_bias", "tools", "functions", "response_format")


def _prompts(chat: ChatModel, prompt: Any) -> tuple[list[list[int]], list[str | None]]:
    """Token ids of each prompt, and the prompt's own text where it was given as text."""
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
                       param="prompt")
    if len(prompt) > MAX_PROMPTS:
        raise ApiError(400, f"at most {MAX_PROMPTS} prompts per request (got {len(prompt)})", param="prompt")
    rows = chat.model.get_input_embeddings().num_embeddings
    texts = [p if isinstance(p, str) else None for p in prompt]
    strings = [p for p in prompt if isinstance(p, str)]
    encoded = iter(chat.tokenizer(strings)["input_ids"]) if strings else iter(())
    out = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            ids = list(next(encoded))
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if any(not 0 <= t < rows for t in p):
                raise ApiError(400, f"prompt {i}: token ids must be between 0 and {rows - 1}", param="prompt")
            ids = list(p)
        else:
            raise ApiError(400, f"prompt {i} must be a string or a list of token ids", param="prompt")
        if not ids:
            raise ApiError(400, f"prompt {i} is empty", param="prompt")
        out.append(ids)
    return out, texts


def parse_completion(server, body: Any) -> dict:
    """Validate a ``/v1/completions`` body; return what the handler needs or raise ApiError (4xx)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    mid = pick_model(server.models, body)
    chat: ChatModel = server.models[mid]
    for key in _UNSUPPORTED:
        if body.get(key) not in (None, "", {}, []):
            raise ApiError(400, f"'{key}' is not supported by this server", param=key)
    if body.get("stream"):
        raise ApiError(400, "streaming is not supported on /v1/completions; use /v1/chat/completions to stream",
                       param="stream")
    if number(body, "n", int, 1) != 1 or number(body, "best_of", int, 1) != 1:
        raise ApiError(400, "only n=1 and best_of=1 are supported", param="n")
    for key in ("presence_penalty", "frequency_penalty"):
        if number(body, key, float, 0.0) != 0.0:
            raise ApiError(400, f"'{key}' is not supported; use 'repetition_penalty'", param=key)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise ApiError(400, "'echo' must be true or false", param="echo")
    logprobs = number(body, "logprobs", int, None)
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise ApiError(400, f"'logprobs' must be between 0 and {MAX_LOGPROBS}", param="logprobs")
    max_tokens = number(body, "max_tokens", int, 16)
    if max_tokens < 0:
        raise ApiError(400, "'max_tokens' must be 0 or more", param="max_tokens")
    try:
        sampling = Sampling(temperature=1.0, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0).updated(
            temperature=number(body, "temperature", float, 1.0), top_p=number(body, "top_p", float, 1.0),
            repetition_penalty=number(body, "repetition_penalty", float, 1.0),
            no_repeat_ngram_size=number(body, "no_repeat_ngram_size", int, 0),
            max_new_tokens=max(1, max_tokens), seed=number(body, "seed", int, server.sampling.seed))
    except ValueError as e:
        raise ApiError(400, str(e), param=str(e).split(" ", 1)[0]) from None
    prompts, texts = _prompts(chat, body.get("prompt"))
    limit = server.request_tokens(chat)
    total = sum(map(len, prompts))
    if total > limit:
        raise ApiError(413, f"the prompts are {total:,} tokens; this server takes at most {limit:,} tokens per request",
                       param="prompt", code="request_too_large")
    for i, ids in enumerate(prompts):
        if len(ids) + max_tokens > chat.context or len(ids) >= chat.context:
            raise ApiError(400, f"prompt {i} is {len(ids):,} tokens and asks for {max_tokens:,} more, but the model's "
                           f"context window is {chat.context:,} tokens", param="prompt", code="context_length_exceeded")
    return {"model": mid, "chat": chat, "prompts": prompts, "texts": texts, "echo": echo, "logprobs": logprobs,
            "max_tokens": max_tokens, "sampling": sampling, "stop": stop_strings(body)}


# ---------------------------------------------------------------------------- scoring


def _cache_kwarg(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` during 5.x (forward argument and output)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def score(model, ids: list[int], top: int, *, next_token: bool = False):
    """Log-probability of each token of ``ids`` given those before it (None for the first), the ``top``
    most likely tokens at each position as (id, logprob) pairs, and, with ``next_token``, the
    log-probabilities of the token after the last (a 1-D tensor; else None).
    """
    import torch

    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    cache = _cache_kwarg(model)
    needed = len(ids) if next_token else len(ids) - 1  # positions whose prediction is used
    chosen: list[float | None] = [None]
    tops: list[list[tuple[int, float]] | None] = [None]
    after = None
    past = None
    with torch.inference_mode():
        for start in range(0, needed, _CHUNK):
            end = min(start + _CHUNK, needed)
            out = model(input_ids=x[:, start:end], use_cache=end < needed, **{cache: past})
            past = getattr(out, cache, None)
            logp = out.logits[0].float().log_softmax(-1)
            rows = min(end, len(ids) - 1) - start  # rows that predict a token of ids
            if rows > 0:
                chosen += logp[:rows].gather(1, x[0, start + 1:start + 1 + rows, None])[:, 0].tolist()
                values, index = logp[:rows].topk(top, dim=-1)
                tops += [list(zip(i, v)) for i, v in zip(index.tolist(), values.tolist())]
            if next_token and end == needed:
                after = logp[-1]
    return chosen, tops, after


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (a printable character per byte), reversed."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTES = _byte_decoder()


class _Pieces:
    """The text each token adds to the text before it, decoded with a few tokens of context."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def name(self, token: int) -> str:
        """A token that adds no text yet, as OpenAI shows it: ``bytes:\\xd8`` (else the vocabulary's string)."""
        raw = self.tokenizer.convert_ids_to_tokens(token)
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", raw)  # SentencePiece byte fallback
        if m:
            data = bytes([int(m.group(1), 16)])
        elif raw and all(c in _BYTES for c in raw):  # byte-level BPE
            data = bytes(_BYTES[c] for c in raw)
        else:
            return raw
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)

    def decode(self, ids: list[int]) -> str:
        # A trailing U+FFFD is a character cut in half: it is not text yet.
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).rstrip("\ufffd")

    def added(self, before: str, context: list[int], token: int) -> str:
        after = self.decode([*context, token])
        if after.startswith(before):
            return after[len(before):]
        common = 0
        for a, b in zip(before, after):
            if a != b:
                break
            common += 1
        return after[common:]

    def of(self, seq: list[int], start: int = 0) -> list[str]:
        out = []
        for i in range(start, len(seq)):
            context = seq[max(0, i - _WINDOW):i]
            out.append(self.added(self.decode(context), context, seq[i]))
        return out


def _logprobs(pieces: _Pieces, seq: list[int], first: int, chosen, tops) -> dict:
    """OpenAI's ``logprobs`` object for tokens ``seq[first:]``."""
    tokens, offsets, top_logprobs = [], [], []
    at = 0
    for i in range(first, len(seq)):
        context = seq[max(0, i - _WINDOW):i]
        before = pieces.decode(context)
        piece = pieces.added(before, context, seq[i])
        tokens.append(piece)
        offsets.append(at)
        at += len(piece)
        if tops[i] is None:
            top_logprobs.append(None)
            continue
        entry: dict[str, float] = {}
        for tid, lp in [*tops[i], (seq[i], chosen[i])]:
            key = (piece if tid == seq[i] else pieces.added(before, context, tid)) or pieces.name(tid)
            entry.setdefault(key, lp)  # most likely first: should two tokens read the same, the likelier stays
        top_logprobs.append(entry)
    return {"tokens": tokens, "token_logprobs": chosen[first:], "top_logprobs": top_logprobs, "text_offset": offsets}


def _greedy_one(sampling: Sampling, max_tokens: int) -> bool:
    """Whether the one token asked for is the argmax of the model's own distribution (lm-eval's case)."""
    return (max_tokens == 1 and sampling.temperature == 0 and sampling.repetition_penalty == 1
            and sampling.no_repeat_ngram_size == 0)


def complete(req: dict, alive) -> dict:
    """Run a parsed completions request (the caller holds the generation slot); the response body."""
    chat: ChatModel = req["chat"]
    pieces = _Pieces(chat.tokenizer)
    top = req["logprobs"] or 0
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, (ids, given) in enumerate(zip(req["prompts"], req["texts"])):
        if not alive():
            raise ConnectionResetError("the client left")
        prompt_tokens += len(ids)
        scored = None
        if req["max_tokens"] == 0:
            new, text, finish = [], "", "length"
        elif _greedy_one(req["sampling"], req["max_tokens"]):
            # The next token's distribution comes out of the same forward pass that scores the prompt.
            chosen, tops, after = score(chat.model, ids, top, next_token=True)
            token = int(after.argmax())
            new = [token]
            text = chat.tokenizer.decode(new, skip_special_tokens=True).rstrip("\ufffd")
            finish = "stop" if token in chat.eos_ids else "length"
            for s in req["stop"]:
                if s in text:
                    text, finish = text[:text.index(s)], "stop"
            if req["logprobs"] is not None:
                chosen.append(float(after[token]))
                values, best = after.topk(top)
                tops.append(list(zip(best.tolist(), values.tolist())))
                scored = chosen, tops
        else:
            gen = chat.generate(Prepared([], ids, 0, req["max_tokens"]), req["sampling"], stop=req["stop"],
                                alive=alive, template_stops=False)
            text = "".join(gen)
            if gen.finish_reason == "cancelled" and not alive():
                raise ConnectionResetError("the client left")
            new, finish = list(gen.token_ids), "stop" if gen.finish_reason == "cancelled" else gen.finish_reason
            if new and gen.finish_reason == "stop" and new[-1] not in chat.eos_ids:
                # A stop string cut the text: report the tokens that begin inside what is returned.
                shown, at = [], 0
                for tid, piece in zip(new, pieces.of(ids[-_WINDOW:] + new, min(len(ids), _WINDOW))):
                    if at >= len(text):
                        break
                    shown.append(tid)
                    at += len(piece)
                new = shown
        completion_tokens += len(new)
        prefix = "" if not req["echo"] else given if given is not None else chat.tokenizer.decode(ids)
        choice = {"text": prefix + text, "index": index, "logprobs": None, "finish_reason": finish}
        if req["logprobs"] is not None:
            seq = ids + new
            if scored is None:
                scored = score(chat.model, seq, top)[:2]
            choice["logprobs"] = _logprobs(pieces, seq, 0 if req["echo"] else len(ids), *scored)
        choices.append(choice)
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": req["model"], "system_fingerprint": None, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


# ---------------------------------------------------------------------------- vLLM's tokenizer endpoints


def tokenizer_info(chat: ChatModel) -> dict:
    """``GET /tokenizer_info``: what lm-eval's remote tokenizer reads (special tokens, chat template)."""
    tok = chat.tokenizer
    return {"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
            "pad_token": tok.pad_token, "unk_token": tok.unk_token, "chat_template": chat.template,
            "model_max_length": chat.context, "vocab_size": len(tok)}


def tokenize(server, body: Any) -> dict:
    """``POST /tokenize``: ``{"prompt", "add_special_tokens"?, "model"?}`` -> ``{"tokens", "count", "max_model_len"}``."""
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        raise ApiError(400, "'prompt' must be a string", param="prompt")
    chat: ChatModel = server.models[pick_model(server.models, {"model": body.get("model", next(iter(server.models)))})]
    special = body.get("add_special_tokens", True)
    if not isinstance(special, bool):
        raise ApiError(400, "'add_special_tokens' must be true or false", param="add_special_tokens")
    ids = list(chat.tokenizer(body["prompt"], add_special_tokens=special)["input_ids"])
    return {"tokens": ids, "count": len(ids), "max_model_len": chat.context}


def detokenize(server, body: Any) -> dict:
    """``POST /detokenize``: ``{"tokens", "model"?}`` -> ``{"prompt"}``."""
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ApiError(400, "'tokens' must be a list of token ids", param="tokens")
    chat: ChatModel = server.models[pick_model(server.models, {"model": body.get("model", next(iter(server.models)))})]
    rows = chat.model.get_input_embeddings().num_embeddings
    if any(not 0 <= t < rows for t in tokens):
        raise ApiError(400, f"token ids must be between 0 and {rows - 1}", param="tokens")
    return {"prompt": chat.tokenizer.decode(tokens)}
