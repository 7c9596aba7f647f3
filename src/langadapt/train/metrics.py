"""What a training call records: one ``metrics.jsonl`` row per logged step (and the same figures to the
recipe's experiment trackers, ``tracking.py``), held-out bits per character (``bpc.json``), and the
running totals of tokens and time.

On a GPU the loop never waits for the device to log: a logged step's loss and gradient norm are
copied to pinned host memory without blocking, and the row is written one logged step later
(`MetricsLog.resolve`); on the CPU rows are written at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langadapt.errors import DivergedError
from langadapt.files import append_jsonl, iter_jsonl, read_json, write_json, write_jsonl
from langadapt.layout import METRICS

DIVERGED_HINT = ("Lower lr (or embedding_lr), train in fp32 or bf16 rather than fp16, or look for broken data; "
                 "--restart starts the stage over")


def memory_mb() -> float:
    """Peak memory so far: the GPU's allocated peak, or this process's peak resident set on the CPU."""
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass
class Totals:
    """Tokens and time of the run so far (restored from a checkpoint when resuming). Tokens and seconds
    accumulate in a window that `flush` adds to the totals at every logged step and checkpoint."""

    tokens: int = 0  # training tokens of all processes
    train_seconds: float = 0.0  # wall time inside training steps
    cpu_seconds: float = 0.0  # CPU time of the training steps, all threads of this process
    seconds_before: float = 0.0  # wall time of the run before this process resumed it
    window_tokens: int = 0
    window_seconds: float = 0.0

    def flush(self) -> tuple[int, float]:
        """Add the window to the totals; return its (tokens, seconds)."""
        toks, secs = self.window_tokens, self.window_seconds
        self.tokens += toks
        self.train_seconds += secs
        self.window_tokens, self.window_seconds = 0, 0.0
        return toks, secs


TRACKED = ("loss", "lr", "lr_embeddings", "grad_norm", "tokens_per_s", "memory_mb")
"""The figures of a logged step sent to the trackers, as ``train/<figure>``."""


class MetricsLog:
    """The ``metrics.jsonl`` rows of one training call (``name``), written by the main process only, and the
    same figures sent to ``trackers`` (a started ``tracking.Trackers``; None: none).

    A resumed call first drops the rows of its name past the step it resumes from (a fresh call: all
    of them), so the file reads as one uninterrupted run.
    """

    def __init__(self, out_dir: Path, name: str, *, main: bool, cuda: bool, resumed_at: int | None, bar=None,
                 trackers=None):
        self.path = out_dir / METRICS
        self.name, self.main, self.cuda, self.bar = name, main, cuda, bar
        self.last_loss: float | None = None
        self.pending: list[tuple[dict, Any, Any]] = []  # (row, pinned host copy, CUDA event)
        self.trackers = trackers
        if not main:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            keep = [r for r in iter_jsonl(self.path)
                    if not (r.get("name") == name and (resumed_at is None or r.get("step", 0) > resumed_at))]
            write_jsonl(self.path, keep)

    def step(self, row: dict, values) -> None:
        """A logged step: ``row`` without its loss and gradient norm, ``values`` = [loss, grad norm, steps with a
        non-finite loss so far] on the device. A non-finite loss stops training (``DivergedError``) when the
        values reach the host."""
        if not self.cuda:
            self._write(row, values.tolist())
            return
        import torch

        host = torch.empty(values.numel(), dtype=torch.float32, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((row, host, event))
        self.resolve()

    def resolve(self, everything: bool = False) -> None:
        """Write the rows whose values have reached the host; all of them (waiting) if ``everything``."""
        while self.pending and (everything or len(self.pending) > 1):
            row, host, event = self.pending.pop(0)
            event.synchronize()  # recorded a logged step ago: the device is already past it
            self._write(row, host.tolist())

    def _write(self, row: dict, values) -> None:
        loss, norm, *bad = values
        if not math.isfinite(loss) or (bad and bad[0] > 0):
            what = f"the training loss is {loss} at step {row['step']:,}" if not math.isfinite(loss) else \
                f"a loss or gradient was NaN or infinite at step {row['step']:,} or before"
            raise DivergedError(f"{self.name}: {what} (lr {row['lr']:.3g}); stopped before saving anything of it. "
                                f"{DIVERGED_HINT}")
        row["loss"] = round(loss, 5)
        row["grad_norm"] = None if math.isnan(norm) else round(norm, 5)
        self.last_loss = loss
        if not self.main:
            return
        append_jsonl(self.path, row)
        if self.trackers is not None:
            self.trackers.log({f"train/{k}": row[k] for k in TRACKED if row.get(k) is not None}, row["step"])
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s'] or 0:.0f}")

    def heldout(self, step: int, values: dict[str, float]) -> None:
        if self.main and values:
            append_jsonl(self.path, {"name": self.name, "step": step,
                                     **{f"bpc_{k}": round(v, 5) for k, v in values.items()}})
            if self.trackers is not None:
                self.trackers.log({f"heldout/bpc_{k}": float(v) for k, v in values.items()}, step)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.finish()


class HeldOut:
    """Held-out bits per character of the model being trained, one value per text and measurement."""

    def __init__(self, texts: dict[str, str | list[str]], tokenizer, history: dict[str, list[dict]] | None = None):
        self.texts = {k: v for k, v in texts.items() if v}
        self.tokenizer = tokenizer
        self.history: dict[str, list[dict]] = {k: list((history or {}).get(k, [])) for k in self.texts}

    def __bool__(self) -> bool:
        return bool(self.texts)

    def measure(self, model, accelerator, step: int, known: dict[str, float] | None = None) -> dict[str, float]:
        """Bits per character of every text now (``known``: values already measured on this very model)."""
        from langadapt.train.bpc import bits_per_char, bits_per_char_documents

        values = {}
        with accelerator.autocast():
            for lang, text in self.texts.items():
                if known and lang in known:
                    values[lang] = float(known[lang])
                elif isinstance(text, list):  # documents, each scored whole
                    values[lang] = bits_per_char_documents(model, self.tokenizer, text)
                else:
                    values[lang] = bits_per_char(model, self.tokenizer, text)
                self.history[lang].append({"step": step, "bpc": values[lang]})
        return values

    def result(self) -> dict[str, dict]:
        """``{"target": {"start", "end", "steps": [...]}, ...}`` of what was measured."""
        return {lang: {"start": pts[0]["bpc"], "end": pts[-1]["bpc"], "steps": pts}
                for lang, pts in self.history.items() if pts}


def merge_bpc(path: Path, name: str, mine: dict) -> dict:
    """Merge one training call's held-out results into ``bpc.json`` (start from the first name, end from the last)."""
    merged = read_json(path) if path.is_file() else {}
    for lang, r in mine.items():
        entry = merged.setdefault(lang, {})
        entry[name] = {"start": r["start"], "end": r["end"]}
        steps = [s for s in entry.get("steps", []) if s.get("name") != name]
        entry["steps"] = steps + [{"name": name, **s} for s in r["steps"]]
        names = list(dict.fromkeys(s["name"] for s in entry["steps"]))  # in the order the calls ran
        entry["start"] = entry[names[0]]["start"]
        entry["end"] = entry[names[-1]]["end"]
    write_json(path, merged)
    return merged


def describe_bpc(bpc: dict) -> str:
    """One line per language: ``target 3.1200 -> 2.8000 (-10.3%)``."""
    lines = []
    for lang, r in bpc.items():
        if not isinstance(r, dict) or "start" not in r:
            continue
        change = 100 * (r["end"] - r["start"]) / r["start"] if r["start"] else 0.0
        lines.append(f"{lang:<8} {r['start']:.4f} -> {r['end']:.4f} bits/char ({change:+.1f}%)")
    return "\n".join(lines)


def elapsed(totals: Totals, t_start: float) -> float:
    return totals.seconds_before + (time.time() - t_start)
