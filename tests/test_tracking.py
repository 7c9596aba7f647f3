"""Experiment trackers (issue 20): the training core logs through accelerate's trackers. A recipe with
``report_to: [tensorboard]`` writes event files TensorBoard's own reader reads back (the same figures as
metrics.jsonl, one run per training call, a resumed call without repeated steps); any other tracker goes
through the same path (a tracker registered with accelerate, here a recording one); a missing package
is refused in one line before anything trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_llama
from test_align_stage import make_workspace, mark_done, recipe_for
from test_train_core import documents, settings, tiny_tokenizer

HELD = {"target": "the cat sat on the mat", "english": "birds fly over the sea"}


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of one TensorBoard run folder, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def metrics_rows(path: Path, name: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r["name"] == name]


def test_a_recipe_with_report_to_tensorboard_writes_events_tensorboard_reads(tmp_path):
    pytest.importorskip("tensorboard")
    from langadapt.run import run_stage

    ws = make_workspace(tmp_path)
    recipe = recipe_for(ws, report_to=["tensorboard"])
    mark_done(recipe, "clean", "tokenizer")
    run_stage(recipe, "align", resume=False)
    out = ws / "runs" / "t" / "align"
    bpc = json.loads((out / "bpc.json").read_text(encoding="utf-8"))
    for name in ("monolingual", "bilingual"):  # one TensorBoard run per training call
        got = scalars(out / "tensorboard" / name)
        rows = [r for r in metrics_rows(out / "metrics.jsonl", name) if "loss" in r]
        assert [s for s, _ in got["train/loss"]] == [r["step"] for r in rows] == [1, 2, 3, 4]
        assert [v for _, v in got["train/loss"]] == pytest.approx([r["loss"] for r in rows], abs=1e-5)
        assert [v for _, v in got["train/lr"]] == pytest.approx([r["lr"] for r in rows], rel=1e-6)
        assert [v for _, v in got["train/tokens_per_s"]] == pytest.approx([r["tokens_per_s"] for r in rows])
        assert {"train/grad_norm", "train/memory_mb"} <= set(got)
        for lang in ("target", "english"):  # held-out bits per character at the steps bpc.json records
            steps = [s for s in bpc[lang]["steps"] if s["name"] == name]
            assert [s for s, _ in got[f"heldout/bpc_{lang}"]] == [s["step"] for s in steps] == [0, 4]
            assert [v for _, v in got[f"heldout/bpc_{lang}"]] == pytest.approx([s["bpc"] for s in steps], rel=1e-6)


def test_a_resumed_call_purges_the_steps_it_repeats(tmp_path):
    pytest.importorskip("tensorboard")
    from langadapt.train.core import train_model

    tok = tiny_tokenizer()

    def stop_at_3(step, _):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_llama(vocab_size=len(tok)), tok, documents(tok), settings(save_every=2), tmp_path,
                    report_to=["tensorboard"], log=lambda m: None, callback=stop_at_3)
    assert [s for s, _ in scalars(tmp_path / "tensorboard" / "train")["train/loss"]] == [1, 2, 3]
    r = train_model(tiny_llama(vocab_size=len(tok)), tok, documents(tok), settings(save_every=2), tmp_path,
                    report_to=["tensorboard"], resume=True, log=lambda m: None)
    assert r.resumed_from == 2
    got = scalars(tmp_path / "tensorboard" / "train")["train/loss"]
    rows = [r for r in metrics_rows(tmp_path / "metrics.jsonl", "train") if "loss" in r]
    assert [s for s, _ in got] == [r["step"] for r in rows] == [1, 2, 3, 4]  # step 3 once: the resumed run's
    assert [v for _, v in got] == pytest.approx([r["loss"] for r in rows], abs=1e-5)


def test_any_accelerate_tracker_gets_the_same_figures(tmp_path):
    """A tracker registered with accelerate by name: started with the recipe's name as project and the call's
    settings, given each logged step's figures and the held-out values, finished at the end."""
    from accelerate.tracking import GeneralTracker, register_tracker_class

    from langadapt.train.core import train_model

    calls: list[tuple] = []

    class Recording(GeneralTracker):
        name = "langadapt_recording"
        requires_logging_directory = False
        main_process_only = True

        def __init__(self, run_name: str, **kwargs):
            super().__init__()
            calls.append(("init", run_name))

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values: dict):
            calls.append(("config", values))

        def log(self, values: dict, step: int | None = None, **kwargs):
            calls.append(("log", step, dict(values)))

        def finish(self):
            calls.append(("finish",))

    register_tracker_class(Recording)
    tok = tiny_tokenizer()
    train_model(tiny_llama(vocab_size=len(tok)), tok, documents(tok), settings(eval_every=2, embedding_lr="0.5x"),
                tmp_path, heldout=HELD, report_to=["langadapt_recording"], project="demo", name="pretrain",
                log=lambda m: None)
    assert calls[0] == ("init", "demo") and calls[-1] == ("finish",)
    config = calls[1][1]
    assert config["name"] == "pretrain" and config["lr"] == 5e-3 and config["embedding_lr"] == "0.5x"
    assert all(isinstance(v, (bool, int, float, str)) for v in config.values())  # flat: what every tracker takes
    logs = [c for c in calls if c[0] == "log"]
    steps = [(step, sorted(v)) for _, step, v in logs]
    train_keys = sorted(["train/loss", "train/lr", "train/lr_embeddings", "train/grad_norm", "train/tokens_per_s",
                         "train/memory_mb"])
    held_keys = ["heldout/bpc_english", "heldout/bpc_target"]
    assert steps == [(0, held_keys), (1, train_keys), (2, train_keys), (2, held_keys), (3, train_keys),
                     (4, train_keys), (4, held_keys)]
    rows = [r for r in metrics_rows(tmp_path / "metrics.jsonl", "pretrain") if "loss" in r]
    assert [v["train/loss"] for _, _, v in logs if "train/loss" in v] == [r["loss"] for r in rows]
    assert [v["train/lr_embeddings"] for _, _, v in logs if "train/loss" in v] == [r["lr_embeddings"] for r in rows]
    assert all(v["train/lr_embeddings"] == pytest.approx(v["train/lr"] / 2) for _, _, v in logs if "train/lr" in v)


def test_a_missing_tracker_package_is_refused_in_one_line_before_training(tmp_path, monkeypatch):
    from langadapt.errors import LangadaptError
    from langadapt.run import preflight
    from langadapt.train import tracking
    from langadapt.train.core import train_model

    # whatever this machine has installed: W&B's package is missing as far as the check can tell
    monkeypatch.setitem(tracking.PACKAGES, "wandb", (("langadapt_no_such_module",), "wandb"))
    tok = tiny_tokenizer()
    steps = []
    with pytest.raises(LangadaptError) as e:
        train_model(tiny_llama(vocab_size=len(tok)), tok, documents(tok), settings(), tmp_path,
                    report_to=["wandb"], log=lambda m: None, callback=lambda s, _: steps.append(s))
    assert str(e.value) == ("report_to: wandb needs the wandb package, which is not installed; pip install wandb "
                            "(or remove wandb from report_to)")
    assert steps == [] and not (tmp_path / "metrics.jsonl").exists()

    ws = make_workspace(tmp_path / "ws")  # and a recipe asking for it stops before its first stage
    with pytest.raises(LangadaptError, match="report_to: wandb needs the wandb package"):
        preflight(recipe_for(ws, report_to=["wandb"]))
    with pytest.raises(LangadaptError, match="unknown tracker 'langadapt_nobody'"):
        tracking.check_installed(["langadapt_nobody"])


def test_report_to_is_checked_by_the_recipe_and_every_tracker_has_a_package():
    from langadapt.errors import RecipeError
    from langadapt.recipe import TRACKERS, parse_recipe
    from langadapt.train.tracking import PACKAGES

    assert set(PACKAGES) == set(TRACKERS)
    with pytest.raises(RecipeError, match=r"report_to.0: Input should be 'tensorboard', 'wandb', 'mlflow'"):
        parse_recipe({"name": "t", "base_model": "x", "report_to": ["tensorbord"]}, lines={("report_to", 0): 3})


def test_report_to_does_not_change_what_a_stage_computes(tmp_path):
    """Trackers are logging only: turning one on does not make finished stages stale."""
    from langadapt.run import stage_hash

    ws = make_workspace(tmp_path)
    plain, tracked = recipe_for(ws), recipe_for(ws, report_to=["tensorboard"])
    assert stage_hash(plain, "align") == stage_hash(tracked, "align")
