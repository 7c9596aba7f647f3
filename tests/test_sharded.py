"""Align and pretrain under FSDP on two CPU processes (gloo), launched with the shipped
configs/accelerate/fsdp.yaml: the same losses as one process over the same global batch, a run killed
after a checkpoint resumes to the weights of an uninterrupted one, and the results load with plain
transformers and PEFT."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from test_align_stage import make_workspace, mark_done, tokenizers

CONFIG = REPO / "configs" / "accelerate" / "fsdp.yaml"

CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import langadapt.train.core as core
from langadapt.run import run_stage
from test_sharded import recipe

ws, stages, kill = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
if kill != "-":
    name, at = kill.split(":")
    real = core.train_model

    def train_model(*args, **kw):
        if kw.get("name") == name:
            kw["callback"] = lambda step, row: step == int(at) and os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kw)

    core.train_model = train_model
r = recipe(ws, batch_size=int(os.environ["BATCH"]))
for stage in stages:
    run_stage(r, stage, resume=True)
"""


def recipe(ws, *, batch_size: int):
    """Align (both steps) training only the merge's new rows (PEFT trainable tokens), then pretrain with LoRA
    and every embedding row; 4 steps of 2 micro-batches each, a checkpoint every 2 steps."""
    from langadapt.recipe import parse_recipe

    ws = Path(ws)
    step = {"max_steps": 4, "batch_size": batch_size, "grad_accum": 2, "seq_len": 16, "lr": 3e-2,
            "warmup_ratio": 0.0, "save_every": 2}
    align = {**step, "train_rows": "new"}
    return parse_recipe({
        "name": "t", "base_model": str(ws / "base"), "output_dir": str(ws / "runs"),
        "data": {"corpus": [{"name": "c", "path": str(ws / "pairs.tsv")}],
                 "parallel": [{"name": "p", "format": "tsv", "path": str(ws / "pairs.tsv")}],
                 "heldout": {"target": str(ws / "held_fa.txt"), "english": str(ws / "held_en.txt")}},
        "clean": {}, "tokenizer": {},
        "align": {"monolingual": align, "bilingual": align},
        "pretrain": {**step, "train_rows": "all", "lora": {"r": 2, "alpha": 8, "dropout": 0.0}},
    })


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ws: Path, stages: str, *, kill: str = "-") -> subprocess.CompletedProcess:
    script = ws / "child.py"
    script.write_text(CHILD.format(tests=str(REPO / "tests")), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "BATCH": "1"}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--num_processes", "2",
         "--main_process_port", str(_free_port()), str(script), str(ws), stages, kill],
        capture_output=True, text=True, timeout=300, env=env)


def losses(run: Path, stage: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in (run / stage / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out.setdefault(row["name"], []).append(row["loss"])
    return out


def adapter_logits(adapter: Path) -> torch.Tensor:
    """Logits of the adapter loaded by PEFT alone (its base from adapter_config.json), no langadapt."""
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 5, 12, 30, 31, 7, 2, 40]])).logits


def model_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a model folder as plain transformers loads them."""
    from transformers import AutoModelForCausalLM

    return {k: v.detach() for k, v in AutoModelForCausalLM.from_pretrained(str(folder)).state_dict().items()}


@pytest.mark.slow
def test_fsdp_align_and_pretrain_match_one_process_resume_after_a_kill_and_load_without_langadapt(tmp_path):
    import shutil

    from langadapt.run import run_stage

    single = make_workspace(tmp_path / "single", tied=True)
    r = recipe(single, batch_size=2)
    mark_done(r, "clean", "tokenizer")
    for stage in ("align", "pretrain"):
        run_stage(r, stage, resume=False)

    ws = make_workspace(tmp_path / "fsdp", tied=True)
    mark_done(recipe(ws, batch_size=1), "clean", "tokenizer")
    run = ws / "runs" / "t"
    proc = launch(ws, "align,pretrain")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "plain loss over the full logits: FSDP shards the head's weight" in proc.stdout

    # one process with 2 rows per micro-batch, two with 1 each: the same global batch, the same losses
    for stage in ("align", "pretrain"):
        a, b = losses(single / "runs" / "t", stage), losses(run, stage)
        assert a.keys() == b.keys() and all(len(v) == 4 for v in a.values())
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=1e-4), name

    # the results load with plain transformers / PEFT and hold what one process trained
    ours, theirs = model_weights(run / "align" / "model"), model_weights(single / "runs" / "t" / "align" / "model")
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-4, atol=1e-5, msg=k)
    start, emb, old = model_weights(run / "tokenizer" / "model"), "model.embed_tokens.weight", len(tokenizers()[0])
    assert torch.equal(ours[emb][:old], start[emb][:old]) and not torch.equal(ours[emb][old:], start[emb][old:])
    torch.testing.assert_close(adapter_logits(run / "pretrain" / "adapter"),
                               adapter_logits(single / "runs" / "t" / "pretrain" / "adapter"), rtol=1e-4, atol=1e-4)
    straight = tmp_path / "straight"
    shutil.copytree(run / "align" / "model", straight / "align")
    shutil.copytree(run / "pretrain" / "adapter", straight / "pretrain")

    # killed in align's second step after its checkpoint at step 2, resumed, killed in pretrain, resumed
    shutil.rmtree(run / "align" / "model")
    shutil.rmtree(run / "pretrain" / "adapter")
    proc = launch(ws, "align,pretrain", kill="bilingual:3")
    assert proc.returncode != 0 and "SIGKILL" in proc.stderr, proc.stderr[-4000:]
    state = run / "align" / "checkpoints" / "bilingual" / "step-2" / "state"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):  # each process saved its own shard: FSDP ran, not DDP
        assert sorted(p.name for p in (state / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    proc = launch(ws, "align,pretrain", kill="pretrain:3")
    assert proc.returncode != 0 and "SIGKILL" in proc.stderr, proc.stderr[-4000:]
    assert "bilingual: resuming from" in proc.stdout and (run / "align" / "COMPLETE.json").is_file()
    proc = launch(ws, "pretrain")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "pretrain: resuming from" in proc.stdout

    resumed, first = model_weights(run / "align" / "model"), model_weights(straight / "align")
    assert [k for k in first if not torch.equal(first[k], resumed[k])] == []
    from safetensors.torch import load_file

    a = load_file(str(straight / "pretrain" / "adapter_model.safetensors"))
    b = load_file(str(run / "pretrain" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
