"""`langadapt run`: the recipe's enabled stages in order, with completion markers and skipping.

Each stage writes into ``<output_dir>/<name>/<stage>/``. When it finishes, a ``COMPLETE.json``
marker records a hash of its settings, its input files and the markers of the stages it reads.
A stage whose marker matches is skipped; a changed stage reruns, and so does everything after
it. A stage that crashed or was killed has no marker; its ``STARTED.json`` lets the next run
resume from its last checkpoint when the settings are unchanged, or start clean when they are not.
"""

from __future__ import annotations

import importlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from langadapt import stages
from langadapt.distributed import is_main_process, wait_for_everyone
from langadapt.errors import LangadaptError
from langadapt.files import fingerprint_path, read_json, remove_leftovers, stable_hash, write_json
from langadapt.layout import STARTED
from langadapt.memory import StageUsage, describe
from langadapt.recipe import Recipe, check_against_base


def _import(entry: str) -> Callable:
    module, func = entry.split(":")
    return getattr(importlib.import_module(module), func)


@dataclass
class StageContext:
    """What a stage gets: the validated recipe, where to write, and where earlier stages wrote."""

    recipe: Recipe
    stage: str
    out_dir: Path
    resume: bool = False
    console: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir

    @property
    def layout(self):
        """Where this run's outputs live: read other stages' outputs through it (``langadapt.layout``)."""
        return self.recipe.layout

    def stage_dir(self, stage: str) -> Path:
        return self.layout.stage_dir(stage)

    def model_path(self, stage: str) -> str:
        """The model a stage produced, as a path `models.resolve_model` understands; 'base': the base model."""
        return self.recipe.model_path(stage)

    def log(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message)
        else:
            print(message, flush=True)


def preflight(recipe: Recipe, *, log: Callable | None = None) -> list:
    """Checks that need the base model's config or the first records of the inputs, done before any
    stage starts: every input of the enabled stages read on its first records and hub ids resolved
    (``langadapt.check``), the replay sources' languages, the packages of the ``report_to`` trackers,
    the names of ``lm_eval:`` evaluation tasks, the vocabulary size against the recipe.
    Returns what ``check.check_inputs`` read (``log`` sees each entry as it is read).

    The config comes from ``base_config`` or a local model (a GGUF header, a config.json); the
    vocabulary of a hub model without ``base_config`` is checked when the first stage loads it.
    """
    from langadapt.check import check_inputs
    from langadapt.models import load_config, resolve_model
    from langadapt.train.replay import check_sources
    from langadapt.train.tracking import check_installed

    checked = check_inputs(recipe, log=log)
    check_sources(recipe)
    if any(recipe.enabled(s) for s in stages.TRAINING):
        check_installed(recipe.report_to)
    if recipe.enabled("eval"):
        from langadapt.eval.harness import check_tasks

        check_tasks(recipe)
    if recipe.base_config is None:
        src = resolve_model(recipe.base_model)  # raises ModelNotFoundError with what to do
        if src.kind == "hub":
            return checked
    config = load_config(recipe.base_model, recipe.resolve(recipe.base_config) if recipe.base_config else None)
    check_against_base(recipe, config.vocab_size)
    return checked


def stage_hash(recipe: Recipe, stage: str) -> str:
    """Hash of everything a stage's output depends on: its settings, inputs and upstream markers."""
    spec = stages.BY_NAME.get(stage)
    section = getattr(recipe, stage)
    parts: dict[str, Any] = {
        "stage": stage,
        "settings": section.model_dump(mode="json") if section is not None else None,
        "base_model": recipe.base_model,
        "language": recipe.language.model_dump(mode="json"),
        "seed": recipe.seed,
        "data": {},
        "upstream": {},
    }
    for kind in spec.data if spec else ():
        value = getattr(recipe.data, kind)
        if kind == "replay" and not (value and _sets_replay(parts["settings"])):
            continue  # read only by a stage whose settings ask for replay; a recipe without it keeps its hashes
        dumped = [v.model_dump(mode="json") for v in value] if isinstance(value, list) else value.model_dump(mode="json")
        files = []
        for item in value if isinstance(value, list) else [value]:
            for key in ("path", "target", "english"):
                v = getattr(item, key, None)
                v = getattr(v, "path", v)  # a held-out dataset: its folder, when local
                if isinstance(v, str) and recipe.resolve(v).exists():
                    files.append(fingerprint_path(recipe.resolve(v)))
        parts["data"][kind] = {"settings": dumped, "files": files}
    if spec is not None and spec.files:
        parts["files"] = sorted(fingerprint_path(p) for p in _import(spec.files)(recipe))
    for up in recipe.inputs_of(stage):
        marker = recipe.layout.marker(up)
        parts["upstream"][up] = marker.get("hash") if marker else None
    return stable_hash(parts)


def _sets_replay(settings) -> bool:
    """Whether a stage's dumped settings ask for replay anywhere (pretrain.replay, align.monolingual.replay)."""
    if isinstance(settings, dict):
        return settings.get("replay") is not None or any(_sets_replay(v) for v in settings.values())
    return False


def stage_status(recipe: Recipe, stage: str) -> str:
    """'done' (marker matches the recipe), 'dropped' (done, its model removed by `langadapt clean-up`),
    'stale' (marker from other settings), 'partial', or 'new'."""
    marker = recipe.layout.marker(stage)
    if marker is not None:
        if marker.get("hash") != stage_hash(recipe, stage):
            return "stale"
        return "dropped" if marker.get("dropped") and recipe.layout.model(stage) is None else "done"
    return "partial" if recipe.layout.started_path(stage).is_file() else "new"


def _checkpoint_names(recipe: Recipe, stage: str) -> str:
    """The newest checkpoint of each training call of the stage: ``monolingual step-40``."""
    newest: dict[str, int] = {}
    for c in recipe.layout.checkpoints(stage):
        newest[c.parent.name] = max(newest.get(c.parent.name, 0), int(c.name[5:]))
    return ", ".join(f"{name} step-{step}" for name, step in newest.items())


def _prepare(recipe: Recipe, stage: str, h: str, *, resume: bool, console=None) -> bool:
    """Make the stage folder ready; return whether the stage should resume from its checkpoints.

    An interrupted run with the same settings is resumed unless ``resume`` is false (``--restart``);
    one line says whether checkpoints were found and used or discarded. A resumed folder loses the
    leftovers of writes that a kill interrupted (``.tmp-*``, ``.old-*``). The decision is written into
    STARTED.json, so the other processes of a multi-process run read it instead of racing the main
    process over the folder.
    """
    layout = recipe.layout
    out = layout.stage_dir(stage)
    had_marker = layout.marker(stage) is not None
    layout.marker_path(stage).unlink(missing_ok=True)
    started = layout.started_path(stage)
    can_resume = False
    if started.is_file():
        try:
            can_resume = read_json(started).get("hash") == h
        except ValueError:
            can_resume = False
    resuming = resume and can_resume and not had_marker  # a finished stage run again starts over
    found = _checkpoint_names(recipe, stage) if started.is_file() and not had_marker else ""
    if found and resuming:
        _say(console, f"{stage}: resuming from the interrupted run's checkpoint ({found}); --restart discards it")
    elif found:
        why = "--restart" if can_resume else "the settings or inputs changed since it was made"
        _say(console, f"{stage}: discarding the interrupted run's checkpoint ({found}): {why}")
    if out.exists() and not resuming:
        shutil.rmtree(out)
    elif resuming:
        left = remove_leftovers(out)
        if left:
            _say(console, f"{stage}: removed {len(left)} leftover{'s' if len(left) > 1 else ''} of writes a kill "
                 f"interrupted ({', '.join(str(p.relative_to(out)) for p in left[:3])}{', ...' if len(left) > 3 else ''})")
    out.mkdir(parents=True, exist_ok=True)
    write_json(started, {"stage": stage, "hash": h, "resume": resuming,
                         "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return resuming


def _wait_for_marker(recipe: Recipe, stage: str, h: str, poll: float = 5.0) -> dict:
    """Other processes wait for the main one to finish a single-process stage (no collective
    timeout, however long cleaning a corpus takes)."""
    while True:
        marker = recipe.layout.marker(stage)
        if marker is not None and marker.get("hash") == h:
            return marker
        time.sleep(poll)


def run_stage(recipe: Recipe, stage: str, *, resume: bool, console=None, extra: dict | None = None) -> dict:
    """Run one stage now (its inputs must be complete) and write its completion marker."""
    spec = stages.BY_NAME.get(stage)
    if spec is None:
        raise LangadaptError(f"stage '{stage}' is not available in this version of langadapt")
    for up in recipe.inputs_of(stage):
        status = stage_status(recipe, up)
        if status == "dropped":
            raise LangadaptError(f"stage '{stage}' needs the model of stage '{up}', which `langadapt clean-up` "
                                 f"removed; run `langadapt run RECIPE` (it makes it again) or `langadapt {up} RECIPE --force`")
        if status != "done":
            raise LangadaptError(f"stage '{stage}' needs stage '{up}' to be finished with the current recipe; "
                                 f"run `langadapt {up} RECIPE` or `langadapt run RECIPE` first")
    h = stage_hash(recipe, stage)
    out = recipe.layout.stage_dir(stage)
    main = is_main_process()
    if not main and not spec.distributed:
        return _wait_for_marker(recipe, stage, h).get("summary", {})
    if main:
        resuming = _prepare(recipe, stage, h, resume=resume, console=console)
    if spec.distributed:
        wait_for_everyone()
        if not main:
            resuming = bool(read_json(out / STARTED).get("resume"))
    ctx = StageContext(recipe=recipe, stage=stage, out_dir=out, resume=resuming, console=console, extra=extra or {})
    t0 = time.time()
    usage = StageUsage().start()
    try:
        summary = _import(spec.entry)(ctx) or {}
    finally:
        figures = usage.stop()
    summary = {**summary, **figures}  # the report and bench/README read where memory and disk went
    if main:
        ctx.log(f"{stage}: {describe(figures)}")
        write_json(recipe.layout.marker_path(stage), {
            "stage": stage,
            "hash": h,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(time.time() - t0, 1),
            "summary": summary,
        })
    if spec.distributed:
        wait_for_everyone()
    return summary


def run_recipe(recipe: Recipe, *, console=None, force: bool = False) -> list[tuple[str, str]]:
    """Run every enabled stage in order; return (stage, 'skipped'|'ran') pairs."""
    t0 = time.time()
    checked = preflight(recipe)
    if checked:
        _say(console, f"[green]✓[/green] inputs: {len(checked)} read and checked in {time.time() - t0:.1f} s "
             "(langadapt check RECIPE lists them)")
    order = recipe.enabled_stages()
    status = {s: stage_status(recipe, s) for s in order}
    to_run, cascade = set(), force
    for stage in order:
        if cascade or status[stage] not in ("done", "dropped"):
            to_run.add(stage)
            cascade = True
    # a model `clean-up` removed is made again (same settings, same result) when a stage that reads it runs
    restore = set()
    for stage in reversed(order):
        if stage in to_run or stage in restore:
            restore |= {up for up in recipe.inputs_of(stage) if status.get(up) == "dropped"}
    done: list[tuple[str, str]] = []
    for stage in order:
        if stage not in to_run and stage not in restore:
            note = " (its model was dropped by clean-up)" if status[stage] == "dropped" else ""
            _say(console, f"[green]✓[/green] {stage}: up to date, skipped{note}")
            done.append((stage, "skipped"))
            continue
        why = {"stale": "settings or inputs changed", "partial": "interrupted before it finished", "new": "not run yet",
               "done": "an earlier stage reran", "dropped": "an earlier stage reran"}[status[stage]]
        if stage in restore and stage not in to_run:
            why = "its model was dropped by clean-up and a later stage needs it"
        _say(console, f"[bold]▶ {stage}[/bold]: {why}")
        run_stage(recipe, stage, resume=True, console=console)
        done.append((stage, "ran"))
    return done


def _say(console, msg: str) -> None:
    if console is not None:
        console.print(msg)
    else:
        from rich.text import Text

        print(Text.from_markup(msg).plain, flush=True)

