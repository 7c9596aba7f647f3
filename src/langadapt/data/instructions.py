"""Instruction data in the formats the paper used, read into one type: :class:`Conversation`.

Formats (``format`` of a recipe ``data.instructions`` entry):

- ``alpaca``: ``instruction``, optional ``input``, ``output`` (optional ``category``); a JSON array or JSONL.
- ``dolly``: ``instruction``, optional ``context``, ``response``, ``category``.
- ``oasst``: OpenAssistant message trees, either the flat message table of oasst1/oasst2
  (``message_id``, ``parent_id``, ``role``, ``text``, ``lang``, ``rank``, ...) or the nested
  tree export (one tree per line, ``prompt`` with ``replies``). One conversation per tree:
  from the root prompt, at every turn the best-ranked reply (``rank`` 0 is best; without ranks,
  the first reply), skipping deleted and review-rejected messages, until a leaf. A trailing
  user turn is dropped. Trees whose root is in another language than the source's are skipped.
- ``sni``: Super-NaturalInstructions task files (``Definition``, ``Positive Examples``,
  ``Instances`` with an ``output`` list; the task name is the file name). One conversation per
  instance: the definition, ``examples`` positive examples if the source asks for them, the input;
  the answer is the first non-empty output.
- ``messages``: chat records ``{"messages": [{"role", "content"}, ...]}`` ending with an assistant turn.
- ``pn_summary``: ``article``/``summary`` pairs, turned into a summarization instruction written
  in the source's language (a varied built-in phrasing, or the source's ``prompt``).

A source's ``path`` is a file, a folder (every .json/.jsonl/.parquet inside, sorted), a local
``datasets`` folder (``save_to_disk``), or a Hugging Face dataset: a hub id or a local dataset
repository, with the source's ``config``, ``split``, ``data_files``, ``revision``, caps and
``shuffle_buffer`` (:mod:`langadapt.data.hub`). ``fields`` maps a dataset's field names onto the
format's (``{instruction: inputs, output: targets}`` reads Aya's records as Alpaca).

Records that cannot become a conversation (missing fields, empty responses, ...) are counted per
reason in a :class:`ReadReport` and skipped; only a file that cannot be parsed at all is an error.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langadapt.errors import DataError

ROLES = ("system", "user", "assistant")
_ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
}
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass
class Conversation:
    """One training conversation: messages ending with the assistant turn the model learns."""

    messages: list[dict[str, str]]  # {"role": "system"|"user"|"assistant", "content": str}
    language: str
    source: str
    task: str | None = None
    id: str = ""
    categories: tuple[str, ...] = ()  # broader labels the task goes by (SNI categories), for hold-out

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The messages before the final assistant turn (what a user would send)."""
        return self.messages[:-1]

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]

    def to_json(self) -> dict:
        return {"id": self.id, "source": self.source, "language": self.language, "task": self.task,
                "categories": list(self.categories), "messages": self.messages}

    @classmethod
    def from_json(cls, d: dict) -> Conversation:
        return cls(messages=d["messages"], language=d["language"], source=d["source"], task=d.get("task"),
                   id=d.get("id", ""), categories=tuple(d.get("categories", ())))


class Skip(Exception):
    """A record that cannot become a conversation; ``reason`` is the short key it is counted under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ReadReport:
    """How many records a source had, how many became conversations, and why the rest did not."""

    source: str
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_at: dict[str, str] = field(default_factory=dict)  # reason -> where it first happened

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.first_at.setdefault(reason, where)

    def summary(self) -> str:
        line = f"{self.source}: {self.read:,} records, {self.kept:,} kept"
        if self.skipped:
            why = "; ".join(f"{n:,} {r} (first at {self.first_at[r]})" for r, n in self.skipped.most_common())
            line += f", {sum(self.skipped.values()):,} skipped: {why}"
        return line

    def to_json(self) -> dict:
        return {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped), "first_at": self.first_at}


def normalize_label(name: str) -> str:
    """'Sentiment Analysis' -> 'sentiment_analysis': the form task names are compared in."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


# --------------------------------------------------------------------------- raw records


def _json_array(text: str, start: int, path: Path) -> Iterator[tuple[str, Any]]:
    """Elements of the JSON array at ``text[start]`` with the line each starts on (json.load gives no positions)."""
    dec = json.JSONDecoder()
    ws = re.compile(r"[\s,]*")
    i = ws.match(text, start + 1).end()
    while i < len(text) and text[i] != "]":
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON: {e.msg} (column {e.colno})", path=str(path), line=e.lineno) from None
        yield f"{path}:{text.count(chr(10), 0, i) + 1}", obj
        i = ws.match(text, end).end()
    if i >= len(text):
        raise DataError("not valid JSON: the array is not closed with ']'", path=str(path), line=text.count(chr(10)) + 1)


def _iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a .json (array or one object), .jsonl or .parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {i + 1}", row
        return
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=str(path)) from None
    first = len(text) - len(text.lstrip())
    if path.suffix == ".json" and text[first:first + 1] == "[":
        yield from _json_array(text, first, path)
        return
    if path.suffix == ".json" and text[first:first + 1] == "{":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            head = text[first:].split("\n", 1)[0]
            try:
                json.loads(head)  # JSON lines saved under .json: read line by line below
            except json.JSONDecodeError:
                raise DataError(f"not valid JSON: {e.msg} (column {e.colno})", path=str(path), line=e.lineno) from None
        else:
            yield f"{path}:{text.count(chr(10), 0, first) + 1}", obj
            return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError:
            yield f"{path}:{lineno}", _BadJson()


class _BadJson:
    """Marks a JSON-lines line that does not parse: a malformed record, counted and skipped."""


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()


def iter_records(path: Path, *, split: str = "train", hub_id: str | None = None) -> Iterator[tuple[str, Any, str]]:
    """(where, record, file stem) for every record of a file, folder, saved dataset or hub dataset."""
    if path.is_file():
        for where, rec in _iter_file(path):
            yield where, rec, path.stem
        return
    if path.is_dir() and not _is_saved_dataset(path):
        files = _data_files(path)
        if not files:
            raise DataError(f"folder has no {', '.join(DATA_SUFFIXES)} files", path=str(path))
        for f in files:
            for where, rec in _iter_file(f):
                yield where, rec, f.stem
        return
    yield from _iter_dataset(path, split=split, hub_id=hub_id)


def _iter_dataset(path: Path, *, split: str, hub_id: str | None, source=None,
                  seed: int = 0) -> Iterator[tuple[str, Any, str]]:
    from types import SimpleNamespace

    from langadapt.data.hub import rows

    name = str(path) if path.exists() else (hub_id or str(path))
    source = source if source is not None else SimpleNamespace(path=name, split=split)
    what = f"instruction source '{source.name}'" if hasattr(source, "name") else "instructions"
    stem = Path(name).name
    for where, row in rows(source, path if path.exists() else name, what=what, seed=seed, streaming=False):
        yield where, row, stem


def reads_as_dataset(source, location: Path) -> bool:
    """Whether a source's records come through ``datasets`` (a hub id, a save_to_disk folder, a dataset
    repository folder, or any Hugging Face dataset setting given) rather than from its files directly."""
    from langadapt.data.hub import is_dataset_repo, is_saved_dataset

    if any(getattr(source, k, None) is not None for k in ("config", "data_files", "revision", "streaming",
                                                          "shuffle_buffer", "id_field")):
        return True
    if location.is_file():
        return False
    if location.is_dir():
        return is_saved_dataset(location) or is_dataset_repo(location)
    return True


def source_records(source, path: Path | None = None, *, seed: int = 0) -> Iterator[tuple[str, Any, str]]:
    """(where, record, file stem) of an ``InstructionSource``: its files or its dataset, the source's
    ``fields`` renamed to the format's names, at most its caps (``max_documents``, ``max_bytes``,
    ``max_tokens``)."""
    from langadapt.data.hub import Caps, row_text

    location = Path(path) if path is not None else Path(source.path)
    if reads_as_dataset(source, location):
        records = _iter_dataset(location, split=source.split, hub_id=source.path, source=source, seed=seed)
        caps = None  # the dataset reader applies them
    else:
        records = iter_records(location, split=source.split, hub_id=source.path)
        caps = Caps(source, what=f"instruction source '{source.name}'")
        caps = caps if caps.any else None
    rename = dict(getattr(source, "fields", None) or {})
    for where, rec, stem in records:
        if rename and isinstance(rec, dict):
            rec = {**rec, **{ours: rec.get(theirs) for ours, theirs in rename.items()}}
        if caps is not None:
            if caps.full():
                return
            caps.add(row_text(rec) if isinstance(rec, dict) else "")
        yield where, rec, stem


# --------------------------------------------------------------------------- field helpers


def _obj(rec: Any) -> dict:
    if isinstance(rec, _BadJson):
        raise Skip("not valid JSON")
    if not isinstance(rec, dict):
        raise Skip("record is not an object")
    return rec


def _text(rec: dict, key: str, *, required: bool = True, empty: str | None = None) -> str:
    """A string field; missing/None -> Skip("missing field"), blank -> Skip(empty) when given."""
    v = rec.get(key)
    if v is None:
        if required:
            raise Skip(f"missing field '{key}'")
        return ""
    if not isinstance(v, str):
        raise Skip(f"field '{key}' is not text")
    if empty is not None and not v.strip():
        raise Skip(empty)
    return v.strip()


def _pair(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


# --------------------------------------------------------------------------- formats, one record each


def _single_turn(extra_field: str, answer_field: str):
    """A parser for one instruction record: instruction, optional extra text (appended after a
    blank line), and the answer; Alpaca and Dolly differ only in the field names."""

    def parse(rec: Any) -> tuple[list[dict], str | None]:
        rec = _obj(rec)
        instruction = _text(rec, "instruction", empty="empty instruction")
        extra = _text(rec, extra_field, required=False)
        answer = _text(rec, answer_field, empty="empty response")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        return _pair(prompt, answer), _category(rec)

    return parse


parse_alpaca = _single_turn("input", "output")
parse_dolly = _single_turn("context", "response")


def parse_messages(rec: Any) -> tuple[list[dict], str | None]:
    rec = _obj(rec)
    raw = rec.get("messages", rec.get("conversations"))
    if raw is None:
        raise Skip("missing field 'messages'")
    if not isinstance(raw, list) or not raw:
        raise Skip("'messages' is not a non-empty list")
    messages = []
    for m in raw:
        if not isinstance(m, dict):
            raise Skip("message is not an object")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = _ROLE_ALIASES.get(str(role).lower()) if role is not None else None
        if role is None:
            raise Skip("message with unknown role")
        if not isinstance(content, str):
            raise Skip("message content is not text")
        if not content.strip():
            raise Skip("empty response" if role == "assistant" else "empty message")
        messages.append({"role": role, "content": content.strip()})
    if messages[-1]["role"] != "assistant":
        raise Skip("does not end with an assistant reply")
    if not any(m["role"] == "user" for m in messages):
        raise Skip("no user message")
    return messages, _category(rec) or _text_or_none(rec.get("task"))


def parse_pn_summary(rec: Any, prompt: str) -> tuple[list[dict], str | None]:
    rec = _obj(rec)
    article = _text(rec, "article", empty="empty article")
    summary = _text(rec, "summary", empty="empty response")
    return _pair(f"{prompt}\n\n{article}", summary), "summarization"


def parse_sni_task(rec: Any, *, examples: int) -> tuple[str, list[str], list[Any]]:
    """(prompt head: definition + examples, categories, instances) of one SNI task file."""
    rec = _obj(rec)
    if "Instances" not in rec:
        raise Skip("not a task file (no 'Instances')")
    definition = rec.get("Definition")
    if isinstance(definition, list):
        definition = "\n".join(d for d in definition if isinstance(d, str))
    if not isinstance(definition, str) or not definition.strip():
        raise Skip("task without a 'Definition'")
    head = definition.strip()
    shown = 0
    for ex in rec.get("Positive Examples") or []:
        if shown >= examples:
            break
        if isinstance(ex, dict) and isinstance(ex.get("input"), str) and isinstance(ex.get("output"), str):
            head += f"\n\nInput: {ex['input'].strip()}\nOutput: {ex['output'].strip()}"
            shown += 1
    cats = [c for c in rec.get("Categories") or [] if isinstance(c, str)]
    instances = rec["Instances"] if isinstance(rec["Instances"], list) else []
    return head, cats, instances


def parse_sni_instance(inst: Any, head: str, *, examples_shown: bool) -> list[dict]:
    inst = _obj(inst)
    text = _text(inst, "input", empty="empty input")
    outputs = inst.get("output")
    if outputs is None:
        raise Skip("missing field 'output'")
    if isinstance(outputs, str):
        outputs = [outputs]
    answer = next((o.strip() for o in outputs if isinstance(o, str) and o.strip()), None)
    if answer is None:
        raise Skip("empty response")
    prompt = f"{head}\n\nInput: {text}\nOutput:" if examples_shown else f"{head}\n\n{text}"
    return _pair(prompt, answer)


def _category(rec: dict) -> str | None:
    return _text_or_none(rec.get("category"))


def _text_or_none(v: Any) -> str | None:
    return v.strip() if isinstance(v, str) and v.strip() else None


# --------------------------------------------------------------------------- OpenAssistant trees


def _oasst_ok(msg: dict) -> bool:
    return not msg.get("deleted") and msg.get("review_result") is not False


def _best_reply(replies: list[dict]) -> dict | None:
    """The reply a conversation follows: best rank (0 first), unranked after ranked, then order."""
    ok = [r for r in replies if _oasst_ok(r) and isinstance(r.get("text"), str) and r["text"].strip()]
    if not ok:
        return None
    return min(enumerate(ok), key=lambda ir: (ir[1].get("rank") is None, ir[1].get("rank") or 0, ir[0]))[1]


def _oasst_path(root: dict, children) -> list[dict]:
    """Messages from ``root`` along the best-ranked replies; ``children(msg)`` lists a message's replies."""
    path = [root]
    node = root
    while True:
        node = _best_reply(children(node))
        if node is None:
            break
        path.append(node)
    messages = []
    for m in path:
        role = _ROLE_ALIASES.get(str(m.get("role")).lower())
        if role not in ("user", "assistant"):
            raise Skip("message with unknown role")
        messages.append({"role": role, "content": m["text"].strip()})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    if not messages:
        raise Skip("no assistant reply")
    return messages


def _oasst_trees(records: Iterable[tuple[str, Any, str]], report: ReadReport, language: str
                 ) -> Iterator[tuple[str, str, list[dict]]]:
    """(where, tree id, messages) per tree, from nested trees or a flat message table."""
    flat: dict[str, dict] = {}
    order: list[str] = []
    kids: dict[str, list[dict]] = {}
    where_of: dict[str, str] = {}
    for where, rec, _ in records:
        if isinstance(rec, dict) and isinstance(rec.get("prompt"), dict):  # nested export: one tree per record
            report.read += 1
            root = rec["prompt"]
            tid = str(rec.get("message_tree_id") or root.get("message_id") or where)
            try:
                if not _oasst_ok(root) or not isinstance(root.get("text"), str) or not root["text"].strip():
                    raise Skip("deleted or empty root prompt")
                if root.get("lang") and root["lang"] != language:
                    raise Skip(f"other language than '{language}'")
                messages = _oasst_path(root, lambda m: m.get("replies") or [])
            except Skip as s:
                report.skip(s.reason, where)
                continue
            yield where, tid, messages
            continue
        try:
            rec = _obj(rec)
            mid = rec.get("message_id")
            if not isinstance(mid, str) or not mid:
                raise Skip("missing field 'message_id'")
            if not isinstance(rec.get("text"), str):
                raise Skip("missing field 'text'")
        except Skip as s:
            report.read += 1
            report.skip(s.reason, where)
            continue
        flat[mid] = rec
        where_of[mid] = where
        parent = rec.get("parent_id")
        if parent:
            kids.setdefault(parent, []).append(rec)
        else:
            order.append(mid)
    for mid in order:  # roots of the flat table, in file order
        root = flat[mid]
        report.read += 1
        where = where_of[mid]
        try:
            if not _oasst_ok(root) or not root["text"].strip():
                raise Skip("deleted or empty root prompt")
            if root.get("lang") and root["lang"] != language:
                raise Skip(f"other language than '{language}'")
            messages = _oasst_path(root, lambda m: kids.get(m["message_id"], []))
        except Skip as s:
            report.skip(s.reason, where)
            continue
        yield where, str(root.get("message_tree_id") or mid), messages


# --------------------------------------------------------------------------- PN-Summary prompts

SUMMARY_PROMPTS: dict[str, tuple[str, ...]] = {
    "en": (
        "Summarize the following news article in a few sentences.",
        "Write a short summary of this article.",
        "Give the main points of the text below in one or two sentences.",
        "Read the article and sum it up briefly.",
        "What is this article about? Answer with a concise summary.",
        "Condense the following text into a short summary.",
    ),
    "fa": (
        "متن خبری زیر را در چند جمله خلاصه کن.",
        "خلاصه‌ای کوتاه از این مقاله بنویس.",
        "نکات اصلی متن زیر را در یک یا دو جمله بیان کن.",
        "این خبر را بخوان و به‌طور خلاصه بگو درباره چیست.",
        "متن زیر را کوتاه و مفید خلاصه کن.",
        "چکیده‌ای از متن زیر بنویس.",
    ),
}


def _pick(options: tuple[str, ...], key: str) -> str:
    """A phrasing chosen by a hash of the record, so the choice is the same on every run."""
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


# --------------------------------------------------------------------------- a whole source


def read_instructions(source, *, path: Path | None = None, seed: int = 0) -> tuple[list[Conversation], ReadReport]:
    """Read a recipe ``InstructionSource`` into conversations, skipping (and counting) bad records.

    ``path`` is the resolved location (the recipe resolves relative paths); default ``source.path``.
    ``seed`` shuffles a dataset source that sets ``shuffle_buffer``.
    """
    fmt = source.format
    lang = source.language
    report = ReadReport(source=source.name)
    records = source_records(source, path, seed=seed)
    limit = source.max_records
    default_task = getattr(source, "task", None)
    out: list[Conversation] = []

    def keep(messages: list[dict], task: str | None, cid: str, categories: tuple[str, ...] = ()) -> bool:
        out.append(Conversation(messages=messages, language=lang, source=source.name, task=task or default_task,
                                id=cid, categories=categories))
        report.kept += 1
        return limit is not None and report.kept >= limit

    if fmt == "oasst":
        for _, tid, messages in _oasst_trees(records, report, lang):
            if keep(messages, default_task or "open_conversation", f"{source.name}:{tid}"):
                break
        return out, report

    if fmt == "pn_summary":
        prompts = (source.prompt,) if getattr(source, "prompt", None) else SUMMARY_PROMPTS.get(lang)
        if not prompts:
            raise DataError(f"data.instructions '{source.name}': no built-in summarization prompt for language "
                            f"'{lang}'; set 'prompt' on the source to the instruction to use")

    for where, rec, stem in records:
        if fmt == "sni":
            try:
                head, cats, instances = parse_sni_task(rec, examples=getattr(source, "examples", 0))
            except Skip as s:
                report.read += 1
                report.skip(s.reason, where)
                continue
            shown = "\nInput: " in head
            labels = tuple(normalize_label(c) for c in cats)
            done = False
            for i, inst in enumerate(instances):
                report.read += 1
                try:
                    messages = parse_sni_instance(inst, head, examples_shown=shown)
                except Skip as s:
                    report.skip(s.reason, f"{where} (instance {i + 1})")
                    continue
                iid = inst.get("id") if isinstance(inst.get("id"), str) else f"{stem}-{i + 1}"
                if keep(messages, stem, f"{source.name}:{iid}", labels):
                    done = True
                    break
            if done:
                break
            continue
        report.read += 1
        try:
            if fmt == "alpaca":
                messages, task = parse_alpaca(rec)
            elif fmt == "dolly":
                messages, task = parse_dolly(rec)
            elif fmt == "messages":
                messages, task = parse_messages(rec)
            elif fmt == "pn_summary":
                key = str(rec.get("id", where)) if isinstance(rec, dict) else where
                messages, task = parse_pn_summary(rec, _pick(prompts, key))
            else:
                raise DataError(f"unknown instruction format '{fmt}'")
        except Skip as s:
            report.skip(s.reason, where)
            continue
        rid = rec.get("id") if isinstance(rec.get("id"), (str, int)) else report.read
        if keep(messages, task, f"{source.name}:{rid}"):
            break
    return out, report
