"""Issue 16, disk: weight files written once (hard links between identical parts of model folders), an
adapter's tied head saved once, and sft's adapter saved on pretrain's own base holding both LoRAs
instead of a merged copy; every folder still loads with plain transformers or PEFT."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import tiny_llama


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_model_folder_links_the_parts_an_earlier_folder_holds_and_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from langadapt.weights import safetensors_files, save_pretrained_shared

    model = tiny_llama(128)
    assert save_pretrained_shared(model, tmp_path / "a") == {"body": "written", "embeddings": "written"}
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.5)  # what align changes; the blocks stay as they were
    done = save_pretrained_shared(model, tmp_path / "b", safetensors_files([tmp_path / "a"]))
    assert done == {"body": "linked", "embeddings": "written"}
    body_a, body_b = (os.stat(tmp_path / d / "model-body.safetensors") for d in "ab")
    assert body_a.st_ino == body_b.st_ino  # one file on disk
    ids = torch.randint(0, 128, (2, 9))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight  # still tied

    # a part that differs in a single value is written, never linked
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    assert save_pretrained_shared(model, tmp_path / "c", safetensors_files([tmp_path / "a", tmp_path / "b"]))["body"] == "written"
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "c"), ids), _logits(model, ids))


def test_an_untied_head_goes_with_the_embeddings_part(tmp_path):
    from safetensors import safe_open

    from langadapt.weights import save_pretrained_shared

    save_pretrained_shared(tiny_llama(64, tied=False), tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model-embeddings.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["lm_head.weight", "model.embed_tokens.weight"]


def _lora_model(base, *, r=2, alpha=8.0, targets=("q_proj", "v_proj"), seed=0, embeddings=True):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.3)
    if embeddings:
        emb = model.get_input_embeddings().weight
        emb.requires_grad_(True)
        with torch.no_grad():
            emb.add_(torch.randn_like(emb) * 0.1)
    return model


def test_an_adapter_with_a_tied_trained_head_stores_it_once_and_loads_with_plain_peft(tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from langadapt.train.finish import save_result

    tiny_llama(128).save_pretrained(tmp_path / "base")
    model = _lora_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"))
    folder = save_result(model, _tokenizer(), tmp_path / "stage", base=str(tmp_path / "base"))
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        assert [k for k in f.keys() if "lora_" not in k] == ["base_model.model.model.embed_tokens.weight"]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), folder)
    ids = torch.randint(0, 128, (2, 7))
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_a_result_links_the_identical_weights_of_its_last_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    from langadapt.train.checkpoint import save_model, save_trainable
    from langadapt.train.finish import save_result

    tiny_llama(128).save_pretrained(tmp_path / "base")
    model = _lora_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"))
    save_model(model, tmp_path / "ckpt")
    folder = save_result(model, _tokenizer(), tmp_path / "lora", base=str(tmp_path / "base"), reuse=[tmp_path / "ckpt"])
    assert os.stat(folder / "adapter_model.safetensors").st_ino == os.stat(tmp_path / "ckpt" / "adapter_model.safetensors").st_ino

    plain = tiny_llama(128)
    plain.get_input_embeddings().weight.requires_grad_(True)
    for n, p in plain.named_parameters():
        p.requires_grad_("embed_tokens" in n)
    save_trainable(plain, tmp_path / "ckpt2")
    folder = save_result(plain, _tokenizer(), tmp_path / "full", reuse=[tmp_path / "ckpt2"])
    assert os.stat(folder / "model-embeddings.safetensors").st_ino == os.stat(tmp_path / "ckpt2" / "trainable.safetensors").st_ino
    # with training moving on after the checkpoint, the result is written
    with torch.no_grad():
        plain.get_input_embeddings().weight[3] += 1
    folder = save_result(plain, _tokenizer(), tmp_path / "full2", reuse=[tmp_path / "ckpt2"])
    assert os.stat(folder / "model-embeddings.safetensors").st_nlink == 1
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.equal(loaded.get_input_embeddings().weight, plain.get_input_embeddings().weight)


def _tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(128)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                   eos_token="t2", pad_token="t2")


@pytest.mark.parametrize("second", [
    {"r": 4, "alpha": 16.0, "targets": ("q_proj", "v_proj")},  # same scale
    {"r": 3, "alpha": 4.0, "targets": ("q_proj", "k_proj", "gate_proj", "down_proj")},  # other scale and layers
])
def test_a_lora_trained_on_a_merged_adapter_is_saved_on_its_base_holding_both(tmp_path, second):
    """sft's adapter without a merged copy: loaded on pretrain's base with plain PEFT, it is the model sft
    trained (merged start + its LoRA), to float rounding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from langadapt.models import adapter_base
    from langadapt.train.adapters import combine_reason
    from langadapt.train.finish import save_result

    tiny_llama(128).save_pretrained(tmp_path / "align")
    first = _lora_model(AutoModelForCausalLM.from_pretrained(tmp_path / "align"), seed=1)
    pretrain = save_result(first, _tokenizer(), tmp_path / "pretrain", base=str(tmp_path / "align"))
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "align"), pretrain).merge_and_unload()
    sft = _lora_model(merged, seed=2, **second)
    assert combine_reason(pretrain, sft.peft_config["default"], "all") is None

    folder = save_result(sft, _tokenizer(), tmp_path / "sft", stacked_on=str(pretrain))
    assert adapter_base(folder) == str((tmp_path / "align").resolve())
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "align"), folder)
    assert loaded.peft_config["default"].r == 2 + second["r"]
    ids = torch.randint(0, 128, (3, 11))
    want = _logits(sft, ids)
    assert not torch.allclose(want, _logits(merged.__class__.from_pretrained(tmp_path / "align"), ids), atol=1e-3)
    torch.testing.assert_close(_logits(loaded, ids), want, rtol=0, atol=2e-5)


def test_loras_that_do_not_add_up_keep_the_merged_copy(tmp_path):
    import json

    from langadapt.recipe import LoraSettings
    from langadapt.train.adapters import combine_reason

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                              "use_dora": True}))
    assert "use_dora" in combine_reason(tmp_path, LoraSettings(), "all")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                              "trainable_token_indices": {"embed_tokens": [5]}}))
    assert "trainable_token_indices" in combine_reason(tmp_path, LoraSettings(), "all")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                              "bias": "none", "rank_pattern": {}}))
    assert combine_reason(tmp_path, LoraSettings(), "all") is None
    assert combine_reason(tmp_path, LoraSettings(), "new") is not None
    assert combine_reason(tmp_path, None, "all") is not None
