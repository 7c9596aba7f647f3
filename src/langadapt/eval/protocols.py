"""The input translation protocol (paper section 5.4, Table 7): target-language tasks run again with the
instruction translated to English ("instruction"), or with the instruction and every input field
translated ("instruction+input"). Label words and the answer cue switch to English with the
instruction; a summary is still asked for in the target language (the instruction says so).

Translations come from the evaluated model itself (``self``: it is asked to translate each text,
greedy, batched), from a given file (``file``: JSONL ``{"source", "english"}`` or TSV
``source<TAB>english``), or, for the instruction only, from the task's own English template (``task``).
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from langadapt.errors import DataError
from langadapt.eval import prompts, scoring
from langadapt.eval.prompts import PromptParts
from langadapt.eval.tasks import Task, few_shot_pool

VARIANTS = {"instruction": "translated-instruction", "instruction+input": "translated-instruction+input"}


def applies_to(task: Task) -> bool:
    """Target-language tasks other than translation itself (translating its input would give the answer)."""
    return task.language != "en" and task.family != "translation"


def read_translation_file(path: Path) -> dict[str, str]:
    """source text -> English, from JSONL (``source``/``english`` or ``translation``) or TSV."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    obj = json.loads(line)
                    src, en = obj["source"], obj.get("english", obj.get("translation"))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError("expected a JSON object with 'source' and 'english'", path=str(path), line=i) from None
            else:
                cells = line.rstrip("\r\n").split("\t")
                if len(cells) < 2:
                    raise DataError("expected 'source<TAB>english'", path=str(path), line=i)
                src, en = cells[0], cells[1]
            if not isinstance(en, str) or not en.strip():
                raise DataError("empty translation", path=str(path), line=i)
            out[_key(src)] = en.strip()
    return out


def _key(text: str) -> str:
    return " ".join(text.split())


def _needs_translation(text: str, lang: str) -> bool:
    """Numbers, and names already in Latin letters, stay as they are."""
    letters = [c for c in text if c.isalpha()]
    script = scoring._SCRIPT_OF_LANG.get(lang)
    if not letters:
        return False
    return script is None or any(unicodedata.name(c, "").startswith(script) for c in letters)


def translation_prompt(text: str, source_lang: str) -> list[dict]:
    fam = prompts._fam()["families"]["translation"]["instruction"]["en"]
    instr = prompts.render_template(fam, {"source_name": prompts.language_name("en", source_lang),
                                          "target_name": prompts.language_name("en", "en")})
    return [{"role": "user", "content": f"{instr}\n\n{text}"}]


def make_parts(variant: str, task: Task, examples, *, translator: str, backend=None, file_map: dict | None = None,
               few_shot: int = 0, seed: int = 0, batch_size: int = 8, max_new_tokens: int = 128,
               repetition_penalty: float = 1.1, console=None) -> PromptParts:
    """Prompt parts for ``variant`` of the protocol on ``task`` (translations done here, once per text)."""
    translate_input = variant == "instruction+input"
    pool = task.examples()
    involved = {e.id: e for e in examples}
    for e in examples:
        for s in few_shot_pool(pool, e, few_shot, seed):
            involved[s.id] = s
    texts: list[str] = []
    if translator != "task":
        texts += [prompts.instruction_text(task, task.language, e, task.language) for e in involved.values()]
    if translate_input:
        for e in involved.values():
            texts += [v for k, v in e.fields.items() if k != "definition"]
            texts += e.options or []
    texts = [t for t in dict.fromkeys(texts) if t.strip() and _needs_translation(t, task.language)]
    translations: dict[str, str] = {}
    if translator == "file":
        missing = [t for t in texts if _key(t) not in (file_map or {})]
        if missing:
            raise DataError(f"{len(missing)} of {len(texts)} texts of task '{task.id}' have no translation in the "
                            f"protocol file (first: {missing[0][:80]!r})")
        translations = {t: file_map[_key(t)] for t in texts}
    elif translator == "self" and texts:
        from langadapt.eval.evaluate import progress_bar

        with progress_bar(console, len(texts), f"{getattr(backend, 'name', 'model')} · translating {task.id}") as adv:
            outs = backend.generate([translation_prompt(t, task.language) for t in texts], lang="en",
                                    batch_size=batch_size, max_new_tokens=max_new_tokens,
                                    repetition_penalty=repetition_penalty, progress=adv)
        translations = {t: (o.strip() or t) for t, o in zip(texts, outs)}
    return PromptParts(instruction_lang="en", label_lang="en", translations=translations,
                       instruction_from="template" if translator == "task" else "translations",
                       translate_input=translate_input)
