"""Align and pretrain under FSDP and DeepSpeed ZeRO-2 on two CPU processes (gloo), launched with the shipped
configs/accelerate/fsdp.yaml and deepspeed-zero2-bf16.yaml (the recipe's precision, fp32 on a CPU, wins over
the config's): the same losses as one process over the same global batch, a run killed after a checkpoint
resumes to the weights of an uninterrupted one, and the results load with plain transformers and PEFT."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from test_align_stage import make_workspace, mark_done, tokenizers

CONFIGS = REPO / "configs" / "accelerate"
# what each engine leaves in a checkpoint's state/ when every process saved its own shard
SHARDS = {
    "fsdp.yaml": ["optimizer_0/__0_0.distcp", "optimizer_0/__1_0.distcp",
                  "pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp"],
    "deepspeed-zero2-bf16.yaml": ["pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                  "pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt"],
}

CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import langadapt.train.core as core
from langadapt.run import run_stage
from test_sharded import recipe

ws, stages, kill = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
    # DeepSpeed's CPU accelerator JIT-compiles a shared-memory allreduce kernel on first use (1-3 minutes of
    # C++ on 2 cores, CPU-only, never used on a GPU); without it DeepSpeed talks over the gloo group, as it
    # does on a machine without a compiler
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # deepspeed.comm.torch is torch
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
            "warmup_ratio": 0.0, "save_every": 2, "max_grad_norm": 0.5}
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


def launch(config: str, ws: Path, stages: str, *, kill: str = "-") -> subprocess.CompletedProcess:
    script = ws / "child.py"
    script.write_text(CHILD.format(tests=str(REPO / "tests")), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "BATCH": "1"}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config), "--num_processes", "2",
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
# FSDP on a tied model (SmolLM2's layout: accelerate re-ties the PEFT-wrapped head), ZeRO-2 on an untied one
# (Llama-2's, as the paper trained it)
@pytest.mark.parametrize("config,tied", [("fsdp.yaml", True), ("deepspeed-zero2-bf16.yaml", False)])
def test_align_and_pretrain_sharded_match_one_process_resume_after_a_kill_and_load_without_langadapt(tmp_path, config,
                                                                                                    tied):
    import shutil

    from langadapt.run import run_stage

    single = make_workspace(tmp_path / "single", tied=tied)
    r = recipe(single, batch_size=2)
    mark_done(r, "clean", "tokenizer")
    for stage in ("align", "pretrain"):
        run_stage(r, stage, resume=False)

    ws = make_workspace(tmp_path / "sharded", tied=tied)
    mark_done(recipe(ws, batch_size=1), "clean", "tokenizer")
    run = ws / "runs" / "t"
    proc = launch(config, ws, "align,pretrain")
    assert proc.returncode == 0, proc.stderr[-4000:]
    if config == "fsdp.yaml":
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
    for k in ours:  # Adam magnifies rounding where gradients are near 0: 1e-4 is about 0.1% of what training moved
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-4, atol=1e-4, msg=k)
    start, old = model_weights(run / "tokenizer" / "model"), len(tokenizers()[0])
    for k in ["model.embed_tokens.weight"] + ([] if tied else ["lm_head.weight"]):  # align trained new rows only
        assert torch.equal(ours[k][:old], start[k][:old]) and not torch.equal(ours[k][old:], start[k][old:]), k
    torch.testing.assert_close(adapter_logits(run / "pretrain" / "adapter"),
                               adapter_logits(single / "runs" / "t" / "pretrain" / "adapter"), rtol=1e-4, atol=1e-4)
    straight = tmp_path / "straight"
    shutil.copytree(run / "align" / "model", straight / "align")
    shutil.copytree(run / "pretrain" / "adapter", straight / "pretrain")

    # killed in align's second step after its checkpoint at step 2, resumed, killed in pretrain, resumed
    shutil.rmtree(run / "align" / "model")
    shutil.rmtree(run / "pretrain" / "adapter")
    proc = launch(config, ws, "align,pretrain", kill="bilingual:3")
    assert proc.returncode != 0 and "SIGKILL" in proc.stderr, proc.stderr[-4000:]
    state = run / "align" / "checkpoints" / "bilingual" / "step-2" / "state"
    saved = {p.relative_to(state).as_posix() for p in state.rglob("*")}
    assert set(SHARDS[config]) <= saved, sorted(saved)  # the engine ran, not plain data parallel
    proc = launch(config, ws, "align,pretrain", kill="pretrain:3")
    assert proc.returncode != 0 and "SIGKILL" in proc.stderr, proc.stderr[-4000:]
    assert "bilingual: resuming from" in proc.stdout and (run / "align" / "COMPLETE.json").is_file()
    proc = launch(config, ws, "pretrain")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "pretrain: resuming from" in proc.stdout

    resumed, first = model_weights(run / "align" / "model"), model_weights(straight / "align")
    assert [k for k in first if not torch.equal(first[k], resumed[k])] == []
    from safetensors.torch import load_file

    a = load_file(str(straight / "pretrain" / "adapter_model.safetensors"))
    b = load_file(str(run / "pretrain" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


# --------------------------------------------------------------------------- the shipped configs, no launch


def launcher_env(config: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file configs/accelerate/<config>` gives each process
    (accelerate's own launcher functions, as its launch command calls them)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / config), "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if not args.use_deepspeed:
        return prepare_multi_gpu_env(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(
        list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else []))
    return prepare_deepspeed_cmd_env(args)[1]


@pytest.mark.parametrize("config,precision", [("deepspeed-zero2-fp16.yaml", "fp16"), ("deepspeed-zero2-bf16.yaml", "bf16")])
def test_deepspeed_configs_build_zero2_plugins_without_offload_in_their_precision(monkeypatch, config, precision):
    from accelerate.utils import DeepSpeedPlugin

    env = launcher_env(config)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WORLD_SIZE", "2")
    from langadapt.train import sharding

    assert sharding.deepspeed_requested() and not sharding.fsdp_requested()
    plugin = sharding.cpu_plugins()["deepspeed_plugin"]
    assert isinstance(plugin, DeepSpeedPlugin) and plugin.zero_stage == 2
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert ds["zero_optimization"]["offload_param"]["device"] == "none"
    assert ds.get(precision, {}).get("enabled") is True
    other = {"fp16": "bf16", "bf16": "fp16"}[precision]
    assert not ds.get(other, {}).get("enabled", False)
    # the recipe's settings reach DeepSpeed through the training core, not through the file
    assert ds["gradient_accumulation_steps"] == "auto" and ds["gradient_clipping"] == "auto"


def test_fsdp_config_builds_fsdp2_on_the_cpu_as_accelerate_builds_it_on_a_gpu(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    for k, v in launcher_env("fsdp.yaml").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WORLD_SIZE", "2")
    from langadapt.train import sharding

    ours = sharding.cpu_plugins()["fsdp_plugin"]
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"  # transformers reads it when loading
    theirs = FullyShardedDataParallelPlugin()  # what accelerate builds from the same environment on a GPU
    for field in ("fsdp_version", "auto_wrap_policy", "reshard_after_forward", "cpu_ram_efficient_loading",
                  "state_dict_type", "cpu_offload", "activation_checkpointing"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.fsdp_version == 2 and ours.cpu_ram_efficient_loading and ours.reshard_after_forward is True


def test_fsdp1_limits_are_one_line_errors(monkeypatch):
    from types import SimpleNamespace

    from langadapt.errors import LangadaptError
    from langadapt.train import sharding

    env = launcher_env("fsdp.yaml")
    env["FSDP_VERSION"] = "1"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LangadaptError, match=r"FSDP1 \(fsdp_version: 1\) does not run on CPU processes"):
        sharding.cpu_plugins()

    with pytest.raises(LangadaptError, match="precision bf16 under FSDP1 .* set fsdp_version: 2"):
        sharding.check_precision(SimpleNamespace(is_fsdp2=False), "bf16")
    sharding.check_precision(SimpleNamespace(is_fsdp2=False), "fp32")
    sharding.check_precision(SimpleNamespace(is_fsdp2=True), "bf16")
