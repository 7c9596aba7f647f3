"""The sft stage end to end on a tiny Llama: only LoRA and embedding/head tensors change."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_llama
from test_sft_data import tiny_tokenizer

from langadapt.recipe import parse_recipe

EN = [
    {"instruction": "What is two plus two?", "input": "", "output": "Four.", "category": "closed_qa"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue.", "category": "open_qa"},
    {"instruction": "Is this review positive?", "input": "Great food!", "output": "Yes.", "category": "sentiment"},
    {"instruction": "Pick A or B.", "input": "A) one B) two", "output": "A", "category": "multiple_choice"},
    {"instruction": "Broken record with no output"},
] * 3
FA = [
    {"instruction": "پایتخت ایران کجاست؟", "input": "", "output": "تهران است.", "category": "open_qa"},
    {"instruction": "دو به علاوه دو چند می‌شود؟", "input": "", "output": "چهار.", "category": "closed_qa"},
    {"instruction": "این نظر مثبت است؟", "input": "غذا عالی بود", "output": "بله.", "category": "sentiment"},
] * 3
PAIRS = [("امروز هوا خوب است.", "The weather is nice today."), ("من چای می‌نوشم.", "I drink tea.")] * 6


@pytest.fixture
def workspace(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(vocab_size=len(tok))
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    (tmp_path / "en.json").write_text(json.dumps(EN), encoding="utf-8")
    (tmp_path / "fa.json").write_text(json.dumps(FA, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "pairs.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS), encoding="utf-8")
    (tmp_path / "held_fa.txt").write_text("امروز هوا خوب است.\nمن چای می‌نوشم.\n", encoding="utf-8")
    return tmp_path


def recipe_for(ws, **sft):
    settings = {"start_from": "base", "max_steps": 3, "batch_size": 2, "seq_len": 64, "lr": 1e-2,
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "samples": 2, "sample_max_new_tokens": 4,
                "translation_share": 0.24, **sft}
    recipe = parse_recipe({
        "name": "t", "base_model": str(ws / "base"), "output_dir": str(ws / "runs"),
        "data": {
            "instructions": [{"name": "en", "format": "alpaca", "path": str(ws / "en.json"), "language": "en"},
                             {"name": "fa", "format": "alpaca", "path": str(ws / "fa.json"), "language": "fa"}],
            "parallel": [{"name": "p", "format": "tsv", "path": str(ws / "pairs.tsv")}],
            "heldout": {"target": str(ws / "held_fa.txt")},
        },
        "sft": settings,
    })
    return recipe


def original_state(ws):
    from safetensors.torch import load_file

    return load_file(str(ws / "base" / "model.safetensors"))


def test_sft_trains_only_lora_and_embeddings(workspace):
    import torch

    from langadapt.models import load_model
    from langadapt.run import run_stage

    recipe = recipe_for(workspace)
    summary = run_stage(recipe, "sft", resume=False)
    out = workspace / "runs" / "t" / "sft"
    assert summary["output"] == "adapter" and summary["steps"] == 3

    mix = json.loads((out / "mix.json").read_text(encoding="utf-8"))
    assert mix["sources"]["en"]["skipped"] == {"missing field 'output'": 3}
    assert mix["held_out"] == {"multiple_choice": 3, "sentiment": 6}
    rows = [json.loads(line) for line in (out / "mix.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not [r for r in rows if r["task"] in ("sentiment", "multiple_choice")]
    assert sum(r["source"] == "translation:p" for r in rows) == mix["translation"]["count"] > 0

    before = original_state(workspace)
    tuned = load_model(str(out / "adapter"))
    changed, lora_b = set(), []
    for name, p in tuned.named_parameters():
        if "lora_" in name:
            if "lora_B" in name:
                lora_b.append(float(p.abs().sum()))
            continue
        key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        if not torch.equal(p.detach(), before[key]):
            changed.add(key)
    assert changed == {"model.embed_tokens.weight"}  # tied head: one tensor
    assert lora_b and all(v > 0 for v in lora_b)

    samples = json.loads((out / "samples.json").read_text(encoding="utf-8"))
    assert [s["language"] for s in samples] == ["fa", "en"] and all("answer" in s for s in samples)
    assert json.loads((out / "bpc.json").read_text())["target"]["sft"]["end"] > 0


def test_sft_without_lora_trains_embeddings_and_head_only(workspace):
    import torch

    from langadapt.models import load_model
    from langadapt.run import run_stage

    recipe = recipe_for(workspace, lora=None, translation_share=0.0, target_instructions=False, samples=0)
    summary = run_stage(recipe, "sft", resume=False)
    out = workspace / "runs" / "t" / "sft"
    assert summary["output"] == "model" and not (out / "adapter").exists()
    assert summary["instructions_by_language"] == {"en": 6}
    before = original_state(workspace)
    tuned = load_model(str(out / "model"))
    changed = {n for n, p in tuned.state_dict().items() if n in before and not torch.equal(p, before[n])}
    assert changed == {"model.embed_tokens.weight"}


@pytest.mark.parametrize("keep_base", [False, True])
def test_sft_from_a_pretrain_adapter_merges_it_and_trains_a_fresh_lora(workspace, keep_base):
    import torch
    from peft import LoraConfig, get_peft_model

    from langadapt.models import adapter_base, load_model
    from langadapt.run import StageContext
    from langadapt.sft.stage import run

    # A stand-in for the pretrain stage's output: a LoRA adapter with non-zero B on the tiny base.
    base = load_model(str(workspace / "base"))
    pre = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    for n, p in pre.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    recipe = recipe_for(workspace, start_from="pretrain", translation_share=0.0, samples=1, keep_base=keep_base)
    pre.save_pretrained(recipe.run_dir / "pretrain" / "adapter")
    expected = pre.merge_and_unload().state_dict()

    out = recipe.run_dir / "sft"
    out.mkdir(parents=True)
    summary = run(StageContext(recipe=recipe, stage="sft", out_dir=out))
    assert summary["start_from"] == "pretrain" and summary["output"] == "adapter"
    assert not (out / "checkpoints").exists()  # adapter/ holds the result
    tuned = load_model(str(out / "adapter"))
    assert sum("lora_A" in n for n, _ in tuned.named_parameters()) == 2 * 7  # LoRA on every linear layer
    if keep_base:  # the merged starting point kept beside the adapter, which names it as its base
        assert adapter_base(out / "adapter") == str((out / "base").resolve())
        merged = load_model(str(out / "base")).state_dict()
        assert all(torch.equal(merged[k], v) for k, v in expected.items())
    else:  # no merged copy: the adapter holds pretrain's LoRA (rank 2) and its own (rank 4) on pretrain's base
        assert not (out / "base").exists()
        assert adapter_base(out / "adapter") == str((workspace / "base").resolve())
        assert tuned.peft_config["default"].r == 2 + 4
