"""Conversations to token ids and labels, with loss on the assistant's tokens only.

The model's own chat template renders the conversation when its tokenizer has one (SmolLM2's
is ChatML with a default system prompt). Otherwise :data:`DEFAULT_TEMPLATE` is installed on the
tokenizer, so training, ``chat`` and ``eval`` all format prompts the same way::

    <bos>{system}\\n\\n### Instruction:\\n{user}\\n\\n### Response:\\n{assistant}<eos>\\n\\n ...

(``<bos>`` only when the tokenizer has one distinct from ``<eos>``; the system part only when
the conversation has a system message.)

Labels: an assistant turn is the text the template puts between the prompt that
``add_generation_prompt=True`` renders and the next message, with trailing whitespace left to
the prompt side; for ChatML that is ``content<|im_end|>``, so the model learns to stop. Every
other token has label -100. The conversation is tokenized piece by piece (prompt, answer,
prompt, ...) so that the prompt ends on exactly the tokens generation will start from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langadapt.errors import LangadaptError

IGNORE = -100

DEFAULT_TEMPLATE = (
    "{% if bos_token and bos_token != eos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


def ensure_chat_template(tokenizer, mode: str = "auto") -> str:
    """Make sure ``tokenizer`` can render conversations; returns 'model' or 'default'.

    ``mode`` 'auto' keeps the tokenizer's template when it has one; 'default' always installs
    :data:`DEFAULT_TEMPLATE` (saved with the tokenizer, so later stages use it too).
    """
    if mode == "auto" and getattr(tokenizer, "chat_template", None):
        return "model"
    if tokenizer.eos_token is None:
        raise LangadaptError("the tokenizer has no end-of-sequence token, so the default chat template cannot mark "
                             "where an answer stops; use a model whose tokenizer has an eos_token or a chat template")
    tokenizer.chat_template = DEFAULT_TEMPLATE
    return "default"


def _render(tokenizer, messages: Sequence[dict], *, generation: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation)


def segments(tokenizer, messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant) pieces whose concatenation is the full rendering."""
    full = _render(tokenizer, messages)
    out: list[tuple[str, bool]] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation=True)
        upto = _render(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto) and len(before) >= pos):
            raise LangadaptError(
                "the tokenizer's chat template does not render a conversation as a growing prefix (earlier turns "
                "change when later ones are added), so assistant tokens cannot be located; set sft.template: default")
        answer = upto[len(before):].rstrip()
        if before[pos:]:
            out.append((before[pos:], False))
        out.append((answer, True))
        pos = len(before) + len(answer)
    if full[pos:]:
        out.append((full[pos:], False))
    return out


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    def example(self) -> dict:
        return {"input_ids": self.input_ids, "labels": self.labels}


def encode(tokenizer, messages: Sequence[dict], max_len: int | None = None) -> Encoded:
    """Token ids and labels (-100 outside assistant turns) of one conversation, cut to ``max_len``."""
    return encode_many(tokenizer, [messages], max_len)[0]


def encode_many(tokenizer, conversations: Sequence[Sequence[dict]], max_len: int | None = None,
                *, progress: bool = False) -> list[Encoded]:
    """:func:`encode` for many conversations, tokenizing in batches (fast tokenizers use every core)."""
    out: list[Encoded] = []
    chunk = 512
    steps = range(0, len(conversations), chunk)
    if progress and len(conversations) > chunk:
        from rich.progress import track

        steps = track(steps, description="rendering and tokenizing conversations", transient=True)
    for start in steps:
        segs = [segments(tokenizer, c) for c in conversations[start:start + chunk]]
        flat = [text for s in segs for text, _ in s]
        ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
        k = 0
        for s in segs:
            input_ids: list[int] = []
            labels: list[int] = []
            for _, is_answer in s:
                piece = list(ids[k])
                k += 1
                input_ids.extend(piece)
                labels.extend(piece if is_answer else [IGNORE] * len(piece))
            truncated = max_len is not None and len(input_ids) > max_len
            if truncated:
                input_ids, labels = input_ids[:max_len], labels[:max_len]
            out.append(Encoded(input_ids, labels, truncated))
    return out


def prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of a prompt ready for generation (the template's assistant header included)."""
    return list(tokenizer(_render(tokenizer, messages, generation=True), add_special_tokens=False)["input_ids"])
