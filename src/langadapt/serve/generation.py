"""One streaming generation path that ``langadapt chat`` and ``langadapt serve`` share.

A ``ChatModel`` renders a conversation with the model's chat template (``DEFAULT_CHAT_TEMPLATE``
when the tokenizer has none), keeps it inside the context window by dropping the oldest turns
first, and streams the answer as text pieces while ``model.generate`` runs in a worker thread.

Sampling defaults (``Sampling``) are chosen against the failure the paper's appendix shows
(Figures 6 and 10): the model repeats a whole line or list item until it runs out of tokens.
Greedy decoding falls into such loops easily; light nucleus sampling, a mild repetition penalty
and a ban on repeating any 12-token span break them. The n-gram size is long enough that
ordinary phrases ("in the", or a Persian word that a byte-level tokenizer spends 4-6 tokens on)
may still recur, while a repeated sentence or list line cannot. ``bench/README.md`` measures the
effect on SmolLM2.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from langadapt.errors import LangadaptError
from langadapt.sft.template import DEFAULT_TEMPLATE as _SFT_DEFAULT_TEMPLATE

# For tokenizers without a chat template (a base model such as Llama-2) the project has one default
# format, the one the sft stage trains with and saves on the tokenizer (Alpaca-style headings).
DEFAULT_CHAT_TEMPLATE = _SFT_DEFAULT_TEMPLATE
# A model may go on to write the next turn's heading instead of its end-of-sequence token.
_DEFAULT_TEMPLATE_STOPS = ("### Instruction:", "### Response:")
# End-of-turn tokens of common templates: generation stops on whichever the tokenizer has.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>", "</s>")
ROLES = ("system", "user", "assistant")


class RequestTooLarge(LangadaptError):
    """The conversation is longer than a request may be, even with trimming (the server's token bound)."""

    def __init__(self, tokens: int, limit: int):
        self.tokens = tokens
        self.limit = limit
        super().__init__(f"the conversation is {tokens:,} tokens; this server takes at most {limit:,} tokens per "
                         "request (even with trim_history); send fewer or shorter messages")


class PromptTooLong(LangadaptError):
    """The newest message alone does not fit the context window."""

    def __init__(self, prompt_tokens: int, context: int):
        self.prompt_tokens = prompt_tokens
        self.context = context
        super().__init__(f"the prompt is {prompt_tokens:,} tokens but the model's context window is {context:,} tokens, "
                         "leaving no room for an answer; shorten the message")


@dataclass
class Sampling:
    """Decoding settings. ``temperature`` 0 means greedy decoding (then ``top_p`` is unused)."""

    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    no_repeat_ngram_size: int = 12
    max_new_tokens: int = 512
    seed: int | None = None

    _LIMITS = {
        "temperature": (0.0, 5.0),
        "top_p": (0.0, 1.0),
        "repetition_penalty": (1.0, 3.0),
        "no_repeat_ngram_size": (0, 1024),
        "max_new_tokens": (1, 1_000_000),
    }

    def check(self) -> Sampling:
        """Raise ValueError naming the setting when a value is out of range."""
        for name, (lo, hi) in self._LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number (got {v!r})")
            if not lo <= v <= hi or (name == "top_p" and v == 0):
                lo_s = "above 0" if name == "top_p" else f"at least {lo}"
                raise ValueError(f"{name} must be {lo_s} and at most {hi} (got {v})")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer (got {self.seed!r})")
        return self

    def updated(self, **changes: Any) -> Sampling:
        """A copy with ``changes`` applied and checked; strings (from /settings) are converted."""
        known = {f.name: f for f in fields(self)}
        values = asdict(self)
        for key, raw in changes.items():
            if key not in known:
                raise ValueError(f"unknown setting '{key}' (settings: {', '.join(known)})")
            if isinstance(raw, str):
                if key == "seed" and raw.lower() in ("none", "off", ""):
                    raw = None
                else:
                    try:
                        raw = int(raw) if key in ("no_repeat_ngram_size", "max_new_tokens", "seed") else float(raw)
                    except ValueError:
                        raise ValueError(f"{key} must be a number (got {raw!r})") from None
            values[key] = raw
        return Sampling(**values).check()

    def generate_kwargs(self) -> dict:
        kw: dict[str, Any] = {
            "max_new_tokens": int(self.max_new_tokens),
            "repetition_penalty": float(self.repetition_penalty),
            "no_repeat_ngram_size": int(self.no_repeat_ngram_size),
        }
        if self.temperature <= 0:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p))
        return kw

    def describe(self) -> str:
        return "  ".join(f"{k}={v}" for k, v in asdict(self).items())


@dataclass
class Prepared:
    """A conversation ready to generate from: what was kept, its token ids, and the answer budget."""

    messages: list[dict]
    input_ids: list[int]
    dropped_turns: int
    max_new_tokens: int


def check_messages(messages: Any) -> list[dict]:
    """Validate an OpenAI-style message list; return plain ``{"role", "content"}`` dicts.

    Content may be a string or a list of ``{"type": "text", "text": ...}`` parts (as newer clients send).
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role == "developer":  # newer OpenAI clients call the system prompt this
            role = "system"
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)} (got {role!r})")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise ValueError(f"messages[{i}].content: only text parts are supported")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def _turns(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """(leading system messages, turns); a turn starts at a user message and runs to the next one."""
    k = 0
    while k < len(messages) and messages[k]["role"] == "system":
        k += 1
    turns: list[list[dict]] = []
    for m in messages[k:]:
        if m["role"] == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return messages[:k], turns


def pick_device(device: str | None = None) -> str:
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ChatModel:
    """A loaded causal LM with its tokenizer, ready for chat-style streaming generation."""

    def __init__(self, model, tokenizer, *, name: str = "model", context: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.uses_default_template = not getattr(tokenizer, "chat_template", None)
        self.template = DEFAULT_CHAT_TEMPLATE if self.uses_default_template else tokenizer.chat_template
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.context = min(int(context), limit) if context else limit
        self.eos_ids = self._end_ids()
        self.stop_strings: tuple[str, ...] = _DEFAULT_TEMPLATE_STOPS if self.uses_default_template else ()
        # A fast tokenizer changes its Rust-side truncation/padding state only when a call asks for
        # other settings than the last one; after this call every plain encode finds them set and
        # only reads, so the server's request threads can tokenize at once without a lock.
        tokenizer("", add_special_tokens=False)

    @classmethod
    def load(cls, spec: str, *, name: str | None = None, context: int | None = None,
             device: str | None = None, dtype: str | None = None) -> ChatModel:
        """Load MODEL (see ``serve.source``); a LoRA adapter is merged into its base for speed."""
        import torch

        from langadapt.models import load_model_and_tokenizer
        from langadapt.serve.source import resolve_ref

        ref = resolve_ref(spec)
        device = pick_device(device)
        if dtype in (None, "auto"):
            torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        else:
            torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        model, tokenizer = load_model_and_tokenizer(ref.path, dtype=torch_dtype, device=device)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return cls(model, tokenizer, name=name or ref.name, context=context)

    # ------------------------------------------------------------------ tokens

    def _single_token(self, text: str) -> int | None:
        tok = self.tokenizer
        added = tok.get_added_vocab() if hasattr(tok, "get_added_vocab") else {}
        if text in added:
            return added[text]
        return None

    def _end_ids(self) -> list[int]:
        ids: list[int] = []
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            for e in eos if isinstance(eos, (list, tuple)) else [eos]:
                if isinstance(e, int) and e not in ids:
                    ids.append(e)
        for marker in _END_OF_TURN:
            i = self._single_token(marker)
            if i is not None and i not in ids and marker in self.template:
                ids.append(i)
        return ids

    def encode(self, messages: list[dict]) -> list[int]:
        """Token ids of ``messages`` rendered with the chat template, ending with the assistant's cue."""
        try:
            text = self.tokenizer.apply_chat_template(messages, chat_template=self.template,
                                                      add_generation_prompt=True, tokenize=False)
        except Exception as e:  # jinja raises its own error types, e.g. a template without system role
            raise ValueError(f"the chat template of {self.name} rejected the conversation: {e}") from None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prepare(self, messages: list[dict], max_new_tokens: int, *, trim: bool = True,
                max_tokens: int | None = None) -> Prepared:
        """Fit ``messages`` into the context window, keeping room for ``max_new_tokens``.

        With ``trim``, the oldest turns (a user message and the replies to it) are dropped first;
        system messages and the newest turn are always kept. The answer budget shrinks to the room
        left when even the newest turn leaves less. Raises PromptTooLong when no room is left at all,
        and RequestTooLarge when the whole conversation is more than ``max_tokens`` tokens.
        """
        system, turns = _turns(messages)
        ids = self.encode(messages)
        can_trim = trim and len(turns) > 1
        # Without trimming, a conversation beyond the window gets the more telling PromptTooLong below.
        if max_tokens is not None and len(ids) > max_tokens and (can_trim or len(ids) < self.context):
            raise RequestTooLarge(len(ids), max_tokens)
        kept, dropped = messages, 0
        if can_trim and self.context - len(ids) < max_new_tokens:
            kept, ids, dropped = self._newest_that_fit(system, turns, max_new_tokens)
        room = self.context - len(ids)
        if room < 1:
            raise PromptTooLong(len(ids), self.context)
        return Prepared(kept, ids, dropped, min(max_new_tokens, room))

    def _newest_that_fit(self, system: list[dict], turns: list[list[dict]], max_new_tokens: int):
        """(messages, ids, dropped turns) for the most recent turns that leave ``max_new_tokens`` of room
        (at least the newest turn), the whole conversation being known not to.

        The search starts from the newest turn and doubles the number kept until it no longer fits,
        then halves the gap, so each encode is about one context window long and their number grows
        with the log of the turns kept: the cost follows the window, not the history. Dropping turns
        one at a time and encoding what is left each time was quadratic in the history (a 3,001-message
        request took two minutes).
        """

        def encoded(k: int) -> tuple[list[dict], list[int]]:
            kept = system + [m for t in turns[len(turns) - k:] for m in t]
            return kept, self.encode(kept)

        def fits(ids: list[int]) -> bool:
            return self.context - len(ids) >= max_new_tokens

        best = (1, *encoded(1))
        if fits(best[2]):
            lo, hi = 1, len(turns)  # lo turns fit, hi turns do not
            while lo * 2 < hi:
                k = lo * 2
                kept, ids = encoded(k)
                if not fits(ids):
                    hi = k
                    break
                lo, best = k, (k, kept, ids)
            while hi - lo > 1:
                k = (lo + hi) // 2
                kept, ids = encoded(k)
                if fits(ids):
                    lo, best = k, (k, kept, ids)
                else:
                    hi = k
        k, kept, ids = best
        return kept, ids, len(turns) - k

    # ------------------------------------------------------------------ generation

    def generate(self, prepared: Prepared, sampling: Sampling, *, cancel: threading.Event | None = None,
                 stop: tuple[str, ...] = (), alive: Callable[[], bool] | None = None,
                 template_stops: bool = True) -> Generation:
        """Start generating (lazily, on first iteration); iterate the result for text pieces.

        ``stop``: strings that end the answer (not included in it), as OpenAI's ``stop`` parameter.
        ``alive``: asked before every new token; generation stops (``cancelled``) once it returns False.
        ``template_stops``: also stop at the default template's next heading (chat, not plain text).
        """
        return Generation(self, prepared, sampling, cancel=cancel, stop=stop, alive=alive,
                          template_stops=template_stops)

    def reply(self, messages: list[dict], sampling: Sampling | None = None) -> str:
        """The whole answer to ``messages`` (history trimmed to fit), as one string."""
        sampling = sampling or Sampling()
        prepared = self.prepare(messages, sampling.max_new_tokens)
        return "".join(self.generate(prepared, sampling))


class Generation:
    """An answer being generated. Iterate for text pieces; afterwards read ``finish_reason``,
    ``prompt_tokens``, ``completion_tokens`` and ``token_ids``. ``cancel()`` (or the event given), or
    ``alive`` returning False, stops it early.
    """

    def __init__(self, chat: ChatModel, prepared: Prepared, sampling: Sampling, *, cancel: threading.Event | None = None,
                 stop: tuple[str, ...] = (), alive: Callable[[], bool] | None = None, template_stops: bool = True):
        self.chat = chat
        self.stops = tuple(s for s in (*(chat.stop_strings if template_stops else ()), *stop) if s)
        self.prepared = prepared
        self.sampling = sampling
        self.cancel_event = cancel or threading.Event()
        self.prompt_tokens = len(prepared.input_ids)
        self.completion_tokens = 0
        self.token_ids: list[int] = []
        self.alive = alive
        self.finish_reason: str | None = None
        self.text = ""
        self._error: BaseException | None = None

    def cancel(self) -> None:
        self.cancel_event.set()

    def __iter__(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        chat, event, alive = self.chat, self.cancel_event, self.alive
        outer = self

        class Streamer(TextIteratorStreamer):
            last_token: int | None = None

            def put(self, value):
                if not (self.skip_prompt and self.next_tokens_are_prompt):
                    flat = value.reshape(-1).tolist()
                    outer.completion_tokens += len(flat)
                    outer.token_ids += flat
                    if flat:
                        self.last_token = flat[-1]
                super().put(value)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                # Between two tokens: the only place that sees a client leave while the text is
                # still held back (a streamer passes text on at word ends, a plain answer not at all).
                if alive is not None and not event.is_set() and not alive():
                    event.set()
                return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = Streamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True)
        device = next(chat.model.parameters()).device
        ids = torch.tensor([self.prepared.input_ids], device=device)
        kwargs = self.sampling.generate_kwargs()
        kwargs["max_new_tokens"] = self.prepared.max_new_tokens
        pad = chat.tokenizer.pad_token_id if chat.tokenizer.pad_token_id is not None else chat.eos_ids[0] if chat.eos_ids else None

        def work() -> None:
            try:
                if self.sampling.seed is not None:
                    torch.manual_seed(self.sampling.seed)
                with torch.inference_mode():
                    chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                                        eos_token_id=chat.eos_ids or None, pad_token_id=pad, **kwargs)
            except BaseException as e:  # re-raised in the consuming thread
                self._error = e
                streamer.end()

        thread = threading.Thread(target=work, name=f"generate-{chat.name}", daemon=True)
        thread.start()
        stops = self.stops
        hold = max((len(s) for s in stops), default=1) - 1
        pending = ""
        stopped_by_string = completed = False
        try:
            for piece in streamer:
                if not piece:
                    continue
                pending += piece
                if stops:
                    cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
                    if cut >= 0:
                        pending = pending[:cut]
                        stopped_by_string = True
                        event.set()
                        break
                # Hold back a tail that could be the start of a stop string, and a trailing
                # replacement character (a multi-byte letter cut in half, usually completed next).
                keep = len(pending) - len(pending.rstrip("\ufffd"))
                keep = max(keep, min(hold, len(pending)))
                out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
                if out:
                    self.text += out
                    yield out
            pending = pending.rstrip("\ufffd")  # a letter the token limit cut in half
            if pending:
                self.text += pending
                yield pending
            completed = True
        finally:
            if not completed:
                event.set()  # the consumer went away early: stop the worker too
            thread.join()
        if self._error is not None:
            raise self._error
        if stopped_by_string or (streamer.last_token is not None and streamer.last_token in chat.eos_ids):
            self.finish_reason = "stop"
        elif event.is_set():
            self.finish_reason = "cancelled"
        elif self.completion_tokens >= self.prepared.max_new_tokens:
            self.finish_reason = "length"
        else:
            self.finish_reason = "stop"
