"""Translators: a list of English texts in, a list of translations out (``None`` = not now).

Three kinds, chosen by ``translate.translator`` in the recipe:

- :class:`Seq2SeqTranslator` / :class:`CausalTranslator` (``hf``): any transformers translation
  model — an encoder-decoder (NLLB, M2M100, OPUS-MT, mBART, T5) or a causal LM prompted to
  translate (with its chat template when it has one);
- :class:`EndpointTranslator` (``openai``): any OpenAI-compatible ``/chat/completions`` endpoint;
- ``stage``: the adapted model of an earlier stage, a :class:`CausalTranslator`.

Local models never return ``None``; an endpoint returns ``None`` for a text it could not get
translated after its retries, and the caller leaves that record for the next resume.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from langadapt.errors import LangadaptError

LANGUAGE_NAMES = {"en": "English", "fa": "Persian"}


def instruction(source_name: str, target_name: str, *, markers: bool) -> str:
    """What an instruction-following model is asked to do with each text."""
    text = (f"Translate the following text from {source_name} to {target_name}. "
            "Reply with the translation only, without notes or explanations.")
    if markers:
        text += " Copy markers such as [[0]] unchanged, in the place where they belong."
    return text


def _output_cap(token_lengths: list[int], max_new_tokens: int) -> int:
    """New tokens one generate() call may spend.

    A translation is a few times longer than its source in tokens at most (the tokenizer may
    spend more per word on the target language); bounding by the longest source keeps small
    models that never stop from spending ``max_new_tokens`` on every short line.
    """
    return max(1, min(max_new_tokens, 32 + 6 * max(token_lengths, default=0)))


class Translator:
    """Base: translate a list of texts; ``calls`` counts texts sent to the model or endpoint."""

    name = "translator"

    def __init__(self) -> None:
        self.calls = 0

    def translate(self, texts: list[str]) -> list[str | None]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"kind": self.name}


class _LocalModel(Translator):
    """Shared by the transformers translators: batching by length, greedy decoding."""

    def __init__(self, model, tokenizer, *, batch_size: int, max_new_tokens: int, label: str) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.label = label
        if tokenizer.pad_token_id is None:
            # Greedy generation never reads pad positions past the attention mask; any id will do.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    def translate(self, texts: list[str]) -> list[str | None]:
        out: list[str | None] = [None] * len(texts)
        # Similar lengths in one batch waste less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            for i, t in zip(idx, self._generate([texts[i] for i in idx])):
                out[i] = t
            self.calls += len(idx)
        return out

    def _generate(self, texts: list[str]) -> list[str]:
        raise NotImplementedError

    def _greedy(self) -> dict:
        return {"do_sample": False, "num_beams": 1, "temperature": None, "top_p": None, "top_k": None}

    def describe(self) -> dict:
        return {"kind": self.name, "model": self.label, "batch_size": self.batch_size}


class Seq2SeqTranslator(_LocalModel):
    """An encoder-decoder translation model. Language codes go where the model family expects them:
    ``tokenizer.src_lang`` for the source, a forced first token for the target (NLLB ``pes_Arab``,
    M2M100 ``fa``); OPUS-MT pairs need neither."""

    name = "hf-seq2seq"

    def __init__(self, model, tokenizer, *, source_code: str | None, target_code: str | None, **kw) -> None:
        super().__init__(model, tokenizer, **kw)
        self.forced_bos = None
        if source_code and hasattr(tokenizer, "src_lang"):
            tokenizer.src_lang = source_code
        if target_code:
            self.forced_bos = _language_token_id(tokenizer, target_code)
            if self.forced_bos is None:
                raise LangadaptError(f"translate.target_code: the tokenizer of {self.label} has no language token "
                                     f"'{target_code}' (NLLB uses codes like pes_Arab, M2M100 like fa)")

    def _generate(self, texts: list[str]) -> list[str]:
        import torch

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(self.model.device)
        cap = _output_cap(enc["attention_mask"].sum(dim=1).tolist(), self.max_new_tokens)
        kw = self._greedy()
        if self.forced_bos is not None:
            kw["forced_bos_token_id"] = self.forced_bos
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=cap, pad_token_id=self.tokenizer.pad_token_id, **kw)
        return [_tidy(t) for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def _language_token_id(tokenizer, code: str) -> int | None:
    get = getattr(tokenizer, "get_lang_id", None)  # M2M100
    if get is not None:
        try:
            return int(get(code))
        except (KeyError, ValueError):
            return None
    tid = tokenizer.convert_tokens_to_ids(code)
    if tid is None or tid == tokenizer.unk_token_id:
        return None
    return int(tid)


class CausalTranslator(_LocalModel):
    """A causal LM asked to translate: through its chat template when it has one, else a plain
    "English: ... / Persian:" completion cut at the first line break."""

    name = "hf-causal"

    def __init__(self, model, tokenizer, *, source_name: str, target_name: str, **kw) -> None:
        super().__init__(model, tokenizer, **kw)
        self.source_name = source_name
        self.target_name = target_name
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        tokenizer.padding_side = "left"  # generation continues from the right end of every row

    def prompt(self, text: str) -> str:
        ask = instruction(self.source_name, self.target_name, markers="[[" in text)
        if self.chat:
            messages = [{"role": "user", "content": f"{ask}\n\n{text}"}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{ask}\n\n{self.source_name}: {text}\n{self.target_name}:"

    def _generate(self, texts: list[str]) -> list[str]:
        from langadapt.models import generate_texts

        prompts = [self.prompt(t) for t in texts]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        # The chat template already holds the special tokens it needs.
        texts_out = generate_texts(self.model, self.tokenizer, prompts, max_new_tokens=_output_cap(lengths, self.max_new_tokens),
                                   batch_size=len(prompts), add_special_tokens=not self.chat, from_model_config=True)
        if not self.chat:
            # The completion prompt asks for one line; a text of several lines (unit: field) keeps them.
            texts_out = [t.strip().split("\n", 1)[0] if "\n" not in src else t for t, src in zip(texts_out, texts)]
        return [_tidy(t) for t in texts_out]


def _tidy(text: str) -> str:
    """Strip spaces, and the half character a token cap can leave at the end of byte-level output."""
    return text.strip().rstrip("\ufffd").strip()


class EndpointError(Exception):
    """An endpoint answer worth retrying (connection refused, timeout, 429, 5xx, unreadable reply)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class EndpointTranslator(Translator):
    """An OpenAI-compatible chat completions endpoint, one request per text, ``batch_size`` at a time.

    Transient failures are retried ``retries`` times after ``backoff``, ``2*backoff``, ``4*backoff``
    ... seconds (or the server's Retry-After, when longer); after that the text comes back as
    ``None``. Answers that retrying cannot fix (401, 403, 404, 400) stop the stage with the reason.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key: str | None, source_name: str, target_name: str,
                 batch_size: int = 8, retries: int = 4, backoff: float = 1.0, timeout: float = 120.0,
                 max_tokens: int | None = None, sleep: Callable[[float], None] = time.sleep,
                 api_key_env: str = "OPENAI_API_KEY") -> None:
        super().__init__()
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.source_name = source_name
        self.target_name = target_name
        self.batch_size = batch_size
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.sleep = sleep
        self.failures: dict[str, int] = {}  # last error message -> texts given up on
        self._refused: LangadaptError | None = None  # once set, no further request is sent

    def describe(self) -> dict:
        return {"kind": self.name, "url": self.url, "model": self.model, "concurrency": self.batch_size,
                "retries": self.retries}

    def translate(self, texts: list[str]) -> list[str | None]:
        if len(texts) <= 1 or self.batch_size == 1:
            return [self._with_retries(t) for t in texts]
        pool = ThreadPoolExecutor(max_workers=min(self.batch_size, len(texts)))
        try:
            futures = [pool.submit(self._with_retries, t) for t in texts]
            return [f.result() for f in futures]
        finally:
            # After a refusal (bad key, unknown model) nothing queued should still be sent.
            pool.shutdown(wait=True, cancel_futures=True)

    def _with_retries(self, text: str) -> str | None:
        for attempt in range(self.retries + 1):
            if self._refused is not None:
                raise self._refused
            try:
                return self._request(text)
            except LangadaptError as e:
                self._refused = e
                raise
            except EndpointError as e:
                if attempt == self.retries:
                    key = str(e)[:200]
                    self.failures[key] = self.failures.get(key, 0) + 1
                    return None
                delay = self.backoff * 2 ** attempt
                self.sleep(max(delay, min(e.retry_after or 0.0, 60.0)))
        return None

    def _request(self, text: str) -> str:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": instruction(self.source_name, self.target_name, markers="[[" in text)},
                {"role": "user", "content": text},
            ],
            "temperature": 0,
        }
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        self.calls += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace").strip()
            if e.code in (408, 409, 425, 429) or e.code >= 500:
                retry_after = _seconds(e.headers.get("Retry-After")) if e.headers else None
                raise EndpointError(f"HTTP {e.code} from {self.url}", retry_after) from None
            hint = ""
            if e.code in (401, 403):
                hint = f"; check the key in ${self.api_key_env}" if self.api_key else f"; set ${self.api_key_env}"
            elif e.code == 404:
                hint = "; check translate.base_url (it usually ends in /v1) and translate.model"
            raise LangadaptError(f"translation endpoint {self.url} answered HTTP {e.code}{hint}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise EndpointError(f"cannot reach {self.url}: {reason}") from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError(f"unreadable answer from {self.url}") from None
        if not isinstance(content, str):
            raise EndpointError(f"unreadable answer from {self.url}")
        return content.strip()


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- from the recipe


def language_name(code: str, recipe_language=None) -> str:
    if recipe_language is not None and recipe_language.code == code:
        return recipe_language.name
    return LANGUAGE_NAMES.get(code, code)


def build_translator(recipe, source_language: str, *, sleep: Callable[[float], None] = time.sleep) -> Translator:
    """The translator the recipe's ``translate`` section asks for, loaded and ready."""
    cfg = recipe.translate
    source_name = language_name(source_language)
    target_name = language_name(recipe.language.code, recipe.language)
    common = {"batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens}
    if cfg.translator == "openai":
        return EndpointTranslator(cfg.base_url, cfg.model, api_key=os.environ.get(cfg.api_key_env) or None,
                                  api_key_env=cfg.api_key_env, source_name=source_name, target_name=target_name,
                                  batch_size=cfg.batch_size, retries=cfg.retries, backoff=cfg.backoff,
                                  timeout=cfg.timeout, max_tokens=cfg.max_new_tokens, sleep=sleep)
    import torch

    from langadapt import models

    device = "cuda" if torch.cuda.is_available() else None  # translating is inference: use a GPU when there is one
    if cfg.translator == "stage":

        path = recipe.model_path(cfg.stage)
        model, tokenizer = models.load_model_and_tokenizer(path, device=device)
        return CausalTranslator(model, tokenizer, source_name=source_name, target_name=target_name,
                                label=f"stage {cfg.stage} ({path})", **common)
    path = cfg.model
    local = recipe.resolve(path)
    if local.exists():
        path = str(local)
    config = models.load_config(path)
    if getattr(config, "is_encoder_decoder", False):
        model, tokenizer = _load_seq2seq(path)
        if device:
            model = model.to(device)
        # Without explicit codes, the recipe's ISO codes serve models that use them (M2M100: en, fa).
        source_code = cfg.source_code
        if source_code is None and _has_language_token(tokenizer, source_language):
            source_code = source_language
        target_code = cfg.target_code
        if target_code is None and _has_language_token(tokenizer, recipe.language.code):
            target_code = recipe.language.code
        return Seq2SeqTranslator(model, tokenizer, source_code=source_code, target_code=target_code,
                                 label=path, **common)
    model, tokenizer = models.load_model_and_tokenizer(path, device=device)
    return CausalTranslator(model, tokenizer, source_name=source_name, target_name=target_name, label=path, **common)


def _has_language_token(tokenizer, code: str) -> bool:
    return hasattr(tokenizer, "src_lang") and _language_token_id(tokenizer, code) is not None


def _load_seq2seq(path: str):
    from transformers import AutoModelForSeq2SeqLM

    from langadapt.errors import ModelNotFoundError
    from langadapt.models import load_tokenizer, resolve_model

    src = resolve_model(path)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(src.path, **src.hf_kwargs())
    except OSError as e:
        raise ModelNotFoundError(f"cannot load the translation model {path}: {e}") from None
    return model, load_tokenizer(src)
