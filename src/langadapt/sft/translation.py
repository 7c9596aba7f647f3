"""Translation instructions made from parallel sentence pairs (paper 4.2.2: about 24% of the mix).

Both directions (English -> target, target -> English), each worded by one of many natural
phrasings written in English or in the target language, so the model learns to follow a
translation request however it is asked, in either language. Phrasings are chosen at random
(seeded); each pair serves one direction before any pair serves the other.

Built-in phrasings exist for English and Persian. For another target language, English
phrasings are used alone unless ``sft.translation_prompts`` names a JSON file of the form
``{"<code>": {"to_target": [...], "to_english": [...]}}`` with ``{text}`` in every phrasing
(``{lang}`` in an English phrasing is the target language's English name).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from langadapt.data.instructions import Conversation
from langadapt.errors import DataError

# {text}: the sentence to translate; {lang}: the target language's English name (English phrasings only).
PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "to_target": (
            "Translate the following text into {lang}:\n\n{text}",
            "Translate this sentence to {lang}.\n\n{text}",
            "How would you say this in {lang}?\n\n{text}",
            "{text}\n\nTranslate the text above into {lang}.",
            "Please render the following English sentence in {lang}:\n{text}",
            "What is the {lang} translation of the following?\n\n{text}",
            "Give me a {lang} version of this text:\n\n{text}",
            "English: {text}\n{lang}:",
            "I need this in {lang}, please:\n\n{text}",
            "Convert the following English text into natural, fluent {lang}.\n\n{text}",
            "Can you translate this into {lang} for me?\n\n{text}",
            "Write the following in {lang}:\n\"{text}\"",
        ),
        "to_english": (
            "Translate the following {lang} text into English:\n\n{text}",
            "Translate this into English.\n\n{text}",
            "What does this {lang} sentence mean in English?\n\n{text}",
            "{text}\n\nTranslate the text above into English.",
            "Please give an English translation of the following:\n{text}",
            "How would you say this in English?\n\n{text}",
            "{lang}: {text}\nEnglish:",
            "I came across this {lang} sentence. Can you translate it into English?\n\n{text}",
            "Render the following {lang} text in plain English.\n\n{text}",
            "Give me the English version of this text:\n\n{text}",
            "Translate from {lang} to English:\n\"{text}\"",
        ),
    },
    "fa": {
        "to_target": (
            "متن زیر را به فارسی ترجمه کن:\n\n{text}",
            "این جمله را به فارسی برگردان.\n\n{text}",
            "ترجمهٔ فارسی جملهٔ زیر چیست؟\n\n{text}",
            "{text}\n\nمتن بالا را به فارسی ترجمه کن.",
            "لطفاً جملهٔ انگلیسی زیر را به فارسی روان بنویس:\n{text}",
            "این را به فارسی چطور می‌گویند؟\n\n{text}",
            "انگلیسی: {text}\nفارسی:",
            "می‌توانی این متن را برایم به فارسی ترجمه کنی؟\n\n{text}",
            "برگردان فارسی متن زیر را بنویس.\n\n{text}",
            "متن انگلیسی زیر را به زبان فارسی ترجمه کن و فقط ترجمه را بنویس.\n\n{text}",
            "از انگلیسی به فارسی ترجمه کن:\n«{text}»",
        ),
        "to_english": (
            "متن زیر را به انگلیسی ترجمه کن:\n\n{text}",
            "این جمله را به انگلیسی برگردان.\n\n{text}",
            "ترجمهٔ انگلیسی جملهٔ زیر چیست؟\n\n{text}",
            "{text}\n\nمتن بالا را به انگلیسی ترجمه کن.",
            "لطفاً جملهٔ فارسی زیر را به انگلیسی بنویس:\n{text}",
            "این را به انگلیسی چطور می‌گویند؟\n\n{text}",
            "فارسی: {text}\nانگلیسی:",
            "می‌توانی این متن را برایم به انگلیسی ترجمه کنی؟\n\n{text}",
            "برگردان انگلیسی متن زیر را بنویس.\n\n{text}",
            "این متن فارسی را به زبان انگلیسی ترجمه کن.\n\n{text}",
            "از فارسی به انگلیسی ترجمه کن:\n«{text}»",
        ),
    },
}


def load_phrasings(target: str, extra_file: str | Path | None = None) -> dict[str, dict[str, tuple[str, ...]]]:
    """Phrasings by language ('en' and, when available, ``target``), built-in plus an optional file."""
    table = {"en": PHRASINGS["en"]}
    if target in PHRASINGS:
        table[target] = PHRASINGS[target]
    if extra_file is None:
        return table
    path = Path(extra_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read translation prompts: {e}", path=str(path)) from None
    if not isinstance(data, dict):
        raise DataError("translation prompts must be an object {language: {to_target: [...], to_english: [...]}}", path=str(path))
    for lang, dirs in data.items():
        if not isinstance(dirs, dict) or set(dirs) != {"to_target", "to_english"}:
            raise DataError(f"'{lang}' must have exactly the keys to_target and to_english", path=str(path))
        for d, items in dirs.items():
            if not items or not all(isinstance(x, str) and "{text}" in x for x in items):
                raise DataError(f"'{lang}.{d}' must be a non-empty list of phrasings that each contain {{text}}", path=str(path))
        table[lang] = {d: tuple(items) for d, items in dirs.items()}
    return table


def translation_conversations(
    pairs: Sequence[tuple[str, str]],
    n: int,
    *,
    target: str,
    target_name: str,
    source: str = "translation",
    seed: int = 0,
    phrasings: dict | None = None,
) -> list[Conversation]:
    """``n`` translation instructions from (target-language, English) ``pairs``, directions alternating.

    Each pair is used at most once per direction, so at most ``2 * len(pairs)`` come back.
    """
    table = phrasings or load_phrasings(target)
    langs = sorted(table)
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n = min(n, 2 * len(pairs))
    out: list[Conversation] = []
    for i in range(n):
        round_, k = divmod(i, len(order))
        tgt_text, en_text = pairs[order[k]]
        to_target = (k + round_) % 2 == 0  # the second round gives each pair its other direction
        lang = rng.choice(langs)
        direction = "to_target" if to_target else "to_english"
        phrasing = rng.choice(table[lang][direction])
        text, answer = (en_text, tgt_text) if to_target else (tgt_text, en_text)
        prompt = phrasing.replace("{lang}", target_name).replace("{text}", text.strip())
        out.append(Conversation(
            messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer.strip()}],
            language=lang,
            source=source,
            task="translation",
            id=f"{source}:{order[k]}:{'en-' + target if to_target else target + '-en'}",
        ))
    return out
