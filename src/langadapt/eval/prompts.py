"""Prompts: a task's instruction and input rendered for one example, with few-shot demonstrations.

A prompt is a list of chat messages (few-shot user/assistant turns, then the query). Local models
render it with their chat template when they have one (as the sft stage trains), or as plain text
ending in an answer cue ("Answer:"); API models receive the messages as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from langadapt.eval.formats import Example
from langadapt.eval.tasks import Task, _families

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@lru_cache(maxsize=1)
def _fam() -> dict:
    return _families()


def answer_prefix(lang: str) -> str:
    return _fam()["answer_prefix"].get(lang, _fam()["answer_prefix"]["en"])


def language_name(name_lang: str, lang: str) -> str:
    """The name of ``lang`` written in ``name_lang`` ("Persian" in English, "فارسی" in Persian)."""
    names = _fam()["language_names"]
    return names.get(name_lang, names["en"]).get(lang) or names["en"].get(lang) or lang


def word_list(words: list[str], lang: str) -> str:
    lw = _fam()["list_words"].get(lang, _fam()["list_words"]["en"])
    if len(words) <= 1:
        return "".join(words)
    return lw["sep"].join(words[:-1]) + lw["last"] + words[-1]


def render_template(template: str, values: dict[str, str]) -> str:
    """Fill ``{field}`` slots; a line whose slots are missing or empty is left out."""
    out = []
    for line in template.split("\n"):
        names = _FIELD.findall(line)
        if any(not values.get(n) for n in names):
            continue
        out.append(_FIELD.sub(lambda m: values[m.group(1)], line))
    return "\n".join(out).strip()


def _pick(templates: dict[str, str], lang: str, what: str, task: Task) -> str:
    if lang in templates:
        return templates[lang]
    if "*" in templates:
        return templates["*"]
    raise KeyError(f"task '{task.id}' has no {what} template in '{lang}'")


@dataclass
class PromptParts:
    """Which language each part of a prompt is in, so the translation protocol can swap them.

    ``instruction_lang`` is the language of the instruction and of the input's scaffolding ("Review:"),
    ``label_lang`` that of the label words. With ``translations`` (source text -> translated text), the
    instruction is the translation of the task-language instruction (``instruction_from='translations'``)
    and, with ``translate_input``, every input field is replaced by its translation.
    """

    instruction_lang: str
    label_lang: str
    translations: dict[str, str] | None = None
    instruction_from: str = "template"  # or "translations"
    translate_input: bool = False


def instruction_text(task: Task, lang: str, example: Example | None = None, label_lang: str | None = None) -> str:
    """The task's instruction in ``lang``, with its label list and language names filled in."""
    label_lang = label_lang or lang
    words = [w for _, w in task.options(example, label_lang)] if (task.kind == "choice" and example is not None) else \
        [task.label_word(lab, label_lang) for lab in task.label_set()] if task.kind == "choice" else []
    values = {
        "label_list": word_list(words, lang),
        "source_name": language_name(lang, task.source_lang),
        "target_name": language_name(lang, task.target_lang),
        "output_name": language_name(lang, task.output_lang),
        "definition": example.fields.get("definition", "") if example is not None else "",
    }
    return render_template(_pick(task.instruction, lang, "instruction", task), values)


def input_text(task: Task, example: Example, lang: str, fields: dict[str, str] | None = None) -> str:
    values = dict(example.fields)
    if fields:
        values.update(fields)
    if example.options is not None:
        opts = fields.get("_options") if fields and "_options" in fields else None
        options = opts.split("\x1f") if opts else example.options
        values["choices"] = "\n".join(f"{i}. {c}" for i, c in enumerate(options, 1))
    tmpl = task.input.get(lang) or task.input.get("*") or _pick(task.input, task.language, "input", task)
    return render_template(tmpl, values)


def answer_text(task: Task, example: Example, label_lang: str) -> str:
    """The gold answer as a demonstration shows it."""
    if task.kind == "choice":
        return dict(task.options(example, label_lang))[example.label]
    return example.reference or ""


def user_message(task: Task, example: Example, parts: PromptParts | None = None) -> str:
    parts = parts or PromptParts(task.language, task.language)
    tr = parts.translations or {}
    if parts.instruction_from == "translations":
        original = instruction_text(task, task.language, example, task.language)
        instr = tr.get(original, original)
    else:
        instr = instruction_text(task, parts.instruction_lang, example, parts.label_lang)
    fields = None
    if parts.translate_input:
        fields = {k: tr.get(v, v) for k, v in example.fields.items() if k != "definition"}
        if example.options is not None:
            fields["_options"] = "\x1f".join(tr.get(o, o) for o in example.options)
    inp = input_text(task, example, parts.instruction_lang, fields)
    return f"{instr}\n\n{inp}" if instr else inp


def build_messages(task: Task, example: Example, shots: list[Example], parts: PromptParts | None = None) -> list[dict]:
    """Chat messages for one example: each demonstration as a user/assistant pair, then the query."""
    parts = parts or PromptParts(task.language, task.language)
    msgs: list[dict] = []
    for s in shots:
        msgs.append({"role": "user", "content": user_message(task, s, parts)})
        msgs.append({"role": "assistant", "content": answer_text(task, s, parts.label_lang)})
    msgs.append({"role": "user", "content": user_message(task, example, parts)})
    return msgs


def to_text(messages: list[dict], *, tokenizer=None, chat: bool, prefix: str) -> str:
    """Render messages for a local model: its chat template, or plain text ending in the answer cue."""
    if chat:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    chunks = []
    for m in messages:
        if m["role"] == "user":
            chunks.append(f"{m['content']}\n{prefix}")
        else:
            chunks[-1] += f" {m['content']}\n\n"
    return "".join(chunks)
