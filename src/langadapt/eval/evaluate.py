"""One model over a list of tasks: prompts, scoring, parsing, metrics, and result rows.

A result row is ``{model, stage, task, language, metric, value, n, protocol, settings}``; the stage
writes them to results.json/csv and the report lays them out like the paper's tables.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from langadapt.eval import metrics, prompts, scoring
from langadapt.eval.prompts import PromptParts
from langadapt.eval.tasks import Task, few_shot_pool, subset

ORIGINAL = "original"


@dataclass
class EvalSettings:
    mode: str = "loglik"  # classification by "loglik" (default) or "generate"
    batch_size: int = 8
    max_examples: int | None = None
    max_examples_per_task: dict[str, int] = field(default_factory=dict)
    few_shot: int | None = None  # None: each task's own count
    max_new_tokens: int | None = None  # a cap on each task's own limit
    repetition_penalty: float = 1.1
    seed: int = 0

    def examples_for(self, task: Task) -> int | None:
        for key in (task.id, task.name):
            if key in self.max_examples_per_task:
                return self.max_examples_per_task[key]
        return self.max_examples if self.max_examples is not None else task.max_examples

    def new_tokens(self, task: Task) -> int:
        return min(task.max_new_tokens, self.max_new_tokens) if self.max_new_tokens else task.max_new_tokens

    def shots(self, task: Task) -> int:
        return task.few_shot if self.few_shot is None else self.few_shot


def selected_examples(task: Task, settings: EvalSettings):
    return subset(task.examples(), settings.examples_for(task), settings.seed)


def random_baseline(task: Task, settings: EvalSettings) -> float | None:
    """Expected accuracy of uniform guessing over the options each evaluated item offers."""
    if task.kind != "choice":
        return None
    return metrics.random_accuracy([len(task.options(e)) for e in selected_examples(task, settings)])


@contextlib.contextmanager
def progress_bar(console, total: int, description: str):
    """A rich progress bar with ETA; yields ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as prog:
        tid = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(tid, n)


def evaluate_model(backend, tasks: list[Task], settings: EvalSettings, *, model: str, stage: str,
                   protocol: str = ORIGINAL, parts_for=None, predictions_dir: Path | None = None,
                   console=None) -> list[dict]:
    """Evaluate ``backend`` on every task; ``parts_for(task, examples)`` gives protocol prompt parts."""
    rows: list[dict] = []
    for task in tasks:
        examples = selected_examples(task, settings)
        parts = parts_for(task, examples) if parts_for else None
        rows += evaluate_task(backend, task, examples, settings, model=model, stage=stage, protocol=protocol,
                              parts=parts, predictions_dir=predictions_dir, console=console)
    return rows


def evaluate_task(backend, task: Task, examples, settings: EvalSettings, *, model: str, stage: str,
                  protocol: str = ORIGINAL, parts: PromptParts | None = None, predictions_dir: Path | None = None,
                  console=None) -> list[dict]:
    parts = parts or PromptParts(task.language, task.language)
    pool = task.examples()
    k = settings.shots(task)
    convs = [prompts.build_messages(task, ex, few_shot_pool(pool, ex, k, settings.seed), parts) for ex in examples]
    lang = parts.label_lang
    use_loglik = task.kind == "choice" and settings.mode == "loglik" and backend.supports_loglik
    mode = "loglik" if use_loglik else "generate"
    run_settings = {
        "mode": mode, "few_shot": k, "seed": settings.seed, "batch_size": settings.batch_size,
        "max_examples": settings.examples_for(task), "data": [str(p) for p in task.paths],
        "instruction_language": parts.instruction_lang, "label_language": lang, **backend.settings(),
    }
    if mode == "generate":
        run_settings.update(decoding="greedy", max_new_tokens=settings.new_tokens(task),
                            repetition_penalty=settings.repetition_penalty)
    n = len(examples)
    desc = f"{model} · {task.id}" + ("" if protocol == ORIGINAL else f" · {protocol}")
    preds: list[dict] = []
    out: dict[str, tuple[float, int]] = {}

    with progress_bar(console, n, desc) as advance:
        if use_loglik:
            opts = [task.options(ex, lang) for ex in examples]
            scores = backend.loglik(convs, [[w for _, w in o] for o in opts], lang=lang,
                                    batch_size=settings.batch_size, progress=advance)
            correct = correct_norm = 0
            for ex, o, s, conv in zip(examples, opts, scores, convs):
                best = max(range(len(s)), key=lambda j: s[j])
                best_norm = max(range(len(s)), key=lambda j: s[j] / max(1, len(o[j][1])))
                correct += o[best][0] == ex.label
                correct_norm += o[best_norm][0] == ex.label
                preds.append({"id": ex.id, "gold": ex.label, "prediction": o[best][0],
                              "scores": {lab: round(v, 4) for (lab, _), v in zip(o, s)}, "category": ex.category,
                              "prompt": _shown(conv)})
            out["accuracy"] = (correct / n, n)
            out["accuracy_norm"] = (correct_norm / n, n)
        else:
            outputs = backend.generate(convs, lang=lang, batch_size=settings.batch_size,
                                       max_new_tokens=settings.new_tokens(task),
                                       repetition_penalty=settings.repetition_penalty, progress=advance)
            if task.kind == "choice":
                correct = not_following = 0
                for ex, text, conv in zip(examples, outputs, convs):
                    accepted = _accepted_words(task, ex)
                    label, reason = scoring.parse_choice(text, accepted, source=conv[-1]["content"])
                    correct += label == ex.label
                    not_following += reason is not None
                    preds.append({"id": ex.id, "gold": ex.label, "output": text, "prediction": label,
                                  "not_following": reason, "category": ex.category, "prompt": _shown(conv)})
                out["accuracy"] = (correct / n, n)
                out["non_following"] = (not_following, n)
            else:
                hyps = [scoring.first_line(t) if task.first_line else t.strip() for t in outputs]
                refs = [ex.reference or "" for ex in examples]
                not_following = 0
                for ex, text, hyp, conv in zip(examples, outputs, hyps, convs):
                    src = ex.fields.get("source") or ex.fields.get("article") or ex.fields.get("input", "")
                    reason = scoring.check_generation(hyp, source=src, output_lang=task.output_lang)
                    not_following += reason is not None
                    preds.append({"id": ex.id, "reference": ex.reference, "output": text, "hypothesis": hyp,
                                  "not_following": reason, "prompt": _shown(conv)})
                for m in task.metrics:
                    if m == "bleu":
                        value, sig = metrics.bleu(hyps, refs)
                        run_settings["bleu_signature"] = sig
                        out["bleu"] = (value, n)
                    elif m == "chrf":
                        value, sig = metrics.chrf(hyps, refs)
                        run_settings["chrf_signature"] = sig
                        out["chrf"] = (value, n)
                    elif m == "rouge_l":
                        out["rouge_l"] = (metrics.rouge_l(hyps, refs), n)
                out["non_following"] = (not_following, n)

    if "accuracy" in out:  # what accuracy hides: a model answering one label for (nearly) everything
        gold = [p["gold"] for p in preds]
        answered = [p["prediction"] for p in preds]  # None (no label named) counts against its item
        out["macro_f1"] = (metrics.macro_f1(answered, gold), n)
        out["majority_gold"] = (metrics.majority_share(gold), n)
        named = [a for a in answered if a is not None]  # the most common label named, over all n items
        out["majority_predicted"] = (metrics.majority_share(named) * len(named) / n if n else 0.0, n)

    if "accuracy" in out and task.family == "multiple_choice":
        cats: dict[str, list[bool]] = {}
        for p in preds:
            if p.get("category"):
                cats.setdefault(p["category"], []).append(p["prediction"] == p["gold"])
        for cat, hits in sorted(cats.items()):
            out[f"accuracy:{cat}"] = (sum(hits) / len(hits), len(hits))

    if predictions_dir is not None:
        from langadapt.files import write_jsonl

        safe = f"{model}__{task.language}_{task.name}" + ("" if protocol == ORIGINAL else f"__{protocol}")
        write_jsonl(Path(predictions_dir) / f"{_slug(safe)}.jsonl", preds)

    return [make_row(model, stage, task, metric, value, count, protocol, run_settings)
            for metric, (value, count) in out.items()]


def _shown(conv: list[dict], limit: int = 2000) -> str:
    """The query as the model saw it (last user message), for the predictions file."""
    text = conv[-1]["content"]
    return text if len(text) <= limit else text[:limit] + " …"


def _accepted_words(task: Task, ex) -> list[tuple[str, list[str]]]:
    """Strings that name each option in a generated answer: label words in every language the task
    has (a Persian task answered "positive" still names a label), or an option's number and text."""
    if task.family == "multiple_choice" and ex.options is not None:
        return [(str(i), [str(i), c]) for i, c in enumerate(ex.options, 1)]
    out = []
    for lab in task.label_set():
        words = set(task.labels.get(lab, {}).values()) | {lab}
        out.append((lab, sorted(words, key=len, reverse=True)))
    return out


def make_row(model: str, stage: str, task: Task, metric: str, value: float, n: int, protocol: str,
             settings: dict) -> dict:
    v = float(value)
    return {"model": model, "stage": stage, "task": task.name, "language": task.language, "metric": metric,
            "value": round(v, 6) if math.isfinite(v) else None, "n": n, "protocol": protocol, "settings": settings}


def task_info(task: Task, settings: EvalSettings) -> dict:
    """What the report needs to know about a task besides scores."""
    info = {"id": task.id, "name": task.name, "language": task.language, "family": task.family,
            "title": task.title, "kind": task.kind, "block": task.block, "unseen": task.unseen,
            "metrics": task.metrics, "suite": task.suite, "n": len(selected_examples(task, settings)),
            "random": random_baseline(task, settings), "direction": f"{task.source_lang}-{task.target_lang}"
            if task.family == "translation" else None,
            "labels": task.label_set() if task.kind == "choice" else None, "unlabeled": task.unlabeled}
    return info


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-")[:150]


def settings_dict(settings: EvalSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))
