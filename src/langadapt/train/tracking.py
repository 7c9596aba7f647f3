"""Experiment trackers of a training call, through accelerate's trackers (the recipe's ``report_to``).

Every training call (align's monolingual and bilingual steps, pretrain, sft) is one tracker run named
after the call; its logged steps carry ``train/loss``, ``train/lr`` (and ``train/lr_embeddings`` when the
embeddings train at a rate of their own), ``train/grad_norm``, ``train/tokens_per_s``,
``train/memory_mb`` and the held-out ``heldout/bpc_<text>`` values, at the optimizer step they belong to.

- ``tensorboard``: event files in ``<stage>/tensorboard/<call>/``. A resumed call purges the steps after
  its checkpoint (``SummaryWriter(purge_step=...)``), so the curves read as one run, as
  ``metrics.jsonl`` does.
- ``wandb``: project ``WANDB_PROJECT`` or the recipe's name, run name the call's name; everything else
  is W&B's own settings (``WANDB_MODE=offline``, ``WANDB_DIR``, ...).
- ``mlflow``: experiment ``MLFLOW_EXPERIMENT_NAME`` or the recipe's name, run name the call's name;
  ``MLFLOW_TRACKING_URI`` picks the store (``sqlite:///mlflow.db``, or ``file:./mlruns`` for a file store,
  which MLflow 3 accepts only with ``MLFLOW_ALLOW_FILE_STORE=true``).
- any other accelerate tracker (or one registered with ``accelerate.tracking.register_tracker_class``)
  by its name, with the recipe's name as its project.

Packages are checked before anything trains (``check_installed``): accelerate alone would drop a
tracker whose package is missing without a word.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

from langadapt.errors import LangadaptError
from langadapt.files import read_json
from langadapt.recipe import TRACKERS
from langadapt.train.checkpoint import last_checkpoint

PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    # tracker -> (modules any of which will do, the package to pip install)
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "aim": (("aim",), "aim"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "trackio": (("trackio",), "trackio"),
}


def check_installed(report_to: Sequence[str]) -> None:
    """Refuse, in one line, a tracker whose package is missing or a name accelerate does not know."""
    for name in report_to:
        if name in PACKAGES:
            modules, package = PACKAGES[name]
            if not any(importlib.util.find_spec(m) is not None for m in modules):
                raise LangadaptError(f"report_to: {name} needs the {package} package, which is not installed; "
                                     f"pip install {package} (or remove {name} from report_to)")
            continue
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        if name not in LOGGER_TYPE_TO_CLASS:  # a tracker registered through accelerate is fine
            raise LangadaptError(f"report_to: unknown tracker '{name}' (known: {', '.join(TRACKERS)})")


def _resume_step(out_dir: Path, name: str) -> int | None:
    """The step a resumed call restarts after: its newest checkpoint's (the one ``Checkpoints.restore`` loads)."""
    ckpt = last_checkpoint(out_dir, name)
    if ckpt is None:
        return None
    try:
        return int(read_json(ckpt / "trainer_state.json")["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hparams(config: dict) -> dict:
    """Settings as the flat scalars every tracker takes (TensorBoard's hparams refuse lists, dicts and None)."""
    out = {}
    for k, v in config.items():
        out[k] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v, ensure_ascii=False, sort_keys=True)
    return out


class Trackers:
    """The trackers of one training call: ``log_with`` for the ``Accelerator``, then ``start`` (main process),
    ``log`` per step and ``finish``. Empty ``report_to``: nothing is started and ``log`` does nothing."""

    def __init__(self, report_to: Sequence[str], *, out_dir: str | os.PathLike, name: str,
                 project: str | None = None, resume: bool = False):
        check_installed(report_to)
        self.names = list(dict.fromkeys(report_to))
        self.name, self.project = name, project or "langadapt"
        self.accelerator = None
        self.log_with: list = []
        out_dir = Path(out_dir)
        for tracker in self.names:
            # The three common trackers are built here so that each training call is its own run under the
            # recipe's project; accelerate would name TensorBoard's folder and W&B's project alike.
            if tracker == "tensorboard":
                from accelerate.tracking import TensorBoardTracker

                purge = _resume_step(out_dir, name) if resume else None
                self.log_with.append(TensorBoardTracker(name, str(out_dir / "tensorboard"),
                                                        **({"purge_step": purge + 1} if purge is not None else {})))
            elif tracker == "wandb":
                from accelerate.tracking import WandBTracker

                self.log_with.append(WandBTracker(os.environ.get("WANDB_PROJECT") or self.project, name=name))
            elif tracker == "mlflow":
                from accelerate.tracking import MLflowTracker

                self.log_with.append(MLflowTracker(self.project, run_name=name))
            else:
                self.log_with.append(tracker)

    def __bool__(self) -> bool:
        return bool(self.names)

    def start(self, accelerator, config: dict) -> Trackers:
        """Start every tracker on the main process, storing ``config`` (the call's settings) with the run."""
        if not self.names or not accelerator.is_main_process:
            return self
        try:
            accelerator.init_trackers(self.project, config=_hparams(config))
        except Exception as e:  # a tracker's own service or settings: W&B without login, an MLflow server down
            top = type(e).__module__.split(".")[0]
            who = next((n for n in self.names if top in PACKAGES.get(n, ((),))[0]), ", ".join(self.names))
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise LangadaptError(f"report_to: {who} could not start ({type(e).__name__}: {first}); without a network: "
                                 "WANDB_MODE=offline for W&B, MLFLOW_TRACKING_URI=sqlite:///mlflow.db (or file:./mlruns "
                                 "with MLFLOW_ALLOW_FILE_STORE=true) for MLflow") from e
        self.accelerator = accelerator
        return self

    def log(self, values: dict[str, float], step: int) -> None:
        if self.accelerator is not None and values:
            self.accelerator.log(values, step=step)

    def finish(self) -> None:
        """End every tracker's run. Not ``Accelerator.end_training``: it would also end the process group that
        the next training call of this process still needs."""
        if self.accelerator is None:
            return
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()
        self.accelerator = None
