"""`langadapt export --format gguf`: the merged model as one GGUF file, checked by a reader nobody here
wrote (transformers' own GGUF loader: weights and tokenizer). llama.cpp itself checks the same files
in bench/gguf_check.py, which needs a native build too slow for this suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_export import logits_of, make_run
from test_tokenizer import EN, ENGLISH_PROBES, FA, MIXED, byte_level_base, persian_sp, sentencepiece_base  # noqa: F401 (fixture)

from conftest import tiny_llama

LINES = FA + ENGLISH_PROBES + MIXED


def gguf_fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    fields["tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return fields


def read_back(folder: Path):
    """Model and tokenizer as transformers reads the GGUF file in ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = next(folder.glob("*.gguf")).name
    return (AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval(),
            AutoTokenizer.from_pretrained(folder, gguf_file=name))


def sharpen(model, scale: float = 8.0):
    """Large query/key weights, so attention patterns (and a wrong rotary layout) move the logits."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(scale)
    return model


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory):
    """A run with an sft adapter (LoRA merged on export) and its expected logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("gguf")
    run, adapter = make_run(root, tied=False)
    base = sharpen(AutoModelForCausalLM.from_pretrained(run / "align" / "model"))
    base.save_pretrained(run / "align" / "model")
    tok = AutoTokenizer.from_pretrained(adapter)
    expected = logits_of(PeftModel.from_pretrained(base, adapter).eval(), tok)
    return run, tok, expected


def test_langadapt_loads_a_gguf_as_transformers_does_parsing_it_once(gguf_run, monkeypatch):
    """models.load_model / load_tokenizer parse a GGUF file's metadata once per load (transformers alone:
    twice, and a tensor-name map per module); the loaded weights, config and tokenizer are the same."""
    import gguf
    import torch

    from langadapt.models import load_model, load_tokenizer

    run, tok, _ = gguf_run
    out = export_gguf_once(run)
    reference, reference_tok = read_back(out)
    parsed, maps = [], []
    reader_type, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: parsed.append(a) or reader_type(*a, **k))
    monkeypatch.setattr(gguf, "get_tensor_name_map", lambda *a: maps.append(a) or name_map(*a))
    gguf_file = next(out.glob("*.gguf"))
    model = load_model(gguf_file)
    assert len(parsed) == 1 and len(maps) == 1, (len(parsed), len(maps))
    loaded_tok = load_tokenizer(gguf_file)
    assert len(parsed) == 2
    assert gguf.GGUFReader is not reader_type and gguf.GGUFReader.__name__ == "<lambda>"  # put back after each load
    a, b = model.state_dict(), reference.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = {k: v for k, v in reference.config.to_dict().items() if k != "quantization_config"}  # load_model drops it
    assert model.config.to_dict() == plain
    assert loaded_tok.get_vocab() == reference_tok.get_vocab()


def export_gguf_once(run):
    from langadapt.serve.export import export_model

    out = run / "export" / "sft-gguf"
    if not list(out.glob("*-f32.gguf")):
        export_model(str(run), stage="sft", fmt="gguf", quant="f32", force=True, log=lambda m: None)
    return out


@pytest.mark.parametrize("quant,tolerance", [("f32", 1e-4), ("f16", 2e-2)])
def test_gguf_export_gives_the_merged_models_logits_in_transformers(gguf_run, quant, tolerance):
    from langadapt.serve.export import export_model

    run, tok, expected = gguf_run
    out = export_model(str(run), stage="sft", fmt="gguf", quant=quant, force=True, log=lambda m: None)
    assert out == run / "export" / "sft-gguf"
    assert [p.name for p in out.glob("*.gguf")] == [f"demo-sft-{quant}.gguf"]
    model, gguf_tok = read_back(out)
    got = logits_of(model, tok)
    assert (got - expected).abs().max().item() < tolerance * max(1.0, expected.abs().max().item())
    assert expected.abs().max().item() > 1.0, "logits big enough for the tolerance to mean something"
    for line in LINES:
        assert gguf_tok(line, add_special_tokens=False)["input_ids"] == tok(line, add_special_tokens=False)["input_ids"]


def test_the_rotary_reordering_is_what_makes_llama_logits_agree(gguf_run, tmp_path, monkeypatch):
    """Without llama.cpp's query/key row order, transformers' reader (which undoes it) gets other logits."""
    from langadapt.serve import gguf as gguf_mod
    from langadapt.serve.export import export_model

    run, tok, expected = gguf_run
    monkeypatch.setitem(gguf_mod.ARCHITECTURES, "LlamaForCausalLM",
                        gguf_mod.Arch("LLAMA", permute_qk=False, write_vocab_size=True))
    out = export_model(str(run), stage="sft", out=tmp_path / "plain", fmt="gguf", quant="f32", log=lambda m: None)
    got = logits_of(read_back(out)[0], tok)
    assert (got - expected).abs().max().item() > 0.05


def test_q8_0_is_about_half_of_f16_and_close(gguf_run):
    import gguf

    from langadapt.serve.export import export_model

    run, tok, expected = gguf_run
    sizes = {}
    for quant in ("f16", "q8_0"):
        out = export_model(str(run), stage="sft", fmt="gguf", quant=quant, force=True,
                           out=run / "export" / quant, log=lambda m: None)
        sizes[quant] = next(out.glob("*.gguf")).stat().st_size
    fields = gguf_fields(next((run / "export" / "q8_0").glob("*.gguf")))
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert fields["tensors"]["blk.0.attn_q.weight"] == "Q8_0"
    assert fields["tensors"]["blk.0.attn_norm.weight"] == "F32"
    assert sizes["q8_0"] < 0.6 * sizes["f16"]
    got = logits_of(read_back(run / "export" / "q8_0")[0], tok)
    assert (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gguf_metadata_is_what_llama_cpp_reads(tmp_path, tied):
    from langadapt.serve.export import export_model

    run, adapter = make_run(tmp_path, tied=tied)
    out = export_model(str(run), stage="sft", fmt="gguf", quant="f16", log=lambda m: None)
    f = gguf_fields(next(out.glob("*.gguf")))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter)
    assert f["general.architecture"] == "llama"
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert len(f["tokenizer.ggml.tokens"]) == f["llama.vocab_size"] == len(tok)
    assert f["tokenizer.ggml.tokens"][2] == "<|im_end|>" and f["tokenizer.ggml.token_type"][2] == 3  # control
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id == 2
    assert f["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert f["tokenizer.ggml.add_bos_token"] is False  # this tokenizer adds no bos, and llama.cpp must not either
    assert f["tokenizer.chat_template"] == tok.chat_template
    assert f["llama.attention.head_count_kv"] == 2 and f["llama.rope.freq_base"] == 10000.0
    assert ("output.weight" in f["tensors"]) is not tied  # tied: llama.cpp reuses token_embd
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "- gguf" in card and "library_name" not in card
    assert "llama-cli -m demo-sft-f16.gguf" in card and "FROM ./demo-sft-f16.gguf" in card


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_llama_cpp_architectures_round_trip(tmp_path, arch):
    import torch
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from test_serve import tiny_tokenizer

    from langadapt.serve.gguf import write_gguf

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
    model = (Qwen2ForCausalLM(Qwen2Config(**kw, tie_word_embeddings=True)) if arch == "qwen2"
             else MistralForCausalLM(MistralConfig(**kw, tie_word_embeddings=False)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # the biases of Qwen2's q/k/v too, which start at zero
    report = write_gguf(model, tok, tmp_path / "m.gguf", quant="f32", name="tiny", log=lambda m: None)
    assert report.arch == ("qwen2" if arch == "qwen2" else "llama")
    got = logits_of(read_back(tmp_path)[0], tok)
    expected = logits_of(model.eval(), tok)
    assert (got - expected).abs().max().item() < 1e-4


# ---------------------------------------------------------------------------- tokenizers


def merged_tokenizer(tmp_path, persian_sp, base, *, extend: bool = True, normalize: bool = False):
    from langadapt.clean.normalize import char_map
    from langadapt.tokenizer.merge import add_normalizer, merge_pieces, read_sentencepiece, target_characters
    from langadapt.tokenizer.stage import save_tokenizer

    pieces = read_sentencepiece(persian_sp)
    merged = merge_pieces(json.loads(base.backend_tokenizer.to_str()), pieces, extend_pre_tokenizer=extend)
    if normalize:  # as the tokenizer stage does with tokenizer.normalize (its default)
        add_normalizer(merged.tokenizer_json, char_map("fa"), target_characters(pieces)[0])
    out = tmp_path / f"merged-{extend}-{normalize}"
    out.mkdir()
    return save_tokenizer(base, merged.tokenizer_json, out, pad_token=None, pad_id=None)


def export_tokenizer(tok, folder: Path):
    from langadapt.serve.gguf import write_gguf

    folder.mkdir()
    return write_gguf(tiny_llama(len(tok)), tok, folder / "t.gguf", quant="f32", name="t", log=lambda m: None)


@pytest.mark.parametrize("kind", ["gpt2", "llama3"])
def test_a_merged_byte_level_tokenizer_with_the_base_pre_tokenizer_survives_exactly(tmp_path, persian_sp, kind):
    tok = merged_tokenizer(tmp_path, persian_sp, byte_level_base(kind), extend=False)
    report = export_tokenizer(tok, tmp_path / "g")
    assert report.pre == ("gpt-2" if kind == "gpt2" else "llama-bpe") and report.dropped_word_pattern is None
    _, gguf_tok = read_back(tmp_path / "g")
    for line in LINES:
        assert gguf_tok(line, add_special_tokens=False)["input_ids"] == tok(line, add_special_tokens=False)["input_ids"]


def test_the_target_word_pre_tokenizer_is_named_as_the_base_and_its_loss_predicted(tmp_path, persian_sp):
    """llama.cpp (and transformers' GGUF reader) split Persian words at the ZWNJ again; the
    emulation says which lines change, and English never does."""
    from langadapt.serve.gguf import llama_cpp_tokenizer, tokenizer_drift

    tok = merged_tokenizer(tmp_path, persian_sp, byte_level_base("gpt2"))
    report = export_tokenizer(tok, tmp_path / "g")
    assert report.pre == "gpt-2" and report.dropped_word_pattern.startswith(" ?[")
    _, gguf_tok = read_back(tmp_path / "g")
    emulated = llama_cpp_tokenizer(json.loads(tok.backend_tokenizer.to_str()))
    for line in LINES:
        assert gguf_tok(line, add_special_tokens=False)["input_ids"] == emulated.encode(line, add_special_tokens=False).ids
    for line in ENGLISH_PROBES:
        assert emulated.encode(line, add_special_tokens=False).ids == tok(line, add_special_tokens=False)["input_ids"]
    zwnj = [x for x in FA if "\u200c" in x]
    drift = tokenizer_drift(tok, zwnj)
    assert drift["differ"] == len(zwnj) and drift["tokens_llama_cpp"] > drift["tokens"]
    assert tokenizer_drift(tok, [x for x in FA if "\u200c" not in x])["differ"] == 0
    assert tokenizer_drift(tok, []) is None


def test_export_reports_what_llama_cpp_will_tokenize_differently(tmp_path, persian_sp):
    """A run whose tokenizer has the target-word pre-tokenizer: the log and the card say how many of
    the run's Persian sentences get other ids in llama.cpp."""
    from langadapt.serve.export import export_model

    tok = merged_tokenizer(tmp_path, persian_sp, byte_level_base("gpt2"))
    run = tmp_path / "runs" / "demo"
    tiny_llama(len(tok)).save_pretrained(run / "align" / "model")
    tok.save_pretrained(run / "align" / "model")
    (run / "clean" / "sentences").mkdir(parents=True)
    (run / "clean" / "sentences" / "part-0.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in FA), encoding="utf-8")
    logs: list[str] = []
    out = export_model(str(run), stage="align", fmt="gguf", log=logs.append)
    zwnj = sum("\u200c" in x for x in FA)
    note = next(m for m in logs if m.startswith("note:"))
    assert f"({zwnj} of {len(FA)} cleaned target lines get other ids than in training)" in note
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "**Tokenizer in llama.cpp.**" in card and f"{zwnj} of {len(FA)} cleaned target lines" in card


@pytest.mark.parametrize("form", ["model", "json"])
def test_a_merged_sentencepiece_tokenizer_is_written_with_scores_that_replay_its_merges(tmp_path, persian_sp, form):
    base = sentencepiece_base(tmp_path, form)
    tok = merged_tokenizer(tmp_path, persian_sp, base)
    report = export_tokenizer(tok, tmp_path / "g")
    assert report.tokenizer_model == "llama" and report.pre is None
    f = gguf_fields(tmp_path / "g" / "t.gguf")
    types = f["tokenizer.ggml.token_type"]
    assert types[f["tokenizer.ggml.tokens"].index("<0x0A>")] == 6  # byte
    assert f["tokenizer.ggml.add_space_prefix"] is True and f["tokenizer.ggml.add_bos_token"] is True
    _, gguf_tok = read_back(tmp_path / "g")
    assert [gguf_tok(x)["input_ids"] for x in FA + EN] == [tok(x)["input_ids"] for x in FA + EN]
    phrase = "کتاب‌های زیادی در کتابخانه"
    assert len(tok(phrase)["input_ids"]) < len(base(phrase)["input_ids"]), "the merged pieces are in use"


ARABIC_LETTERS = ["كتاب‌هاي زيادي در كتابخانه هست", "يك روز خوب", "ميخواهم به مدرسه بروم"]


@pytest.mark.parametrize("family", ["gpt2", "sentencepiece"])
def test_the_tokenizer_stage_character_rewrites_are_reported_as_lost_in_llama_cpp(tmp_path, persian_sp, family):
    """llama.cpp applies no tokenizer.json normalizer: text with Arabic yeh/kaf meets the base's pieces
    there. The report names the rewrites, the emulation (and transformers' GGUF reader, which builds
    its tokenizer from the file alone) agree, and text without those letters keeps its ids."""
    from langadapt.serve.gguf import llama_cpp_tokenizer, tokenizer_caveats, tokenizer_drift

    base = byte_level_base("gpt2") if family == "gpt2" else sentencepiece_base(tmp_path, "json")
    tok = merged_tokenizer(tmp_path, persian_sp, base, extend=False, normalize=True)
    assert tok("يك")["input_ids"] == tok("یک")["input_ids"], "the merged tokenizer rewrites Arabic letters"
    report = export_tokenizer(tok, tmp_path / "g")
    assert report.dropped_word_pattern is None and report.tokenizes_differently
    assert {"ي": "ی", "ك": "ک"}.items() <= report.dropped_rewrites.items()
    assert "ي\u2192ی" in tokenizer_caveats(report)[0]
    _, gguf_tok = read_back(tmp_path / "g")
    emulated = llama_cpp_tokenizer(json.loads(tok.backend_tokenizer.to_str()))
    special = family != "gpt2"  # the SentencePiece forms compare with their bos, as read_back's tokenizer adds it
    for line in ARABIC_LETTERS + FA + EN:
        assert gguf_tok(line, add_special_tokens=special)["input_ids"] == \
            emulated.encode(line, add_special_tokens=special).ids
    for line in FA + EN:
        assert gguf_tok(line, add_special_tokens=special)["input_ids"] == tok(line, add_special_tokens=special)["input_ids"]
    drift = tokenizer_drift(tok, ARABIC_LETTERS + FA)
    assert drift["differ"] == len(ARABIC_LETTERS) and drift["tokens_llama_cpp"] > drift["tokens"]


# ---------------------------------------------------------------------------- refusals


def test_unsupported_models_and_pre_tokenizers_are_refused_in_one_line(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    from test_serve import tiny_tokenizer

    from langadapt.errors import LangadaptError
    from langadapt.serve.gguf import write_gguf

    tok = tiny_tokenizer()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(LangadaptError, match="supports LlamaForCausalLM.*this model is GPT2LMHeadModel"):
        write_gguf(gpt2, tok, tmp_path / "x.gguf", log=lambda m: None)
    odd = json.loads(tok.backend_tokenizer.to_str())
    odd["pre_tokenizer"] = {"type": "Whitespace"}
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    odd_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(odd)), eos_token="<|im_end|>")
    with pytest.raises(LangadaptError, match="llama.cpp picks a byte-level pre-tokenizer by name"):
        write_gguf(tiny_llama(len(tok)), odd_tok, tmp_path / "x.gguf", log=lambda m: None)
    with pytest.raises(LangadaptError, match="--quant must be one of f32, f16, q8_0"):
        write_gguf(tiny_llama(len(tok)), tok, tmp_path / "x.gguf", quant="q4_k", log=lambda m: None)
    assert not (tmp_path / "x.gguf").exists()


def test_export_cli_writes_the_gguf_and_refuses_mixed_flags(tmp_path):
    run, _ = make_run(tmp_path, tied=True)
    cmd = [sys.executable, "-m", "langadapt", "export", str(run), "--stage", "sft"]
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    bad = subprocess.run(cmd + ["--format", "gguf", "--dtype", "float16"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "--dtype is for --format hf" in bad.stderr
    ok = subprocess.run(cmd + ["--format", "gguf", "--quant", "q8_0"], capture_output=True, text=True, env=env,
                        timeout=180)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (run / "export" / "sft-gguf" / "demo-sft-q8_0.gguf").is_file()
    assert "llama-cli -m" in ok.stderr

    from langadapt.serve.export import EXPORT_MARKER, export_model

    folder = run / "export" / "sft-gguf"  # an earlier GGUF export is replaced with --force, whole
    assert json.loads((folder / EXPORT_MARKER).read_text())["quant"] == "q8_0"
    export_model(str(run), stage="sft", fmt="gguf", quant="f16", force=True, log=lambda m: None)
    assert {p.name for p in folder.iterdir()} == {"README.md", "demo-sft-f16.gguf", EXPORT_MARKER}


@pytest.mark.slow
def test_smollm2_exports_to_gguf_and_reads_back(smollm2, tmp_path):
    """The real demo base: 30 layers, 9 heads / 3 kv heads, tied, 49,152 tokens."""
    import torch

    from langadapt.serve.gguf import write_gguf

    model, tok = smollm2
    report = write_gguf(model, tok, tmp_path / "smollm2-f16.gguf", quant="f16", name="smollm2", log=lambda m: None)
    assert (report.arch, report.pre, report.tokens) == ("llama", "gpt-2", 49152)
    back, back_tok = read_back(tmp_path)
    text = ["سلام، حال شما چطور است؟ کتاب‌ها را آوردم.", "The quick brown fox jumps over the lazy dog, 1234 times."]
    for t in text:
        assert back_tok(t)["input_ids"] == tok(t)["input_ids"]
    ids = tok(text[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = model(ids).logits, back(ids).logits
    assert (a - b).abs().max().item() < 0.05 * a.abs().max().item()
    assert bool((a.argmax(-1) == b.argmax(-1)).all())
