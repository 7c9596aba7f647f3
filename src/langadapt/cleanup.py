"""``langadapt clean-up RUN``: drop the model folders of intermediate stages once later stages are complete.

A finished run keeps every stage's model; most are steps on the way to the last one. This removes the
model folder (``model/`` or ``adapter/``, and sft's ``base/``) of every complete model stage except the
last one and whatever that one needs to load (an adapter's base, followed through the chain), and any
stage named with ``--keep``. Nothing is removed while a later stage is unfinished. Everything else a
stage wrote stays (bits per character, metrics, reports, results), and its ``COMPLETE.json`` records
what was dropped: ``langadapt run`` still treats the stage as done, and makes its model again (same
settings, same result) only when a stage that needs it has to run.

Hard-linked weight files (``langadapt.weights``) are freed when the last folder holding them goes; the
sizes printed count every file once.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from langadapt import stages
from langadapt.errors import LangadaptError
from langadapt.files import write_json
from langadapt.layout import RunLayout

MERGED_BASE = "base"  # sft's merged start model, kept when asked (sft.keep_base)


@dataclass
class Plan:
    drop: dict[str, list[Path]] = field(default_factory=dict)  # stage -> folders to remove
    keep: dict[str, str] = field(default_factory=dict)  # stage -> why its model stays


def disk_usage(root: Path) -> int:
    """Bytes of the files under ``root``, a file with several hard links inside it counted once."""
    seen, total = set(), 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _model_folders(layout: RunLayout, stage: str) -> list[Path]:
    d = layout.stage_dir(stage)
    return [p for p in (d / "adapter", d / "model", d / MERGED_BASE) if p.is_dir()]


def _needed_by(folder: Path, root: Path) -> list[Path]:
    """The folders inside ``root`` that ``folder`` needs to load: its adapter base, followed through the chain."""
    from langadapt.models import adapter_base

    out = []
    while (folder / "adapter_config.json").is_file():
        try:
            base = Path(adapter_base(folder)).resolve()
        except Exception:  # an unreadable config: keep nothing more, the folder itself stays
            break
        if not base.is_dir() or root.resolve() not in base.parents:
            break
        out.append(base)
        folder = base
    return out


def plan(run_dir: str | os.PathLike, keep: tuple[str, ...] = ()) -> Plan:
    """What ``clean_up`` would remove, and why the rest stays."""
    root = Path(run_dir)
    layout = RunLayout(root)
    unknown = [s for s in keep if s not in stages.MODEL_STAGES]
    if unknown:
        raise LangadaptError(f"--keep: {', '.join(unknown)} is not a stage with a model "
                             f"({', '.join(stages.MODEL_STAGES)})")
    with_models = [s for s in stages.MODEL_STAGES if _model_folders(layout, s)]
    out = Plan()
    if not with_models:
        return out
    complete = [s for s in with_models if layout.marker(s) is not None]
    last = complete[-1] if complete else with_models[-1]
    needed: set[Path] = set()
    for s in (last, *keep):
        for folder in _model_folders(layout, s):
            needed |= {p for p in _needed_by(folder, root)}
    for s in with_models:
        if s == last:
            out.keep[s] = "the run's last model"
        elif s in keep:
            out.keep[s] = "--keep"
        elif layout.marker(s) is None:
            out.keep[s] = "not complete"
        elif any(layout.status(later) == "partial" for later in stages.ORDER[stages.ORDER.index(s) + 1:]):
            out.keep[s] = "a later stage is unfinished"
        else:
            folders = [f for f in _model_folders(layout, s) if f.resolve() not in needed]
            if len(folders) < len(_model_folders(layout, s)):
                out.keep[s] = f"{last}'s model loads on it"
            if folders:
                out.drop[s] = folders
    return out


def clean_up(run_dir: str | os.PathLike, *, keep: tuple[str, ...] = (), dry_run: bool = False, log=print) -> int:
    """Remove what ``plan`` says; return the bytes freed (0 on a dry run)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise LangadaptError(f"run folder not found: {root} (a run writes to <output_dir>/<name>/, e.g. runs/demo)")
    p = plan(root, keep)
    for s, why in p.keep.items():
        log(f"keep   {s}: {why}")
    if not p.drop:
        log("nothing to drop")
        return 0
    before = disk_usage(root)
    layout = RunLayout(root)
    for s, folders in p.drop.items():
        names = ", ".join(f"{s}/{f.name}/" for f in folders)
        log(f"{'would drop' if dry_run else 'drop'}   {names}")
        if dry_run:
            continue
        marker = layout.marker(s) or {}
        marker["dropped"] = sorted(set(marker.get("dropped", [])) | {f.name for f in folders})
        write_json(layout.marker_path(s), marker)  # first: a kill half-way leaves a marker that says so
        for f in folders:
            shutil.rmtree(f)
    if dry_run:
        return 0
    freed = before - disk_usage(root)
    log(f"freed {freed / 1e6:,.0f} MB; {root} holds {disk_usage(root) / 1e6:,.0f} MB")
    return freed


def add_parser(sub) -> None:
    p = sub.add_parser("clean-up", help="drop intermediate stages' model folders of a finished run",
                       description="Remove the model folders (model/, adapter/, sft's base/) of every complete "
                       "stage except the run's last model and what it loads on (an adapter's base), once no later "
                       "stage is unfinished. Results, bits per character, metrics and reports stay; a stage whose "
                       "model was dropped counts as done, and `langadapt run` makes the model again only when a "
                       "stage that reads it has to run.")
    p.add_argument("run_dir", metavar="RUN", help="the run's folder, e.g. runs/demo")
    p.add_argument("--keep", nargs="+", default=[], metavar="STAGE", help="also keep these stages' models")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.set_defaults(func=cmd_clean_up)


def cmd_clean_up(args) -> int:
    clean_up(args.run_dir, keep=tuple(args.keep), dry_run=args.dry_run)
    return 0
