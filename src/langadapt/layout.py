"""Where a run's outputs live: the one place that knows the folder layout of ``<output_dir>/<name>/``.

Every reader of a run goes through here: the stages reading what earlier stages wrote, ``run``
(markers), ``plan``, the report, chat/serve/export (a stage's model). A stage writes only inside
its own folder; what other code may read of it is listed here:

| stage | files others read |
| --- | --- |
| every stage | ``COMPLETE.json`` (marker: hash, seconds, summary), ``STARTED.json`` (an unfinished run) |
| align, pretrain, sft (while unfinished) | ``checkpoints/<name>/step-N/`` (complete once ``trainer_state.json`` is in it) |
| clean | ``documents/*.jsonl`` or ``*.parquet`` (``{"text", ...}`` per line/row; ``sentences/`` in older runs), ``report.json`` |
| tokenizer | ``model/``, ``report.json`` |
| align, pretrain, sft | ``model/`` or ``adapter/``, ``bpc.json``, ``metrics.jsonl`` |
| translate | ``instructions/index.json`` (the sources it wrote, for sft), ``instructions/*.jsonl`` |
| eval | ``results.json`` |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.files import read_json

COMPLETE = "COMPLETE.json"
STARTED = "STARTED.json"
MODEL_DIRS = ("adapter", "model")  # a stage's model: a PEFT adapter folder, or a full save_pretrained folder
DOCUMENTS = "documents"  # the clean stage's output: kept sentences put back together as documents
SENTENCES = "sentences"  # what runs before documents wrote (one sentence per row); still read
TRANSLATED = "instructions"
TRANSLATED_INDEX = "index.json"
BPC = "bpc.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
REPORT = "report.json"
RESULTS = "results.json"


def read_optional(path: Path):
    """JSON content, or None when the file is absent, torn or hand-broken (treated as not written)."""
    try:
        return read_json(path) if path.is_file() else None
    except (ValueError, OSError):
        return None


def stage_artifact(stage_dir: Path) -> Path | None:
    """The model a stage folder holds (``adapter/`` or ``model/``), or None."""
    for sub in MODEL_DIRS:
        if (stage_dir / sub).is_dir():
            return stage_dir / sub
    return None


@dataclass(frozen=True)
class RunLayout:
    """The folders and files of one run (``root`` = ``<output_dir>/<name>``)."""

    root: Path

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    # ---- markers

    def marker_path(self, stage: str) -> Path:
        return self.root / stage / COMPLETE

    def started_path(self, stage: str) -> Path:
        return self.root / stage / STARTED

    def marker(self, stage: str) -> dict | None:
        """The stage's completion marker; None when absent or unreadable (a torn marker counts as missing)."""
        m = read_optional(self.marker_path(stage))
        return m if isinstance(m, dict) else None

    def status(self, stage: str) -> str:
        """'complete' (a marker, whatever its hash), 'partial' (started, not finished) or 'not run'."""
        if self.marker(stage) is not None:
            return "complete"
        return "partial" if self.started_path(stage).is_file() else "not run"

    def checkpoints(self, stage: str) -> list[Path]:
        """The complete checkpoints an unfinished training stage left (``checkpoints/<name>/step-N``), by name."""
        root = self.root / stage / CHECKPOINTS
        if not root.is_dir():
            return []
        return sorted(d for d in root.glob("*/step-*") if d.name[5:].isdigit() and (d / "trainer_state.json").is_file())

    # ---- models

    def model(self, stage: str) -> Path | None:
        return stage_artifact(self.root / stage)

    def require_model(self, stage: str, run_name: str | None = None) -> Path:
        found = self.model(stage)
        if found is None:
            raise LangadaptError(f"stage '{stage}' of run '{run_name or self.root.name}' has no model in "
                                 f"{self.root / stage}; run it first (langadapt run)")
        return found

    def stages_with_models(self, order: tuple[str, ...]) -> list[str]:
        """Stages of ``order`` whose folder holds a model."""
        return [s for s in order if self.model(s) is not None]

    # ---- what stages wrote for others

    def clean_shards(self) -> list[Path]:
        """The clean stage's shards (rows with a ``text``: documents, or sentences in runs made before
        documents), JSONL then Parquet, each in name order; an error when there are none."""
        for name in (DOCUMENTS, SENTENCES):
            folder = self.root / "clean" / name
            files = sorted(folder.glob("*.jsonl")) + sorted(folder.glob("*.parquet"))
            if files:
                return files
        raise LangadaptError(f"no cleaned documents in {self.root / 'clean' / DOCUMENTS}/; run the clean stage first "
                             "(langadapt clean RECIPE)")

    def report_path(self, stage: str) -> Path:
        """``report.json`` of the clean, tokenizer or translate stage."""
        return self.root / stage / REPORT

    def report(self, stage: str) -> dict | None:
        return read_optional(self.report_path(stage))

    def bpc(self, stage: str) -> dict | None:
        """A training stage's held-out bits per character: ``{"target": {"start", "end", ...}, ...}``."""
        b = read_optional(self.bpc_path(stage))
        return b if isinstance(b, dict) else None

    def bpc_end(self, stage: str) -> dict[str, float]:
        """The end values of ``bpc``: ``{"target": 3.21, "english": 1.50}`` (empty when not measured)."""
        out = {}
        for key, v in (self.bpc(stage) or {}).items():
            if isinstance(v, dict) and isinstance(v.get("end"), (int, float)):
                out[key] = float(v["end"])
        return out

    def bpc_path(self, stage: str) -> Path:
        return self.root / stage / BPC

    def metrics(self, stage: str, limit: int = 200_000) -> list[dict]:
        """A training stage's ``metrics.jsonl`` rows (a torn last line of a killed run is skipped)."""
        path = self.root / stage / METRICS
        out: list[dict] = []
        if not path.is_file():
            return out
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= limit:
                    break
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def translated_dir(self) -> Path:
        return self.root / "translate" / TRANSLATED

    def translated_index(self) -> list[dict]:
        """What the translate stage wrote: ``[{"name", "source", "format", "path", "language", "task"}, ...]``."""
        idx = read_optional(self.translated_dir() / TRANSLATED_INDEX)
        return idx if isinstance(idx, list) else []

    def results_path(self) -> Path:
        return self.root / "eval" / RESULTS

    def results(self) -> dict | None:
        return read_optional(self.results_path())
