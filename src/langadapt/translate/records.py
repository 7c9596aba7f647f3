"""Instruction records as the translate stage sees them: named text fields to translate, plus
everything that must come out unchanged (ids, roles, task labels).

Alpaca and Dolly records keep their three fields apart (instruction, input, output), so the
translation is written back as an Alpaca record. Every other format is read by the shared
readers (:mod:`langadapt.data.instructions`) into conversations and written back as a chat
``messages`` record with the same roles. Either form is what the sft stage reads directly
(formats ``alpaca`` and ``messages``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from langadapt.data import instructions as readers

ALPACA_FIELDS = ("instruction", "input", "output")


@dataclass
class Item:
    """One record to translate. ``fields`` maps a field name (``instruction``... or the index of a
    message) to its text; ``roles`` holds the message roles of a conversation."""

    key: str
    kind: str  # "alpaca" or "messages"
    fields: dict[str, str]
    roles: list[str] = field(default_factory=list)
    task: str | None = None
    categories: tuple[str, ...] = ()
    where: str = ""

    def prompt_text(self) -> str:
        """The task as asked (the instruction, or the non-assistant turns): where wording rules look.

        An Alpaca/Dolly input is material (an article, a passage) whose words say nothing about the task.
        """
        if self.kind == "alpaca":
            return self.fields["instruction"]
        return "\n".join(self.fields[str(i)] for i, r in enumerate(self.roles) if r != "assistant")

    def to_record(self, translated: dict[str, str], *, source: str, source_language: str, language: str) -> dict:
        """The output line: the record's structure with its fields translated."""
        if self.kind == "alpaca":
            rec = {"id": self.key, **{k: translated[k] for k in ALPACA_FIELDS}, "category": self.task}
        else:
            rec = {"id": self.key,
                   "messages": [{"role": r, "content": translated[str(i)]} for i, r in enumerate(self.roles)],
                   "category": self.task, "categories": list(self.categories)}
        rec.update(source=source, source_language=source_language, language=language)
        return rec


def output_format(source_format: str) -> str:
    """The sft reader format of a source's translated file."""
    return "alpaca" if source_format in ("alpaca", "dolly") else "messages"


def read_items(source, path: Path, limit: int | None = None) -> tuple[list[Item], readers.ReadReport]:
    """Read one ``data.instructions`` source into items; malformed records are counted and skipped."""
    if source.format in ("alpaca", "dolly"):
        items, report = _read_flat(source, path, limit)
    else:
        if limit is not None and (source.max_records is None or limit < source.max_records):
            source = source.model_copy(update={"max_records": limit})
        conversations, report = readers.read_instructions(source, path=path)
        items = [Item(key=c.id, kind="messages", fields={str(i): m["content"] for i, m in enumerate(c.messages)},
                      roles=[m["role"] for m in c.messages], task=c.task, categories=tuple(c.categories))
                 for c in conversations]
    # Resume and the output are keyed by id: a second record under one id would be lost, so it is refused.
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.key in seen:
            report.kept -= 1
            report.skip("repeated id", item.where or item.key)
            continue
        seen.add(item.key)
        unique.append(item)
    return unique, report


def _read_flat(source, path: Path, limit: int | None) -> tuple[list[Item], readers.ReadReport]:
    """Alpaca/Dolly records field by field, validated and identified exactly as the sft readers do."""
    report = readers.ReadReport(source=source.name)
    caps = [n for n in (limit, source.max_records) if n is not None]
    cap = min(caps) if caps else None
    parse = readers.parse_alpaca if source.format == "alpaca" else readers.parse_dolly
    names = ALPACA_FIELDS if source.format == "alpaca" else ("instruction", "context", "response")
    items: list[Item] = []
    for where, rec, _ in readers.source_records(source, path):
        report.read += 1
        try:
            _, category = parse(rec)
        except readers.Skip as s:
            report.skip(s.reason, where)
            continue
        rid = rec.get("id") if isinstance(rec.get("id"), (str, int)) else report.read
        key = f"{source.name}:{rid}"
        fields = {out: (rec.get(name) or "").strip() for out, name in zip(ALPACA_FIELDS, names)}
        items.append(Item(key=key, kind="alpaca", fields=fields, task=category or source.task, where=where))
        report.kept += 1
        if cap is not None and report.kept >= cap:
            break
    return items, report
