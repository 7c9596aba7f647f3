"""The throughput benchmark at toy size (langadapt must compute what the Trainer computes on the same
batches), its FLOPs arithmetic, and `plan --gpus`: memory per GPU under DDP, ZeRO-2 and FSDP."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO


def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toy_benchmark_langadapt_loss_agrees_with_the_trainer_fed_the_same_batches():
    results = bench().main(["--toy", "--variants", "a1,a2,b,bp", "--budget-s", "900"])
    by = {(r["stage"], r["variant"]): r for r in results}
    assert not [r for r in results if "error" in r], [r["error"] for r in results if "error" in r]
    for stage in ("align", "pretrain", "sft"):
        a1, a2, b, bp = (by[(stage, v)] for v in ("a1", "a2", "b", "bp"))
        assert a2["start_loss"] - a2["loss"] > 0.5  # training moved the loss, so agreement means something
        assert b["loss_vs"] == "a2" and b["loss_agrees"], (stage, b["loss_delta"], b["loss_tolerance"])
        assert bp["loss_vs"] == "a1" and bp["loss_agrees"], (stage, bp["loss_delta"], bp["loss_tolerance"])
        assert abs(b["loss_delta"]) < 1e-4 and abs(bp["loss_delta"]) < 1e-4  # fp32: rounding only
        # padded rows carry fewer real tokens per step than packed blocks; both are counted without padding
        assert a1["real_tokens_per_step"] < a2["real_tokens_per_step"] <= 4 * 64
        assert b["real_tokens_per_step"] == a2["real_tokens_per_step"]
        assert all(r["tokens_per_s"] > 0 and r["x_a2"] > 0 for r in (a1, a2, b, bp))


def test_flops_per_token_counts_forward_backward_and_trainable_matrices():
    from transformers import AutoModelForCausalLM

    from langadapt.recipe import LoraSettings
    from langadapt.train.freeze import apply_policy

    tt = bench()
    config = tt.model_config("toy")
    h, i, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    dense = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + vocab * h  # blocks + the (tied) head
    attention = 12 * layers * h * 64
    with torch.device("meta"):
        align, _ = apply_policy(AutoModelForCausalLM.from_config(config), embeddings="all")
    assert tt.flops_per_token(align, config, 64) == 4 * dense + 2 * vocab * h + attention
    with torch.device("meta"):
        lora_model, counts = apply_policy(AutoModelForCausalLM.from_config(config), embeddings="all",
                                          lora=LoraSettings(r=8, alpha=32, dropout=0.0))
    lora = counts.trainable - vocab * h
    assert tt.flops_per_token(lora_model, config, 64) == 4 * dense + 2 * vocab * h + 6 * lora + attention


def test_benchmark_model_configs_are_smollm2_and_a_1b_llama():
    from transformers import AutoModelForCausalLM

    tt = bench()
    small = tt.model_config("smollm2-135m")
    assert (small.hidden_size, small.num_hidden_layers, small.vocab_size, small.tie_word_embeddings) == (576, 30, 49152, True)
    with torch.device("meta"):
        n_small = sum(p.numel() for p in AutoModelForCausalLM.from_config(small).parameters())
        n_big = sum(p.numel() for p in AutoModelForCausalLM.from_config(tt.model_config("llama-1.1b")).parameters())
    assert n_small == 134_515_008  # SmolLM2-135M's parameter count (docs/SPEC.md)
    assert 1.0e9 < n_big < 1.3e9


# --------------------------------------------------------------------------- plan --gpus


def test_activation_estimate_matches_the_tensors_a_llama_block_saves():
    """plan's per-block formula against saved-tensor bytes of a real forward (bf16 autocast, SDPA)."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    from langadapt.plan import activation_estimate
    from langadapt.recipe import LoraSettings
    from langadapt.train.freeze import apply_policy

    config = LlamaConfig(hidden_size=96, intermediate_size=320, num_attention_heads=6, num_key_value_heads=2,
                         vocab_size=500, max_position_embeddings=256)

    def saved(layers: int, tokens: int, lora: bool) -> int:
        cfg = copy.deepcopy(config)
        cfg.num_hidden_layers = layers
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model, _ = apply_policy(model, embeddings="all", lora=LoraSettings(r=8, alpha=32, dropout=0.0) if lora else None)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        seen = {}

        def pack(t):
            seen[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)] = t.numel() * t.element_size()
            return t

        ids = torch.randint(3, 500, (1, tokens))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, use_cache=False)
        return sum(seen.values())

    settings = SimpleNamespace(batch_size=1, seq_len=1, gradient_checkpointing=False, fused_loss=True, loss_chunk=1)
    for lora in (False, True):
        # bytes per token of one more block: differences over blocks and over tokens drop the weights
        per_block = ((saved(2, 128, lora) - saved(1, 128, lora)) - (saved(2, 64, lora) - saved(1, 64, lora))) / 64
        cfg = copy.deepcopy(config)
        cfg.num_hidden_layers = 1
        estimate = activation_estimate(cfg, settings, lora=lora, precision="bf16")["blocks"]
        assert estimate == pytest.approx(per_block, rel=0.1), (lora, estimate, per_block)


def test_memory_per_gpu_divides_what_each_configuration_shards(tmp_path):
    from test_plan import plan_for

    from langadapt.models import load_config
    from langadapt.plan import per_gpu_memory

    _, plans = plan_for(tmp_path, tied=False)
    config = load_config("x/y", str(tmp_path / "config-False.json"))
    pretrain = {p.stage: p for p in plans}["pretrain"]
    total, trainable = pretrain.counts.total, pretrain.counts.trainable
    one, eight = per_gpu_memory(pretrain, config, 1), per_gpu_memory(pretrain, config, 8)
    ddp = eight["ddp"]
    assert (ddp["weights"], ddp["gradients"], ddp["optimizer"]) == tuple(pretrain.memory[k] for k in
                                                                          ("weights", "gradients", "optimizer"))
    assert ddp["buffers"] == ddp["gradients"] and one["ddp"]["buffers"] == 0  # gradient buckets only with 2+ GPUs
    assert {k: v for k, v in eight["ddp"].items() if k != "buffers"} == {k: v for k, v in one["ddp"].items()
                                                                          if k != "buffers"}  # DDP shards nothing
    zero2 = eight["zero2"]
    assert zero2["weights"] == 2 * total  # the whole model in bf16
    assert (zero2["gradients"], zero2["optimizer"]) == (2 * trainable // 8, 12 * trainable // 8)
    fsdp = eight["fsdp"]
    assert fsdp["weights"] == pretrain.memory["weights"] // 8 and fsdp["optimizer"] == pretrain.memory["optimizer"] // 8
    assert fsdp["buffers"] == 2 * 2 * pretrain.block_params > 0
    # activations: per micro-batch, the same under every configuration; checkpointing and the fused loss cut them
    assert ddp["activations"] == zero2["activations"] == fsdp["activations"] > 0
    settings = pretrain.settings
    base = ddp["activations"]
    pretrain.settings = settings.model_copy(update={"gradient_checkpointing": True})
    assert per_gpu_memory(pretrain, config, 8)["ddp"]["activations"] < base
    pretrain.settings = settings.model_copy(update={"fused_loss": False, "loss_chunk": 16})
    assert per_gpu_memory(pretrain, config, 8)["ddp"]["activations"] > base


def test_plan_with_gpus_prints_memory_per_gpu_and_still_table_4():
    out = subprocess.run([sys.executable, "-m", "langadapt", "plan", str(REPO / "configs/paper-llama2-7b-fa.yaml"),
                          "--gpus", "8", "--gpu-memory", "80"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "220"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for number in ("6,884,372,480", "408,100,864", "6,904,360,960", "428,089,344"):
        assert number in text
    assert "memory per GPU with 8 GPUs" in text
    for name in ("DDP (multi-gpu-ddp.yaml)", "ZeRO-2 (deepspeed-zero2-*.yaml)", "FSDP full shard (fsdp.yaml)"):
        assert text.count(name) == 3  # align, pretrain, sft
    bad = subprocess.run([sys.executable, "-m", "langadapt", "plan", str(REPO / "configs/paper-llama2-7b-fa.yaml"),
                          "--gpus", "0"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert bad.returncode == 2 and "--gpus" in bad.stderr and "Traceback" not in bad.stderr
