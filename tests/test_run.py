"""`run`: stages in order, completion markers, skipping, re-running after a change, no marker on a crash."""

from __future__ import annotations

import json
import time

import pytest

from dataclasses import replace

from langadapt import run as runmod, stages
from langadapt.recipe import load_recipe

CALLS: list[str] = []


def fake_clean(ctx):
    CALLS.append("clean")
    (ctx.out_dir / "sentences.txt").write_text("ok")
    return {"sentences": 1}


def fake_tokenizer(ctx):
    CALLS.append("tokenizer")
    assert (ctx.stage_dir("clean") / "sentences.txt").read_text() == "ok"
    if ctx.extra.get("crash") or CRASH.get("tokenizer"):
        raise RuntimeError("killed")
    (ctx.out_dir / "model").mkdir()
    return {}


CRASH: dict[str, bool] = {}


@pytest.fixture
def recipe_file(tmp_path, monkeypatch):
    monkeypatch.setitem(stages.BY_NAME, "clean", replace(stages.get("clean"), entry=f"{__name__}:fake_clean"))
    monkeypatch.setitem(stages.BY_NAME, "tokenizer", replace(stages.get("tokenizer"), entry=f"{__name__}:fake_tokenizer"))
    monkeypatch.setattr(runmod, "preflight", lambda recipe: None)
    CALLS.clear()
    CRASH.clear()
    (tmp_path / "c.txt").write_text("متن\n", encoding="utf-8")
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nbase_model: x/y\noutput_dir: %s\ndata: {corpus: [{name: c, path: c.txt}]}\n"
                 "clean: {min_words: 5}\ntokenizer: {new_pieces: 10}\n" % (tmp_path / "runs"))
    return p


def test_run_executes_stages_in_order_and_writes_markers(recipe_file):
    recipe = load_recipe(recipe_file)
    assert runmod.run_recipe(recipe) == [("clean", "ran"), ("tokenizer", "ran")]
    assert CALLS == ["clean", "tokenizer"]
    marker = json.loads((recipe.run_dir / "clean" / "COMPLETE.json").read_text())
    assert marker["summary"]["sentences"] == 1 and len(marker["hash"]) == 64


def hungry(ctx):
    CALLS.append("tokenizer")
    block = bytearray(300 * 2**20)
    for i in range(0, len(block), 4096):  # resident only once touched
        block[i] = 1
    time.sleep(0.2)  # longer than the sampling interval, for a process whose peak was already higher
    del block
    (ctx.out_dir / "weights.bin").write_bytes(b"\1" * (8 * 2**20))
    return {"rows": 3}


def test_stage_summaries_carry_peak_memory_and_bytes_written(recipe_file, monkeypatch, capsys):
    """Issue 16: each marker's summary says how much memory the stage held at its peak and what it wrote,
    and the log says it too; a stage that allocates 300 MB and writes 8 MB shows both."""
    from langadapt import memory

    monkeypatch.setitem(stages.BY_NAME, "tokenizer", replace(stages.get("tokenizer"), entry=f"{__name__}:hungry"))
    recipe = load_recipe(recipe_file)
    memory.release()
    before = memory.rss_mb()
    runmod.run_recipe(recipe)
    quiet = json.loads((recipe.run_dir / "clean" / "COMPLETE.json").read_text())["summary"]
    summary = json.loads((recipe.run_dir / "tokenizer" / "COMPLETE.json").read_text())["summary"]
    assert summary["rows"] == 3
    assert summary["peak_rss_mb"] >= before + 280
    assert quiet["peak_rss_mb"] < summary["peak_rss_mb"] - 250
    assert summary["written_mb"] >= 8 and quiet["written_mb"] < 8
    log = capsys.readouterr().out
    assert f"tokenizer: peak memory {summary['peak_rss_mb']:,.0f} MB resident" in log


def test_finished_stages_are_skipped(recipe_file):
    runmod.run_recipe(load_recipe(recipe_file))
    CALLS.clear()
    assert runmod.run_recipe(load_recipe(recipe_file)) == [("clean", "skipped"), ("tokenizer", "skipped")]
    assert CALLS == []


def test_changed_setting_reruns_that_stage_and_everything_after(recipe_file):
    runmod.run_recipe(load_recipe(recipe_file))
    CALLS.clear()
    recipe_file.write_text(recipe_file.read_text().replace("min_words: 5", "min_words: 6"))
    assert runmod.run_recipe(load_recipe(recipe_file)) == [("clean", "ran"), ("tokenizer", "ran")]


def test_changed_later_setting_reruns_only_that_stage(recipe_file):
    runmod.run_recipe(load_recipe(recipe_file))
    CALLS.clear()
    recipe_file.write_text(recipe_file.read_text().replace("new_pieces: 10", "new_pieces: 12"))
    assert runmod.run_recipe(load_recipe(recipe_file)) == [("clean", "skipped"), ("tokenizer", "ran")]


def test_changed_input_file_reruns_the_stage_reading_it(recipe_file, tmp_path):
    runmod.run_recipe(load_recipe(recipe_file))
    CALLS.clear()
    (tmp_path / "c.txt").write_text("متن دیگری که تازه است\n", encoding="utf-8")
    assert runmod.run_recipe(load_recipe(recipe_file))[0] == ("clean", "ran")


def test_crashed_stage_leaves_no_marker_and_reruns(recipe_file):
    recipe = load_recipe(recipe_file)
    CRASH["tokenizer"] = True
    with pytest.raises(RuntimeError):
        runmod.run_recipe(recipe)
    assert (recipe.run_dir / "clean" / "COMPLETE.json").is_file()
    assert not (recipe.run_dir / "tokenizer" / "COMPLETE.json").exists()
    assert runmod.stage_status(recipe, "tokenizer") == "partial"
    CRASH.clear()
    CALLS.clear()
    assert runmod.run_recipe(recipe) == [("clean", "skipped"), ("tokenizer", "ran")]


def test_stage_alone_refuses_when_its_input_stage_is_missing(recipe_file):
    from langadapt.errors import LangadaptError

    with pytest.raises(LangadaptError, match="needs stage 'clean'"):
        runmod.run_stage(load_recipe(recipe_file), "tokenizer", resume=False)


def extra_files(recipe):
    return [recipe.resolve("extra.txt")]


def test_stage_reruns_when_a_file_named_by_its_files_hook_changes(recipe_file, tmp_path, monkeypatch):
    (tmp_path / "extra.txt").write_text("one")
    monkeypatch.setitem(stages.BY_NAME, "tokenizer", replace(stages.get("tokenizer"), files=f"{__name__}:extra_files"))
    runmod.run_recipe(load_recipe(recipe_file))
    assert runmod.run_recipe(load_recipe(recipe_file))[1] == ("tokenizer", "skipped")
    (tmp_path / "extra.txt").write_text("two, longer")
    assert runmod.run_recipe(load_recipe(recipe_file)) == [("clean", "skipped"), ("tokenizer", "ran")]


MULTI = '''
import os, sys
from dataclasses import replace
from langadapt import run as runmod, stages
from langadapt.recipe import load_recipe

def fake(ctx):
    with open(ctx.run_dir.parent / "calls.txt", "a") as f:
        f.write(f"{ctx.stage} {os.environ['RANK']} {ctx.resume}\\n")
    return {}

stages.BY_NAME["clean"] = replace(stages.get("clean"), entry="__main__:fake")
stages.BY_NAME["tokenizer"] = replace(stages.get("tokenizer"), entry="__main__:fake", distributed=True)
runmod.preflight = lambda recipe: None
runmod._wait_for_marker.__defaults__ = (0.2,)
runmod.run_recipe(load_recipe(sys.argv[1]))
'''


def test_under_two_processes_single_process_stages_run_once_and_training_stages_on_every_rank(recipe_file, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    script = tmp_path / "multi.py"
    script.write_text(MULTI)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), str(script), str(recipe_file)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = sorted((tmp_path / "runs" / "calls.txt").read_text().splitlines())
    assert calls == ["clean 0 False", "tokenizer 0 False", "tokenizer 1 False"]
    assert (tmp_path / "runs" / "t" / "tokenizer" / "COMPLETE.json").is_file()


# --------------------------------------------------------------------------- resume by default (issue 17 items 2, 3)

SEEN: list[bool] = []


def fake_training(ctx):
    """A training stage's footprint: a checkpoint while it runs, a model at the end."""
    SEEN.append(ctx.resume)
    ckpt = ctx.out_dir / "checkpoints" / "train" / "step-2"
    if CRASH.get("training"):
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text("{}")
        raise RuntimeError("killed")
    SEEN.append(ckpt.is_dir())
    (ctx.out_dir / "model").mkdir()
    return {}


def test_a_stage_command_resumes_an_interrupted_run_unless_told_to_restart(recipe_file, monkeypatch, capsys):
    from langadapt.cli import main

    monkeypatch.setitem(stages.BY_NAME, "tokenizer", replace(stages.get("tokenizer"), entry=f"{__name__}:fake_training"))
    assert main(["clean", str(recipe_file)]) == 0
    SEEN.clear()
    CRASH["training"] = True
    with pytest.raises(RuntimeError):
        main(["tokenizer", str(recipe_file)])
    CRASH.clear()
    capsys.readouterr()
    assert main(["tokenizer", str(recipe_file)]) == 0  # no flag: the checkpoint is used
    out = capsys.readouterr().out
    assert SEEN == [False, True, True]
    assert "tokenizer: resuming from the interrupted run's checkpoint (train step-2); --restart discards it" in out

    # --force on a finished stage starts it over; --restart discards an interrupted run's checkpoint
    SEEN.clear()
    CRASH["training"] = True
    with pytest.raises(RuntimeError):
        main(["tokenizer", str(recipe_file), "--force"])
    CRASH.clear()
    capsys.readouterr()
    assert main(["tokenizer", str(recipe_file), "--restart"]) == 0
    out = capsys.readouterr().out
    assert SEEN == [False, False, False]
    assert "tokenizer: discarding the interrupted run's checkpoint (train step-2): --restart" in out
    assert main(["tokenizer", str(recipe_file), "--resume", "--restart"]) == 2


def test_a_changed_recipe_discards_the_checkpoint_and_says_so(recipe_file, monkeypatch, capsys):
    monkeypatch.setitem(stages.BY_NAME, "tokenizer", replace(stages.get("tokenizer"), entry=f"{__name__}:fake_training"))
    SEEN.clear()
    CRASH["training"] = True
    with pytest.raises(RuntimeError):
        runmod.run_recipe(load_recipe(recipe_file))
    CRASH.clear()
    recipe_file.write_text(recipe_file.read_text().replace("new_pieces: 10", "new_pieces: 12"))
    lines = []
    runmod.run_recipe(load_recipe(recipe_file), console=type("C", (), {"print": lambda self, m: lines.append(m)})())
    assert SEEN == [False, False, False]
    assert ("tokenizer: discarding the interrupted run's checkpoint (train step-2): the settings or inputs changed "
            "since it was made") in lines


KILLED_WRITE = '''
import os, signal, sys
from dataclasses import replace
from langadapt import run as runmod, stages
from langadapt.files import atomic_path
from langadapt.recipe import load_recipe

def fake(ctx):
    if sys.argv[2] == "kill":  # a checkpoint torn by an earlier kill, too
        (ctx.out_dir / "checkpoints" / "train" / ".tmp-step-4").mkdir(parents=True)
    with atomic_path(ctx.out_dir / "model") as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"0" * 4096)
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    return {}

def clean(ctx):
    return {}

stages.BY_NAME["clean"] = replace(stages.get("clean"), entry="__main__:clean")
stages.BY_NAME["tokenizer"] = replace(stages.get("tokenizer"), entry="__main__:fake")
runmod.preflight = lambda recipe: None
runmod.run_recipe(load_recipe(sys.argv[1]))
'''


def test_a_kill_during_the_final_model_write_leaves_nothing_in_the_finished_stage(recipe_file, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "killed.py"
    script.write_text(KILLED_WRITE)
    stage_dir = tmp_path / "runs" / "t" / "tokenizer"
    killed = subprocess.run([sys.executable, str(script), str(recipe_file), "kill"], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -9
    assert [p.name for p in stage_dir.iterdir() if p.name.startswith(".tmp-model-")]  # what the kill left
    done = subprocess.run([sys.executable, str(script), str(recipe_file), "finish"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tokenizer: removed 2 leftovers of writes a kill interrupted" in done.stdout
    assert (stage_dir / "COMPLETE.json").is_file() and (stage_dir / "model" / "model.safetensors").is_file()
    left = [str(p.relative_to(stage_dir)) for p in stage_dir.rglob(".*") if p.name.startswith((".tmp-", ".old-"))]
    assert left == []
