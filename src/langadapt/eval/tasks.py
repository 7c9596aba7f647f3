"""Task definitions are data: a suite is a YAML file listing tasks (dataset path or id, split, field
mapping, instruction template per language, label words per language, metrics, few-shot count).

Built-in suites live in ``tasks/*.yaml`` beside this module: ``demo`` (the team's bundled bilingual
sets), ``parsinlu`` (the ParsiNLU dev files: the Persian block) and ``paper`` (the public datasets the
paper used, from local copies). ``families.yaml`` holds each task family's default templates, so a
suite entry can be as short as a name, a language and a data path.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from langadapt.errors import DataError, RecipeError
from langadapt.eval import formats
from langadapt.recipe import HubOptions, only_for_datasets
from langadapt.eval.formats import Example

TASKS_DIR = Path(__file__).parent / "tasks"
FAMILIES = ("multiple_choice", "sentiment", "entailment", "summarization", "translation")
METRICS = ("accuracy", "bleu", "chrf", "rouge_l")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(HubOptions):
    """A task's data: files, or a Hugging Face dataset (format hf) with the settings every source kind takes."""

    format: Literal[formats.FORMATS]  # type: ignore[valid-type]
    path: str | list[str] | None = Field(None, description="file(s), a dataset id (format hf); may use {variables}")
    reference: str | None = Field(None, description="format pair: the reference-side file, line-aligned with path")
    split: str = "test"
    fields: dict[str, str] = Field({}, description="our field name -> the file's key")
    label_map: dict[str, str | None] | None = Field(None, description="raw label -> canonical label; null drops the row")
    drop_unmapped: bool | None = Field(None, description="drop rows whose label is not in label_map (default: format's)")
    where: dict[str, list[str]] = Field({}, description="keep only rows whose raw field has one of these values")
    source_column: int = Field(0, ge=0)
    reference_column: int = Field(1, ge=0)
    header: Literal["auto", "yes", "no"] = "auto"

    @model_validator(mode="after")
    def _paths(self) -> DataSpec:
        if self.path is None:
            raise ValueError("data needs 'path'")
        if self.format == "pair" and self.reference is None:
            raise ValueError("format 'pair' needs 'reference' (the file line-aligned with 'path')")
        only_for_datasets(self, "task data", self.format == "hf")
        return self


class TaskSpec(_Spec):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    language: str = Field(pattern=r"^[a-z]{2,3}$", description="language of the instruction and input")
    family: Literal[FAMILIES] | None = None  # type: ignore[valid-type]
    title: str | None = None
    data: DataSpec
    direction: str | None = Field(None, pattern=r"^[a-z]{2,3}-[a-z]{2,3}$", description="translation: source-target")
    instruction: dict[str, str] | str | None = None
    input: dict[str, str] | str | None = None
    labels: dict[str, dict[str, str] | str] | None = None
    metrics: list[Literal[METRICS]] | None = None  # type: ignore[valid-type]
    few_shot: int = Field(0, ge=0)
    max_new_tokens: int | None = Field(None, ge=1)
    max_input_chars: int | None = Field(None, ge=10)
    first_line: bool | None = None
    unseen: bool = Field(False, description="held out of instruction tuning (a star in the paper's tables)")
    max_examples: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _family(self) -> TaskSpec:
        if self.family is None:
            if self.name not in FAMILIES:
                raise ValueError(f"task '{self.name}' needs 'family' (one of {', '.join(FAMILIES)})")
            self.family = self.name
        if self.family == "translation" and self.direction is not None and not self.direction.startswith(self.language + "-"):
            raise ValueError(f"direction '{self.direction}' must start with the task's language '{self.language}'")
        return self


class PathVar(_Spec):
    default: str | None = None
    help: str = ""


class SuiteSpec(_Spec):
    suite: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    paths: dict[str, PathVar] = {}
    tasks: list[TaskSpec]


@dataclass
class Task:
    """A resolved task: its templates, labels and data location, ready to load examples."""

    name: str
    language: str
    family: str
    kind: str  # "choice" or "generate"
    title: str
    data: DataSpec
    paths: list[Path]
    reference_path: Path | None
    instruction: dict[str, str]
    input: dict[str, str]
    labels: dict[str, dict[str, str]]  # canonical label -> language -> word (empty for multiple choice)
    metrics: list[str]
    few_shot: int
    max_new_tokens: int
    max_input_chars: int | None
    first_line: bool
    unseen: bool
    source_lang: str
    target_lang: str
    output_lang: str
    suite: str
    max_examples: int | None = None
    unlabeled: int = 0  # rows without a gold label ("-", empty), skipped when the examples were read
    _examples: list[Example] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return f"{self.language}/{self.name}"

    @property
    def block(self) -> str:
        """'english' or 'target': which half of the paper's Table 5 the task belongs to."""
        return "english" if self.language == "en" else "target"

    def examples(self) -> list[Example]:
        """All examples of the task (read once, then cached)."""
        if self._examples is None:
            self._examples = load_examples(self)
        return self._examples

    def label_set(self) -> list[str]:
        """Canonical labels in use: those the data holds, in the template's order (not for multiple choice)."""
        if self.kind != "choice" or (self.family == "multiple_choice" and self.data.format != "sni"):
            return []
        present = {e.label for e in self.examples()}
        ordered = [lab for lab in self.labels if lab in present]
        return ordered + sorted(present - set(ordered))

    def label_word(self, label: str, lang: str) -> str:
        words = self.labels.get(label, {})
        return words.get(lang) or words.get(self.language) or label

    def options(self, example: Example, lang: str | None = None) -> list[tuple[str, str]]:
        """(canonical label, word shown/scored) pairs for a choice example, in language ``lang``."""
        if self.family == "multiple_choice" and example.options is not None:
            return [(str(i), str(i)) for i in range(1, len(example.options) + 1)]
        lang = lang or self.language
        return [(lab, self.label_word(lab, lang)) for lab in self.label_set()]


# --------------------------------------------------------------------------- loading suites


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml") if p.stem != "families")


def _families() -> dict:
    return yaml.safe_load((TASKS_DIR / "families.yaml").read_text(encoding="utf-8"))


def _yaml_with_lines(path: Path) -> tuple[dict, dict[tuple, int]]:
    from langadapt.recipe import _compose_with_lines  # the recipe's line-tracking YAML reader

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("task file not found", path=str(path)) from None
    except UnicodeDecodeError:
        err = formats.not_utf8([path])
        raise RecipeError(err.message, path=err.path, line=err.line) from None
    data, lines = _compose_with_lines(text, str(path))
    if not isinstance(data, dict):
        raise RecipeError("a task file must be a mapping (a suite with 'tasks:' or one task)", path=str(path), line=1)
    return data, lines


def _validation_error(e: ValidationError, path: Path, lines: dict[tuple, int], prefix: tuple = ()) -> RecipeError:
    err = e.errors()[0]
    loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "dict[str,str]"))))
    line = None
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            line = lines[loc[:n]]
            break
    key = ".".join(str(p) for p in loc) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "missing required key"
    return RecipeError(f"{key}: {msg}", path=str(path), line=line)


def read_suite(source: str, *, recipe_dir: Path | None = None) -> tuple[SuiteSpec, Path, bool]:
    """Parse a built-in suite name or a suite/task YAML file. Returns (spec, file, is_builtin)."""
    builtin = TASKS_DIR / f"{source}.yaml"
    if source != "families" and "/" not in source and not source.endswith((".yaml", ".yml")) and builtin.is_file():
        path, is_builtin = builtin, True
    else:
        p = Path(os.path.expanduser(source))
        if not p.is_absolute() and recipe_dir is not None:
            p = recipe_dir / p
        if not p.is_file():
            raise RecipeError(f"eval.tasks: '{source}' is neither a built-in suite ({', '.join(builtin_suites())}) "
                              f"nor an existing YAML file (looked for {p})")
        path, is_builtin = p, False
    data, lines = _yaml_with_lines(path)
    prefix: tuple = ()
    if "tasks" not in data:  # a single task file
        data = {"suite": path.stem, "tasks": [data]}
        lines = {("tasks", 0) + k: v for k, v in lines.items()}
        prefix = ()
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e, path, lines, prefix) from None
    return spec, path, is_builtin


def _project_roots(recipe_dir: Path | None) -> list[Path]:
    """Where a built-in suite's relative default paths may live: cwd, the recipe's folder and its
    parents, and the source checkout this package runs from."""
    roots = [Path.cwd()]
    if recipe_dir is not None:
        roots += [recipe_dir, *list(recipe_dir.parents)[:3]]
    roots.append(Path(__file__).resolve().parents[3])
    out: list[Path] = []
    for r in roots:
        if r not in out:
            out.append(r)
    return out


_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: str, variables: dict[str, str], where: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in variables:
            raise RecipeError(f"{where}: path variable '{{{name}}}' has no value; set eval.paths.{name} in the recipe "
                              f"or the environment variable LANGADAPT_EVAL_{name.upper()}")
        return variables[name]

    return _VAR.sub(sub, value)


def _resolve_path(value: str, *, base: Path, roots: list[Path], fmt: str) -> Path:
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return p
    candidates = [base / p] + [r / p for r in roots]
    for c in candidates:
        if c.exists():
            return c
    if fmt == "hf":
        return Path(value)  # a dataset id
    return candidates[0]


def load_tasks(sources: list[str], *, recipe_dir: Path | None = None, paths: dict[str, str] | None = None,
               target_language: str | None = None, select: list[str] | None = None,
               tokens_with: str | None = None) -> list[Task]:
    """Resolve suites/task files into tasks. ``paths`` sets path variables (recipe ``eval.paths``);
    ``select`` keeps only tasks whose name or id (``fa/sentiment``) is listed; ``tokens_with`` is the
    model whose tokenizer a dataset's ``max_tokens`` counts with (the recipe's base model)."""
    fam = _families()
    tasks: list[Task] = []
    seen: set[str] = set()
    for source in sources:
        spec, file, is_builtin = read_suite(source, recipe_dir=recipe_dir)
        roots = _project_roots(recipe_dir) if is_builtin else []
        variables: dict[str, str] = {}
        for name, var in spec.paths.items():
            env = os.environ.get(f"LANGADAPT_EVAL_{name.upper()}")
            if paths and name in paths:
                given = Path(os.path.expanduser(paths[name]))
                variables[name] = str(given if given.is_absolute() or recipe_dir is None else recipe_dir / given)
            elif env:
                variables[name] = env
            elif var.default is not None:
                variables[name] = var.default
        for i, ts in enumerate(spec.tasks):
            ts.data._tokens_with = tokens_with
            task = _resolve_task(ts, fam, spec.suite, file, variables, roots, target_language, where=f"{file}: tasks[{i}]")
            if select and task.name not in select and task.id not in select:
                continue
            if task.id in seen:
                raise RecipeError(f"task '{task.id}' is defined twice (in {source}); task ids must be unique")
            seen.add(task.id)
            tasks.append(task)
    if select:
        known = {t.name for t in tasks} | {t.id for t in tasks}
        missing = [s for s in select if s not in known]
        if missing:
            raise RecipeError(f"eval.select: no task named {', '.join(missing)} in {', '.join(sources)}")
    return tasks


def _per_lang(value: dict[str, str] | str | None, default: dict[str, str] | None) -> dict[str, str]:
    if value is None:
        return dict(default or {})
    if isinstance(value, str):
        return {"*": value}
    return dict(value)


def _resolve_task(ts: TaskSpec, fam: dict, suite: str, file: Path, variables: dict[str, str], roots: list[Path],
                  target_language: str | None, *, where: str) -> Task:
    base = fam["families"][ts.family]
    is_sni = ts.data.format == "sni"
    labels_raw = ts.labels if ts.labels is not None else ({} if is_sni else base.get("labels", {}))
    labels = {k: ({"*": v} if isinstance(v, str) else dict(v)) for k, v in labels_raw.items()}
    if ts.family == "translation":
        direction = ts.direction
        if direction is None:
            other = "en" if ts.language != "en" else target_language
            if other is None or other == ts.language:
                raise RecipeError(f"{where}: translation task needs 'direction' (for example {ts.language}-en)")
            direction = f"{ts.language}-{other}"
        src, tgt = direction.split("-")
    else:
        src, tgt = ts.language, ts.language
    raw_paths = ts.data.path if isinstance(ts.data.path, list) else [ts.data.path]
    paths = [_resolve_path(_expand(p, variables, where), base=file.parent, roots=roots, fmt=ts.data.format) for p in raw_paths]
    ref = (_resolve_path(_expand(ts.data.reference, variables, where), base=file.parent, roots=roots, fmt="pair")
           if ts.data.reference else None)
    instruction = _per_lang(ts.instruction, None if is_sni else base.get("instruction"))
    if is_sni and not instruction:
        instruction = {"*": "{definition}"}
    return Task(
        name=ts.name, language=ts.language, family=ts.family, kind=base["kind"],
        title=ts.title or base["title"], data=ts.data, paths=paths, reference_path=ref,
        instruction=instruction, input=_per_lang(ts.input, {"*": "{input}"} if is_sni else base.get("input")),
        labels=labels, metrics=list(ts.metrics or base["metrics"]), few_shot=ts.few_shot,
        max_new_tokens=ts.max_new_tokens or base.get("max_new_tokens", 32),
        max_input_chars=ts.max_input_chars or base.get("max_input_chars"),
        first_line=ts.first_line if ts.first_line is not None else bool(base.get("first_line", False)),
        unseen=ts.unseen, source_lang=src, target_lang=tgt,
        output_lang=tgt if ts.family == "translation" else ts.language, suite=suite, max_examples=ts.max_examples,
    )


def check_languages(tasks: list[Task], target_language: str) -> None:
    """Every task must be in English or the recipe's target language, and have its templates."""
    fam = _families()
    for t in tasks:
        if t.language not in ("en", target_language):
            raise RecipeError(f"task '{t.id}' (suite {t.suite}) is in '{t.language}', but the recipe's language is "
                              f"'{target_language}'; use a suite for '{target_language}' or write task YAML files")
        for what, tmpl in (("instruction", t.instruction), ("input", t.input)):
            if t.language not in tmpl and "*" not in tmpl:
                raise RecipeError(f"task '{t.id}' has no {what} template in '{t.language}'; add {what}.{t.language}")
        if t.language not in fam["language_names"] and "*" not in t.instruction:
            raise RecipeError(f"task '{t.id}': no language names for '{t.language}' in families.yaml; give the task's "
                              "instruction without {source_name}/{target_name}")


# --------------------------------------------------------------------------- examples


def load_examples(task: Task) -> list[Example]:
    """Read and normalise a task's examples. Raises DataError (file:line: reason) on malformed data."""
    spec = task.data
    fields = {**formats.DEFAULT_FIELDS.get(spec.format, {}), **spec.fields}
    label_map = spec.label_map if spec.label_map is not None else formats.DEFAULT_LABEL_MAPS.get(spec.format)
    drop = spec.drop_unmapped if spec.drop_unmapped is not None else spec.format == "parsinlu_sentiment"
    family = "sni" if spec.format == "sni" else task.family
    for p in task.paths:
        if spec.format != "hf" and not p.exists():
            raise DataError(f"task '{task.id}': evaluation data not found", path=str(p))
    rows = formats.read_rows(spec.format, task.paths, split=spec.split, config=spec.config,
                             source_column=spec.source_column, reference_column=spec.reference_column,
                             header=spec.header, reference=task.reference_path, source=spec, what=f"task '{task.id}'")
    out: list[Example] = []
    definition = None
    task.unlabeled = 0
    for row in rows:
        if spec.where and not all(str(row.values.get(k, "")).strip() in v for k, v in spec.where.items()):
            continue
        try:
            ex = formats.to_example(family, row, fields, label_map, drop_unmapped=drop)
        except formats.Unlabeled:
            task.unlabeled += 1
            continue
        if ex is None:
            continue
        if family == "sni":
            definition = row.meta.get("definition", "")
            ex.fields["definition"] = definition
            if task.kind == "choice":
                ex.reference = None
            else:
                ex.label = None
        if task.max_input_chars:
            for k in ("article", "text", "input"):
                if k in ex.fields and len(ex.fields[k]) > task.max_input_chars:
                    ex.fields[k] = ex.fields[k][: task.max_input_chars].rsplit(" ", 1)[0]
        out.append(ex)
    if not out:
        why = f"{task.unlabeled:,} rows without a label; " if task.unlabeled else ""
        raise DataError(f"task '{task.id}' has no usable examples ({why}after label mapping and filters)",
                        path=str(task.paths[0]))
    if task.kind == "choice" and task.family != "multiple_choice" and not (family == "sni"):
        known = set(task.labels)
        for ex in out:
            if known and ex.label not in known:
                raise DataError(f"label {ex.label!r} is not one of the task's labels ({', '.join(known)}); "
                                "map it with data.label_map", path=ex.where)
    if len({e.label for e in out if e.label is not None}) == 1 and task.kind == "choice" and task.family != "multiple_choice":
        raise DataError(f"task '{task.id}': every example has the same label ({out[0].label}); nothing to classify",
                        path=str(task.paths[0]))
    return out


def subset(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """A seeded sample of ``n`` examples, kept in file order (all of them when ``n`` is None or larger)."""
    if n is None or n >= len(examples):
        return list(examples)
    idx = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in idx]


def few_shot_pool(examples: list[Example], query: Example, k: int, seed: int) -> list[Example]:
    """``k`` demonstrations for ``query``: other examples of the same task, chosen by a seed and the query id."""
    if k <= 0:
        return []
    others = [e for e in examples if e.id != query.id]
    rng = random.Random(f"{seed}:{query.id}")
    return rng.sample(others, min(k, len(others)))
