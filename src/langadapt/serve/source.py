"""What a user may type as MODEL for chat, serve and export, turned into a path ``models.resolve_model`` loads.

Accepted: anything ``models.resolve_model`` takes (a save_pretrained folder, a PEFT adapter folder, a
``.gguf`` file, a hub id, ``smollm2-135m-instruct``), plus a run's stage output written three ways:
``runs/demo/sft`` (the stage folder), ``runs/demo:sft`` (run folder and stage) and
``configs/demo.yaml:sft`` (the recipe and stage; the recipe also knows the run's ``base`` model).
A stage folder holds ``adapter/`` (PEFT) or ``model/`` (full model), as ``langadapt.layout`` says.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from langadapt import stages
from langadapt.errors import ModelNotFoundError
from langadapt.layout import MODEL_DIRS, RunLayout, stage_artifact

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True)
class ModelRef:
    """A model to load (``path``), a short name to show for it, and the run it came from, if any."""

    path: str
    name: str
    run_dir: Path | None = None
    stage: str | None = None
    recipe_path: Path | None = None


def _from_recipe(recipe_file: Path, stage: str) -> ModelRef:
    from langadapt.recipe import load_recipe

    recipe = load_recipe(recipe_file, check_files=False)
    path = recipe.model_path(stage)  # raises a one-line error when the stage has not run
    return ModelRef(path=path, name=f"{recipe.name}/{stage}", run_dir=recipe.run_dir, stage=stage,
                    recipe_path=recipe_file)


def _from_run_dir(run_dir: Path, stage: str) -> ModelRef:
    if stage == "base":
        raise ModelNotFoundError(
            f"{run_dir}: a run folder does not record its base model; name the recipe instead "
            f"(RECIPE.yaml:base) or give the base model itself (for example smollm2-135m-instruct)")
    stage_dir = RunLayout(run_dir).stage_dir(stage)
    art = stage_artifact(stage_dir)
    if art is None:
        found = RunLayout(run_dir).stages_with_models(stages.ORDER)
        hint = f" (stages with a model here: {', '.join(found)})" if found else " (no stage of this run has a model yet; run it first)"
        raise ModelNotFoundError(f"{stage_dir}: no adapter/ or model/ folder{hint}")
    return ModelRef(path=str(art), name=f"{run_dir.name}/{stage}", run_dir=run_dir, stage=stage)


def resolve_ref(spec: str | os.PathLike, stage: str | None = None) -> ModelRef:
    """Resolve MODEL (and an optional ``--stage``) into a ModelRef; errors are one line for the user."""
    s = str(spec)
    if stage is None and ":" in s:
        left, right = s.rsplit(":", 1)
        if _STAGE_NAME.match(right) and Path(os.path.expanduser(left)).exists():
            s, stage = left, right
    p = Path(os.path.expanduser(s))
    if stage is not None:
        if p.is_file() and p.suffix in (".yaml", ".yml"):
            return _from_recipe(p, stage)
        if p.is_dir():
            return _from_run_dir(p, stage)
        raise ModelNotFoundError(f"{s}: not a run folder or recipe file, so it has no stage '{stage}'")
    if p.is_dir() and not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        art = stage_artifact(p)
        if art is not None:
            return ModelRef(path=str(art), name=f"{p.resolve().parent.name}/{p.name}", run_dir=p.parent, stage=p.name)
    return ModelRef(path=s, name=_short_name(s))


def run_stages(path: str | os.PathLike) -> list[str]:
    """Stages of a run folder that have a model, in pipeline order ([] if ``path`` is not a run folder)."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_dir() or (p / "config.json").exists() or (p / "adapter_config.json").exists() \
            or stage_artifact(p) is not None:
        return []
    return RunLayout(p).stages_with_models(stages.ORDER)


def _short_name(spec: str) -> str:
    p = Path(spec)
    if p.exists():
        p = p.resolve()
        if p.name in MODEL_DIRS and p.parent.name:
            # runs/demo/sft/adapter -> demo/sft; some/folder/model -> folder
            return f"{p.parent.parent.name}/{p.parent.name}" if p.parent.name in stages.ORDER else p.parent.name
        return p.stem if p.is_file() else p.name
    return spec
