"""Model backends for evaluation: a local Hugging Face model (folder, adapter, GGUF, hub id) that can
score options by log-likelihood and generate, and any OpenAI-compatible chat endpoint (generation
only), so hosted models can be columns of the same table (the paper's Table 9)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from langadapt.errors import LangadaptError
from langadapt.eval import prompts, scoring


class LocalBackend:
    """A causal LM in this process. ``prompt_format``: 'auto' uses the chat template when the tokenizer
    has one, 'chat' requires it, 'plain' writes instruction, input and an answer cue as text."""

    kind = "local"
    supports_loglik = True

    def __init__(self, model, tokenizer, *, name: str, prompt_format: str = "auto", max_length: int = 2048,
                 share_prefix: bool = True, source: str | None = None):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise LangadaptError(f"model '{name}' has no chat template; set eval.prompt_format to 'plain' or 'auto'")
        self.chat = prompt_format == "chat" or (prompt_format == "auto" and has_template)
        limit = getattr(model.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, limit)
        self.share_prefix = share_prefix
        self.source = source or name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def load(cls, path: str, *, name: str, device: str = "auto", **kw) -> LocalBackend:
        import torch

        from langadapt.models import load_model_and_tokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
        model, tok = load_model_and_tokenizer(path, dtype=dtype, device=device)
        return cls(model, tok, name=name, source=str(path), **kw)

    def settings(self) -> dict:
        return {"backend": "local", "source": self.source, "prompt_format": "chat" if self.chat else "plain",
                "max_length": self.max_length, "dtype": str(next(self.model.parameters()).dtype).replace("torch.", "")}

    def render(self, messages: list[dict], lang: str) -> str:
        return prompts.to_text(messages, tokenizer=self.tokenizer, chat=self.chat, prefix=prompts.answer_prefix(lang))

    def loglik(self, conversations: list[list[dict]], options: list[list[str]], *, lang: str, batch_size: int,
               progress=None) -> list[list[float]]:
        """Log-likelihood of each option as the answer to each conversation."""
        texts = [self.render(m, lang) for m in conversations]
        sep = "" if self.chat else " "
        enc = scoring.encode_requests(self.tokenizer, texts, [[sep + o for o in opts] for opts in options],
                                      add_special_tokens=not self.chat, max_length=self.max_length)
        return scoring.score_options(self.model, enc, batch_size=batch_size, pad_id=self.tokenizer.pad_token_id,
                                     share_prefix=self.share_prefix, progress=progress)

    def generate(self, conversations: list[list[dict]], *, lang: str, batch_size: int, max_new_tokens: int,
                 repetition_penalty: float, progress=None) -> list[str]:
        texts = [self.render(m, lang) for m in conversations]
        from langadapt.models import generate_texts

        return [o.strip() for o in generate_texts(
            self.model, self.tokenizer, texts, batch_size=batch_size, max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty, add_special_tokens=not self.chat, max_length=self.max_length,
            progress=progress)]

    def close(self) -> None:
        import gc

        self.model = None
        gc.collect()


class ApiBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint. Greedy (temperature 0); requests run
    ``concurrency`` at a time; the key comes from the environment variable ``api_key_env``."""

    kind = "api"
    supports_loglik = False

    def __init__(self, *, name: str, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5):
        self.name, self.model = name, model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise LangadaptError(f"model '{name}': environment variable {api_key_env} (the API key) is not set")
        self.key = key
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff

    def settings(self) -> dict:
        return {"backend": "api", "base_url": self.url.rsplit("/chat/completions", 1)[0], "model": self.model,
                "api_key_env": self.api_key_env, "temperature": 0, "repetition_penalty": "not supported by the API"}

    def _post(self, payload: dict) -> str:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        last = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    body = json.loads(r.read().decode("utf-8"))
                return body["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200].decode('utf-8', 'replace')}"
                if e.code not in (408, 429, 500, 502, 503, 504):
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (KeyError, IndexError, ValueError) as e:
                last = f"unexpected response ({type(e).__name__})"
                break
            if attempt < self.retries:
                time.sleep(min(8.0, self.backoff * 2 ** attempt))
        raise LangadaptError(f"model '{self.name}': request to {self.url} failed: {last}")

    def generate(self, conversations: list[list[dict]], *, lang: str, batch_size: int, max_new_tokens: int,
                 repetition_penalty: float, progress=None) -> list[str]:
        def one(msgs: list[dict]) -> str:
            out = self._post({"model": self.model, "messages": msgs, "temperature": 0, "max_tokens": max_new_tokens})
            if progress:
                progress(1)
            return out.strip()

        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(one, conversations))

    def close(self) -> None:
        pass
