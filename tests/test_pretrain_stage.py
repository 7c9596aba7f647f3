"""The pretrain stage on a tiny Llama: only LoRA and embedding/head tensors change, the adapter
loads with PEFT alone, LoRA targets are found from the model (Llama and GPT-2), and the trainable
counts are the ones `langadapt plan` prints."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_llama
from test_align_stage import make_workspace, mark_done, recipe_for, tokenizers, weights

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_gpt2(vocab_size: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4))


def test_lora_targets_are_found_on_llama_and_gpt2():
    from langadapt.train.freeze import lora_targets

    assert lora_targets(tiny_llama()) == LLAMA_LINEAR
    assert lora_targets(tiny_gpt2()) == ["c_attn", "c_proj", "c_fc"]  # Conv1D layers; c_proj in attention and MLP


def test_lora_on_gpt2_trains_every_block_and_keeps_the_head_tied(tmp_path):
    from langadapt.recipe import LoraSettings
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy
    from test_train_core import documents, settings, tiny_tokenizer

    tok = tiny_tokenizer()
    model, counts = apply_policy(tiny_gpt2(), embeddings="all", lora=LoraSettings(r=2, alpha=8, dropout=0.0))
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    assert len(lora_b) == 2 * 4  # 2 blocks x (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
    r = train_model(model, tok, documents(tok), settings(max_steps=2), tmp_path, log=lambda m: None)
    after = dict(r.model.named_parameters())
    assert all(not torch.equal(after[n], v) for n, v in lora_b.items())
    base = r.model.get_base_model()
    assert base.lm_head.weight is base.transformer.wte.weight


def changed_tensors(trained, before: dict[str, torch.Tensor]) -> set[str]:
    changed = set()
    for name, p in trained.state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        if key in before and not torch.equal(p, before[key]):
            changed.add(key)
    return changed


@pytest.mark.parametrize("tied", [True, False])
def test_pretrain_changes_only_lora_and_embeddings_and_the_adapter_loads_with_peft_alone(tmp_path, tied):
    from peft import AutoPeftModelForCausalLM

    from langadapt.models import load_model
    from langadapt.run import run_stage

    ws = make_workspace(tmp_path, tied=tied)
    recipe = recipe_for(ws, stages=("pretrain",))
    recipe.pretrain.start_from = "tokenizer"
    mark_done(recipe, "clean", "tokenizer")
    summary = run_stage(recipe, "pretrain", resume=False)
    out = ws / "runs" / "t" / "pretrain"
    adapter = out / "adapter"
    assert summary["lora_targets"] == LLAMA_LINEAR
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((ws / "runs" / "t" / "tokenizer" / "model").resolve())
    assert sorted(cfg["target_modules"]) == sorted(LLAMA_LINEAR)
    assert (adapter / "tokenizer.json").is_file() and not (out / "checkpoints").exists()

    before = weights(ws / "runs" / "t" / "tokenizer" / "model")
    ours = load_model(str(adapter))
    expected = {"model.embed_tokens.weight"} | (set() if tied else {"lm_head.weight"})
    assert changed_tensors(ours, before) == expected
    lora_b = [float(p.abs().sum()) for n, p in ours.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 2 * len(LLAMA_LINEAR) and all(v > 0 for v in lora_b)
    base = ours.get_base_model()
    assert (base.lm_head.weight is base.model.embed_tokens.weight) == tied

    plain = AutoPeftModelForCausalLM.from_pretrained(str(adapter))  # PEFT alone, no langadapt
    ids = torch.tensor([[1, 5, 40, 41, 7, 2]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, ours(input_ids=ids).logits)
    assert summary["bpc"]["target"]["end"] < summary["bpc"]["target"]["start"]


def test_pretrain_new_rows_only_keeps_old_rows_and_starts_from_align(tmp_path):
    from langadapt.models import load_model
    from langadapt.run import StageContext
    from langadapt.align.stage import run as align
    from langadapt.pretrain.stage import run as pretrain

    ws = make_workspace(tmp_path, tied=True)
    recipe = recipe_for(ws, rows="new", stages=("align", "pretrain"))
    run_dir = ws / "runs" / "t"
    align(StageContext(recipe=recipe, stage="align", out_dir=run_dir / "align"))
    pretrain(StageContext(recipe=recipe, stage="pretrain", out_dir=run_dir / "pretrain"))
    before = weights(run_dir / "align" / "model")
    tuned = load_model(str(run_dir / "pretrain" / "adapter")).merge_and_unload()
    key, rows = "model.embed_tokens.weight", len(tokenizers()[0])
    emb = tuned.state_dict()[key]
    assert torch.equal(emb[:rows], before[key][:rows])
    assert not torch.equal(emb[rows:], before[key][rows:])


@pytest.mark.parametrize("rows", ["all", "new"])
def test_trainable_counts_equal_plan(tmp_path, rows):
    from langadapt.models import load_config, load_model
    from langadapt.plan import make_plan
    from langadapt.train.finish import base_vocab_of
    from langadapt.train.freeze import apply_policy, stage_policy

    ws = make_workspace(tmp_path, tied=False)
    recipe = recipe_for(ws, rows=rows, stages=("align", "pretrain"))
    mark_done(recipe, "clean", "tokenizer")
    _, plans = make_plan(recipe, load_config(str(ws / "base")))
    planned = {p.stage: p.counts.trainable for p in plans}
    start = str(ws / "runs" / "t" / "tokenizer" / "model")
    for stage in ("align", "pretrain"):
        model = load_model(start)
        embeddings, lora = stage_policy(recipe, stage, "monolingual" if stage == "align" else None)
        trained, counts = apply_policy(model, embeddings=embeddings, lora=lora,
                                       base_vocab=base_vocab_of(model, embeddings, start))
        actual = sum(p.numel() for p in trained.parameters() if p.requires_grad)
        assert counts.trainable == actual == planned[stage]
