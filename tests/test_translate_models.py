"""Translating with transformers models: a tiny encoder-decoder and a tiny chat Llama built in the
test (random weights: the translations are nonsense, the mechanics are what is checked)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import tiny_llama

from langadapt.recipe import load_recipe
from langadapt.run import run_stage
from langadapt.translate.translators import CausalTranslator, Seq2SeqTranslator

CHAT = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
TEXTS = ["Good morning.", "The weather is lovely today, let's have lunch in the yard.", "Add [[0]] and [[1]].",
         "List three fruits people eat in the summer, please."]


def tiny_tokenizer(*, chat: bool, languages: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer trained here on a few lines of English and Persian."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>", *languages],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 4 + ["امروز هوا خوب است و بچه‌ها در حیاط بازی می‌کنند."] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=list(languages), chat_template=CHAT if chat else None)


def tiny_seq2seq(vocab_size: int):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=4, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    config.tie_word_embeddings = False  # a tied random model echoes its last token (the constructor ignores the kwarg)
    return T5ForConditionalGeneration(config).eval()


def test_causal_translator_prompts_with_the_chat_template_and_batches_without_changing_results():
    tok = tiny_tokenizer(chat=True)
    model = tiny_llama(vocab_size=len(tok), tied=False)  # untied: a tied random model just echoes its last token
    batched = CausalTranslator(model, tok, source_name="English", target_name="Persian", batch_size=4,
                               max_new_tokens=6, label="tiny")
    prompt = batched.prompt("Add [[0]] and [[1]].")
    assert prompt.startswith("<s>user\nTranslate the following text from English to Persian.")
    assert "[[0]] unchanged" in prompt and prompt.endswith("<s>assistant\n")
    one_by_one = CausalTranslator(model, tok, source_name="English", target_name="Persian", batch_size=1,
                                  max_new_tokens=6, label="tiny")
    # Left padding and the attention mask make a padded batch decode exactly as each text alone.
    out = batched.translate(TEXTS)
    assert all(out) and out == one_by_one.translate(TEXTS)
    assert batched.calls == len(TEXTS)


def test_seq2seq_translator_forces_the_target_language_token_and_batches_without_changing_results():
    tok = tiny_tokenizer(chat=False, languages=("eng_Latn", "pes_Arab"))
    model = tiny_seq2seq(len(tok))
    batched = Seq2SeqTranslator(model, tok, source_code=None, target_code="pes_Arab", batch_size=4,
                                max_new_tokens=6, label="tiny")
    assert batched.forced_bos == tok.convert_tokens_to_ids("pes_Arab")
    one_by_one = Seq2SeqTranslator(model, tok, source_code=None, target_code="pes_Arab", batch_size=1,
                                   max_new_tokens=6, label="tiny")
    out = batched.translate(TEXTS)
    assert all(out) and out == one_by_one.translate(TEXTS)
    import torch

    enc = tok(TEXTS[:1], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=3, forced_bos_token_id=batched.forced_bos, do_sample=False)
    assert out[0, 1].item() == batched.forced_bos  # what _generate asks generate() for is honoured

    from langadapt.errors import LangadaptError

    with pytest.raises(LangadaptError, match="no language token 'xx_Yyyy'"):
        Seq2SeqTranslator(model, tok, source_code=None, target_code="xx_Yyyy", batch_size=1, max_new_tokens=4, label="tiny")


def _recipe(tmp_path, base: str, translate: dict):
    records = [{"instruction": "Describe a quiet morning in the village.", "input": "", "output": "The sun rises slowly."},
               {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Sleep, walk and eat well."},
               {"instruction": "Correct the spelling: recieve", "input": "", "output": "receive"},
               {"instruction": "Nothing to answer"}]
    (tmp_path / "alpaca.json").write_text(json.dumps(records), encoding="utf-8")
    recipe = {"name": "t", "base_model": base, "output_dir": str(tmp_path / "runs"),
              "data": {"instructions": [{"name": "en", "format": "alpaca", "path": "alpaca.json", "language": "en"}]},
              "translate": {"batch_size": 2, "max_new_tokens": 8, **translate}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return load_recipe(path)


def _check_report(recipe, kind: str) -> None:
    report = json.loads((recipe.run_dir / "translate" / "report.json").read_text(encoding="utf-8"))
    src = report["sources"]["en"]
    assert report["translator"]["kind"] == kind and report["translator"]["texts_sent"] >= 4
    assert src["read"] == 4 and src["malformed"] == {"missing field 'output'": 1}
    assert src["translated"] == 2 and src["dropped"].get("english wording: spelling") == 1
    # Every translated record is either kept or dropped with a reason: nothing disappears.
    assert src["kept"] + sum(src["dropped"].values()) == src["read"] - 1
    assert (recipe.run_dir / "translate" / "instructions" / "en.jsonl").is_file()


def test_hf_translator_runs_a_local_seq2seq_model_folder(tmp_path):
    tok = tiny_tokenizer(chat=False, languages=("eng_Latn", "pes_Arab"))
    folder = tmp_path / "mt"
    tiny_seq2seq(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    recipe = _recipe(tmp_path, "smollm2-135m-instruct", {"translator": "hf", "model": str(folder),
                                                         "source_code": "eng_Latn", "target_code": "pes_Arab"})
    run_stage(recipe, "translate", resume=False)
    _check_report(recipe, "hf-seq2seq")


def test_stage_translator_uses_the_model_of_an_earlier_stage(tmp_path):
    tok = tiny_tokenizer(chat=True)
    base = tmp_path / "base"
    tiny_llama(vocab_size=len(tok), tied=False).save_pretrained(base)
    tok.save_pretrained(base)
    recipe = _recipe(tmp_path, str(base), {"translator": "stage", "stage": "base"})
    run_stage(recipe, "translate", resume=False)
    _check_report(recipe, "hf-causal")
