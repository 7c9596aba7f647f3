"""`langadapt export`: a stage's LoRA adapter merged into a plain transformers folder that loads
without langadapt and gives the same logits as base + adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import save_tiny_model, tiny_tokenizer


PROMPTS = ["سلام، حال شما چطور است؟", "Tell me a short story about a cat."]


def make_run(root: Path, *, tied: bool) -> tuple[Path, Path]:
    """A run folder shaped like the pipeline's: align/model (full model) and sft/adapter (LoRA + embeddings).

    The adapter's weights are perturbed as training would (LoRA B starts at zero, which would make
    merging trivially exact), and saved the way the training core saves it.
    """
    import torch
    from peft import PeftModel  # noqa: F401  (the adapter must be loadable by PEFT alone)
    from transformers import AutoModelForCausalLM

    from langadapt.recipe import LoraSettings
    from langadapt.train.freeze import apply_policy

    run = root / "runs" / "demo"
    base_dir = save_tiny_model(run / "align" / "model", tied=tied)
    (run / "align" / "COMPLETE.json").write_text(json.dumps({"summary": {"steps": 12, "tokens": 3072}}), encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model, _ = apply_policy(model, embeddings="all", lora=LoraSettings(r=4, alpha=16, dropout=0.0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    adapter = run / "sft" / "adapter"
    model.save_pretrained(adapter, save_embedding_layers=True)
    tiny_tokenizer().save_pretrained(adapter)
    return run, adapter


def logits_of(model, tok) -> "torch.Tensor":  # noqa: F821
    import torch

    ids = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_export_merges_lora_and_keeps_the_logits(tmp_path, tied):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from langadapt.serve.export import export_model

    run, adapter = make_run(tmp_path, tied=tied)
    out = export_model(str(run), stage="sft", log=lambda m: None)
    assert out == run / "export" / "sft"

    tok = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(run / "align" / "model")
    expected = logits_of(PeftModel.from_pretrained(base, adapter).eval(), tok)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    got = logits_of(merged, AutoTokenizer.from_pretrained(out))
    assert (got - expected).abs().max().item() < 1e-4
    # The adapter really changed the model (else the comparison above proves nothing).
    plain = logits_of(AutoModelForCausalLM.from_pretrained(run / "align" / "model").eval(), tok)
    assert (plain - expected).abs().max().item() > 1e-2
    cfg = json.loads((out / "config.json").read_text())
    assert "auto_map" not in cfg or cfg["auto_map"] is None
    assert not (out / "adapter_config.json").exists()
    assert cfg["tie_word_embeddings"] is tied


def test_exported_folder_loads_without_langadapt_or_peft(tmp_path):
    import torch
    from transformers import AutoTokenizer

    from langadapt.serve.export import export_model
    from langadapt.serve.generation import ChatModel

    run, adapter = make_run(tmp_path, tied=True)
    out = export_model(str(run / "sft"), log=lambda m: None)
    expected = logits_of(ChatModel.load(str(adapter)).model, AutoTokenizer.from_pretrained(adapter))
    torch.save(expected, tmp_path / "expected.pt")
    script = f"""
import sys
for name in ("langadapt", "peft"):
    sys.modules[name] = None  # importing either now fails
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(out)!r})
model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
ids = tok({PROMPTS!r}, return_tensors="pt", padding=True)
with torch.no_grad():
    got = model(**ids).logits
print((got - torch.load({str(tmp_path / 'expected.pt')!r})).abs().max().item())
print(tok.apply_chat_template([{{"role": "user", "content": "hi"}}], tokenize=False, add_generation_prompt=True))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert float(lines[0]) < 1e-4, "the merged model served by langadapt equals the exported one"
    assert "<|im_start|>assistant" in r.stdout, "the chat template travels with the tokenizer"


def test_model_card_lists_recipe_data_and_eval_table(tmp_path):
    from langadapt.serve.export import export_model

    run, _ = make_run(tmp_path, tied=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("یک جمله.\n" * 100, encoding="utf-8")
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(
        f"name: demo\nbase_model: smollm2-135m-instruct\noutput_dir: {tmp_path / 'runs'}\n"
        f"data:\n  corpus:\n    - {{name: news, type: news, path: {corpus}}}\n"
        "clean: {}\ntokenizer: {new_pieces: 100}\nalign: {bilingual: {enabled: false}}\n"
        "pretrain:\n  max_steps: 7\n  lora: {r: 4, alpha: 16}\nsft:\n  max_steps: 5\n", encoding="utf-8")
    (run / "eval").mkdir()
    rows = [{"model": "demo", "stage": st, "task": "sentiment", "language": "fa", "metric": "accuracy", "value": v, "n": 20}
            for st, v in (("base", 0.35), ("sft", 0.6))]
    (run / "eval" / "results.json").write_text(json.dumps(rows), encoding="utf-8")
    out = export_model(f"{recipe}:sft", log=lambda m: None)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    assert "- fa" in card and "library_name: transformers" in card
    assert "| pretrain | `max_steps=7`, `lora.r=4`, `lora.alpha=16.0` |" in card
    assert "| corpus | news | text | news |" in card and "KiB" in card
    assert "| align | steps=12, tokens=3,072 |" in card
    assert "| task | language | metric | base | sft |" in card
    assert "| sentiment | fa | accuracy | 0.35 | 0.60 |" in card


def test_export_refuses_unclear_or_existing_targets(tmp_path):
    from langadapt.errors import LangadaptError
    from langadapt.serve.export import export_model

    run, _ = make_run(tmp_path, tied=True)
    with pytest.raises(LangadaptError, match="choose the stage to export with --stage .*align, sft"):
        export_model(str(run), log=lambda m: None)
    with pytest.raises(LangadaptError, match="no adapter/ or model/"):
        export_model(str(run), stage="pretrain", log=lambda m: None)
    (run / "export" / "sft").mkdir(parents=True)
    with pytest.raises(LangadaptError, match="already exists"):
        export_model(str(run), stage="sft", log=lambda m: None)
    with pytest.raises(LangadaptError, match="--out"):
        export_model(str(run / "align" / "model"), log=lambda m: None)


def test_force_replaces_only_an_earlier_export_never_a_run_or_other_folder(tmp_path, monkeypatch):
    """Issue 17 item 1: --force into the run folder deleted the whole run; into any non-empty folder, its files."""
    from langadapt.errors import LangadaptError
    from langadapt.serve.export import EXPORT_MARKER, export_model

    run, adapter = make_run(tmp_path, tied=True)
    (run / "clean").mkdir()
    (run / "clean" / "COMPLETE.json").write_text("{}", encoding="utf-8")
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))

    with pytest.raises(LangadaptError, match="holds the model being exported"):
        export_model(str(run), stage="sft", out=run, force=True, log=lambda m: None)
    with pytest.raises(LangadaptError, match="holds the model being exported"):
        export_model(str(run), stage="sft", out=run.parent, force=True, log=lambda m: None)
    other = tmp_path / "elsewhere" / "runs"
    (other / "x" / "pretrain").mkdir(parents=True)
    (other / "x" / "pretrain" / "STARTED.json").write_text("{}", encoding="utf-8")
    for target in (run / "align", other / "x" / "pretrain", other / "x", other):  # stage, run, folder of runs
        with pytest.raises(LangadaptError, match="holds the outputs of a langadapt run"):
            export_model(str(run), stage="sft", out=target, force=True, log=lambda m: None)
    assert (other / "x" / "pretrain" / "STARTED.json").is_file()
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(LangadaptError, match=f"not an earlier langadapt export .no {EXPORT_MARKER}"):
        export_model(str(run), stage="sft", out=mine, force=True, log=lambda m: None)
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before

    # an earlier export is replaced, and a killed export's leftover beside it is removed
    out = export_model(str(run), stage="sft", out=tmp_path / "exported", log=lambda m: None)
    assert json.loads((out / EXPORT_MARKER).read_text())["stage"] == "sft"
    (tmp_path / ".tmp-exported-k1ll3d").mkdir()
    (out / "config.json").write_text("{}", encoding="utf-8")  # something to see replaced
    with pytest.raises(LangadaptError, match="already exists; use --force"):
        export_model(str(run), stage="sft", out=out, log=lambda m: None)
    export_model(str(run), stage="sft", out=out, force=True, log=lambda m: None)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert not (tmp_path / ".tmp-exported-k1ll3d").exists()
    # a folder made by an export but holding a folder since is not replaced either
    (out / "extra").mkdir()
    with pytest.raises(LangadaptError, match="not an earlier langadapt export"):
        export_model(str(run), stage="sft", out=out, force=True, log=lambda m: None)


def test_out_dot_is_a_one_line_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    from langadapt.cli import main

    run, _ = make_run(tmp_path, tied=True)
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    capsys.readouterr()
    for out in (".", ".."):
        assert main(["export", str(run), "--stage", "sft", "--out", out, "--force"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --out ") and "current folder" in err and len(err.splitlines()) == 1
    assert work.is_dir() and (run / "sft" / "adapter").is_dir()
