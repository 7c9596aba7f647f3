"""lm-evaluation-harness tasks in the eval stage: ``eval.tasks`` entries ``lm_eval:<task>`` (a task, group or
tag lm-eval knows, or one defined by a YAML file in ``eval.lm_eval_include``) run through lm-eval's Python
API (``simple_evaluate`` on an ``HFLM`` built from the model the stage already loaded, PEFT adapter
included), on every local model column.

Scores become result rows like the paper's tasks (task ``lm_eval:<name>``, lm-eval's metric names such
as ``acc`` and ``acc_norm``, the standard error in the row's settings). lm-eval's tasks run as lm-eval runs
them (its prompts, no chat template unless ``eval.prompt_format`` is ``chat``, ``eval.max_examples`` as its
``limit``: the first N documents), so the numbers compare with published lm-eval numbers. A task's
language is identified from its prompts (fastText lid.176, as the clean stage does): the target
language, ``en``, or ``und`` when neither dominates.

Task names are checked before any stage runs (``check_tasks``), with close names for a typo; the tasks'
data is loaded before any model (``Harness.load``), so an unreachable dataset fails in seconds.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import itertools
import logging
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from langadapt.errors import LangadaptError, RecipeError
from langadapt.recipe import LM_EVAL_PREFIX

LANGUAGE_DOCS = 64  # documents whose prompts decide a task's language
LANGUAGE_FLOOR = 0.25  # mean probability under which neither the target language nor English is the task's


def split_tasks(entries: list[str]) -> tuple[list[str], list[str]]:
    """(langadapt's own suites and task files, lm-eval task names) of ``eval.tasks``-style entries."""
    native = [e for e in entries if not e.startswith(LM_EVAL_PREFIX)]
    return native, [e[len(LM_EVAL_PREFIX):] for e in entries if e.startswith(LM_EVAL_PREFIX)]


def selection(cfg) -> tuple[list[str], list[str] | None, list[str]]:
    """(native entries, native ``select`` or None, lm-eval names) after ``eval.select``: a selection that names
    only lm-eval tasks keeps no native task, and one that names only native tasks keeps no lm-eval task."""
    native, harness = split_tasks(cfg.tasks)
    if cfg.select is None:
        return native, None, harness
    sel_native, sel_harness = split_tasks(cfg.select)
    unknown = [n for n in sel_harness if n not in harness]
    if unknown:
        raise RecipeError(f"eval.select: {', '.join(LM_EVAL_PREFIX + n for n in unknown)} is not in eval.tasks")
    return (native if sel_native else []), (sel_native or None), [n for n in harness if n in sel_harness]


def include_paths(recipe) -> list[str]:
    return [str(recipe.resolve(p)) for p in recipe.eval.lm_eval_include]


def _require() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise LangadaptError("eval.tasks: lm_eval: tasks need lm-evaluation-harness, which is not installed; "
                             "pip install lm-eval (or remove the lm_eval: entries)")


# --------------------------------------------------------------------------- task names

_KEY = re.compile(r"^['\"]?(task|group|tag)['\"]?:[ \t]*(.*)$")
_ITEM = re.compile(r"^[ \t]+-[ \t]*['\"]?([^\s'\"#]+)")


def _names_in(folder: Path) -> set[str]:
    """Task, group and tag names of the YAML files under ``folder``, read as text: lm-eval's own index parses
    every file (about 15 s for its 14,000 built-in files here); a name missed here is looked up there."""
    names: set[str] = set()
    for f in folder.rglob("*.yaml"):
        try:
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            m = _KEY.match(line)
            if not m:
                continue
            value = m.group(2).split("#")[0].strip()
            if value.startswith("["):
                names |= {v.strip(" '\"") for v in value.strip("[]").split(",") if v.strip(" '\"")}
            elif value:
                names.add(value.strip("'\""))
            elif m.group(1) == "tag":  # a block list of tags
                for item in lines[i + 1:]:
                    im = _ITEM.match(item)
                    if not im:
                        break
                    names.add(im.group(1))
    return names


@lru_cache(maxsize=1)
def _builtin_names() -> frozenset[str]:
    spec = importlib.util.find_spec("lm_eval")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return frozenset(n for r in roots for n in _names_in(Path(r) / "tasks"))


@lru_cache(maxsize=1)
def _indexed_builtin_names() -> frozenset[str]:
    """lm-eval's own index of its built-in tasks (parses every file: once per process)."""
    return frozenset(_manager([], builtin=True).all_tasks)


def _manager(includes: list[str], *, builtin: bool):
    from lm_eval.tasks import TaskManager

    with _quiet():
        return TaskManager(include_path=includes or None, include_defaults=builtin)


def _needs_builtin(names: list[str], includes: list[str]) -> bool:
    local: set[str] = set()
    for folder in includes:
        local |= _names_in(Path(folder))
    return any(n not in local for n in names)


def check_tasks(recipe) -> None:
    """Refuse, before any stage runs, an ``lm_eval:`` name neither lm-eval nor ``eval.lm_eval_include`` defines
    (with the closest names), an ``eval.select`` entry naming an lm-eval task eval.tasks lacks, or lm-eval missing."""
    selection(recipe.eval)
    _, names = split_tasks(recipe.eval.tasks)
    if not names:
        return
    _require()
    includes = include_paths(recipe)
    known = set(_builtin_names())
    for folder in includes:
        known |= _names_in(Path(folder))
    missing = [n for n in names if n not in known]
    if missing:  # the text scan may miss a name lm-eval's index has: ask the index before refusing
        known |= _indexed_builtin_names()
        if includes:
            known |= set(_manager(includes, builtin=False).all_tasks)
        missing = [n for n in names if n not in known]
    if not missing:
        return
    name = missing[0]
    close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
    where = " or in eval.lm_eval_include" if includes else " (tasks of your own: eval.lm_eval_include)"
    hint = f"; close names: {', '.join(close)}" if close else "; `lm_eval ls tasks` lists them"
    raise RecipeError(f"eval.tasks: {LM_EVAL_PREFIX}{name} is not a task, group or tag of lm-evaluation-harness"
                      f"{where}{hint}", path=str(recipe.source_path) if recipe.source_path else None,
                      line=_line_of(recipe, recipe.eval.tasks.index(LM_EVAL_PREFIX + name)))


def _line_of(recipe, index: int) -> int | None:
    """The recipe line of ``eval.tasks[index]``."""
    from langadapt.recipe import _compose_with_lines

    if recipe.source_path is None:
        return None
    try:
        _, lines = _compose_with_lines(Path(recipe.source_path).read_text(encoding="utf-8"), str(recipe.source_path))
    except (OSError, LangadaptError):
        return None
    return lines.get(("eval", "tasks", index)) or lines.get(("eval", "tasks"))


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def _quiet():
    """lm-eval logs every default it fills in (per task, per call) at warning level: keep its errors only."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def detect_language(texts: list[str], target: str) -> str:
    """The target language, ``en``, or ``und``: which of the two the prompts are in, by mean lid.176 probability."""
    from langadapt.clean.langid import probabilities

    texts = [t for t in texts if t.strip()]
    if not texts:
        return "und"
    probs = [probabilities(t, (target, "en")) for t in texts]
    mean_t = sum(p[0] for p in probs) / len(probs)
    mean_en = sum(p[1] for p in probs) / len(probs)
    if max(mean_t, mean_en) < LANGUAGE_FLOOR:
        return "und"
    return target if mean_t >= mean_en else "en"


@dataclass
class HarnessTask:
    name: str  # as in eval.tasks, without the prefix
    limit: int | None
    languages: dict[str, str] = field(default_factory=dict)  # every task and group it runs -> language
    output_types: dict[str, str] = field(default_factory=dict)  # leaf task -> lm-eval output type

    def info(self) -> dict:
        return {"id": LM_EVAL_PREFIX + self.name, "name": self.name, "language": self.languages.get(self.name),
                "tasks": sorted(self.output_types), "output_types": sorted(set(self.output_types.values())),
                "limit": self.limit}


class Harness:
    """The lm-eval tasks of an evaluation, loaded once (data included), run on each model."""

    def __init__(self, manager, tasks: list[HarnessTask], *, few_shot: int | None, batch_size: int, chat: bool,
                 seed: int):
        self.manager, self.tasks = manager, tasks
        self.few_shot, self.batch_size, self.chat, self.seed = few_shot, batch_size, chat, seed

    @classmethod
    def load(cls, recipe, names: list[str]) -> Harness:
        """Index and load ``names`` (their datasets too) and identify each one's language; one-line errors."""
        _require()
        cfg = recipe.eval
        includes = include_paths(recipe)
        manager = _manager(includes, builtin=_needs_builtin(names, includes))
        tasks = []
        for name in names:
            try:
                with _quiet():
                    loaded = manager.load([name])
            except Exception as e:  # lm-eval and datasets raise what they like: a missing file, no network, a bad YAML
                first = (str(e).strip().splitlines() or [""])[0][:300]
                raise LangadaptError(f"eval.tasks: {LM_EVAL_PREFIX}{name}: lm-eval could not load the task "
                                     f"({type(e).__name__}: {first})") from e
            per = cfg.max_examples_per_task
            limit = per.get(LM_EVAL_PREFIX + name, per.get(name, cfg.max_examples))
            t = HarnessTask(name, limit)
            for leaf, task in loaded["tasks"].items():
                t.output_types[leaf] = str(task.get_config("output_type"))
                t.languages[leaf] = detect_language(_prompts(task), recipe.language.code)
            for group, children in _group_leaves(loaded).items():
                langs = {t.languages[c] for c in children if c in t.languages}
                t.languages[group] = langs.pop() if len(langs) == 1 else "mul"
            tasks.append(t)
        return cls(manager, tasks, few_shot=cfg.few_shot, batch_size=cfg.batch_size,
                   chat=cfg.prompt_format == "chat", seed=recipe.seed)

    def infos(self) -> list[dict]:
        return [t.info() for t in self.tasks]

    def evaluate(self, backend, *, model: str, stage: str, log=None) -> list[dict]:
        """Every task on a local backend's model and tokenizer; result rows."""
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        with _quiet():
            lm = HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, batch_size=self.batch_size,
                      max_length=backend.max_length)
        rows: list[dict] = []
        for t in self.tasks:
            if log:
                log(f"  eval: {model}: {LM_EVAL_PREFIX}{t.name} (lm-evaluation-harness)")
            seed = self.seed
            with _quiet():
                out = lm_eval.simple_evaluate(model=lm, tasks=[t.name], task_manager=self.manager,
                                              num_fewshot=self.few_shot, limit=t.limit, log_samples=False,
                                              apply_chat_template=self.chat, random_seed=seed, numpy_random_seed=seed,
                                              torch_random_seed=seed, fewshot_random_seed=seed)
            rows += result_rows(out, t, model=model, stage=stage, chat=self.chat,
                                version=str(out.get("lm_eval_version") or _version()))
        return rows


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "?"


def _prompts(task) -> list[str]:
    """The prompts of a task's first documents, as lm-eval builds them (without few-shot examples)."""
    out = []
    try:
        docs = task.eval_docs
        for doc in itertools.islice(iter(docs), LANGUAGE_DOCS):
            text = task.doc_to_text(doc)
            if isinstance(text, str):
                out.append(text)
    except Exception:  # a task without documents to show, or with prompts built elsewhere: language unknown
        return []
    return out


def _group_leaves(loaded: dict) -> dict[str, list[str]]:
    """Every group of a loaded task -> the leaf tasks under it."""
    group_map = loaded.get("group_map") or {}

    def leaves(name: str) -> list[str]:
        if name not in group_map:
            return [name]
        return [leaf for child in group_map[name] for leaf in leaves(child)]

    return {g: leaves(g) for g in group_map}


def result_rows(out: dict, task: HarnessTask, *, model: str, stage: str, chat: bool, version: str) -> list[dict]:
    """Rows of one ``simple_evaluate`` result: every numeric metric of every task and group it reports."""
    samples = out.get("n-samples") or {}
    group_map = out.get("group_subtasks") or {}

    def count(name: str) -> int | None:
        if name in samples:
            return samples[name].get("effective")
        parts = [count(c) for c in group_map.get(name, [])]
        return sum(p for p in parts if p is not None) if parts else None

    rows = []
    results = out.get("results") or {}
    for name in sorted(results, key=lambda n: n != task.name):  # the entry itself first, then its parts
        res = results[name]
        for key, value in res.items():
            if "," not in key or "_stderr," in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            metric, filt = key.split(",", 1)
            stderr = res.get(f"{metric}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
            rows.append({
                "model": model, "stage": stage, "task": LM_EVAL_PREFIX + name,
                "language": task.languages.get(name, "und"),
                "metric": metric if filt == "none" else f"{metric},{filt}", "value": round(float(value), 6),
                "n": count(name), "protocol": "original",
                "settings": {"harness": f"lm-evaluation-harness {version}", "stderr": stderr,
                             "num_fewshot": (out.get("n-shot") or {}).get(name),
                             "higher_is_better": (out.get("higher_is_better") or {}).get(name, {}).get(metric),
                             "limit": task.limit, "chat_template": chat,
                             "task_version": (out.get("versions") or {}).get(name),
                             **({"part_of": LM_EVAL_PREFIX + task.name} if name != task.name else {})},
            })
    return rows
