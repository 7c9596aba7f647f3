"""`langadapt clean-up RUN` (issue 16): intermediate models go once later stages are complete, the last
model and what it loads on stay, and `langadapt run` makes a dropped model again only when a stage that
reads it has to run."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from langadapt import run as runmod, stages
from langadapt.recipe import load_recipe

CALLS: list[str] = []


def _folder(ctx, name: str, size: int, base: str | None = None):
    d = ctx.out_dir / name
    d.mkdir(exist_ok=True)
    if base is None:
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"\0" * size)
    else:
        (d / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        (d / "adapter_model.safetensors").write_bytes(b"\0" * size)


def fake_stage(ctx):
    CALLS.append(ctx.stage)
    if ctx.stage in ("tokenizer", "align"):
        _folder(ctx, "model", 50_000)
    elif ctx.stage in ("pretrain", "sft"):  # adapters on align's model, as sft saves its own without base/
        _folder(ctx, "adapter", 20_000, base=str((ctx.stage_dir("align") / "model").resolve()))
    return {}


@pytest.fixture
def recipe_file(tmp_path, monkeypatch):
    for s in ("clean", "tokenizer", "align", "pretrain", "sft"):
        monkeypatch.setitem(stages.BY_NAME, s, replace(stages.get(s), entry=f"{__name__}:fake_stage"))
    monkeypatch.setattr(runmod, "preflight", lambda recipe: None)
    CALLS.clear()
    (tmp_path / "c.txt").write_text("متن\n", encoding="utf-8")
    (tmp_path / "i.json").write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nbase_model: x/y\noutput_dir: %s\n"
                 "data: {corpus: [{name: c, path: c.txt}], instructions: [{name: i, format: alpaca, path: i.json, language: en}]}\n"
                 "clean: {}\ntokenizer: {}\nalign: {bilingual: {enabled: false}}\npretrain: {}\n"
                 "sft: {translation_share: 0.0, lr: 0.001}\n" % (tmp_path / "runs"))
    return p


def test_clean_up_keeps_the_last_model_and_its_base_and_run_makes_a_dropped_model_again(recipe_file):
    from langadapt.cleanup import clean_up, disk_usage

    recipe = load_recipe(recipe_file)
    runmod.run_recipe(recipe)
    root = recipe.run_dir
    before = disk_usage(root)
    lines = []
    assert clean_up(root, dry_run=True, log=lines.append) == 0
    assert (root / "tokenizer" / "model").is_dir()
    freed = clean_up(root, log=lines.append)
    assert not (root / "tokenizer" / "model").exists() and not (root / "pretrain" / "adapter").exists()
    assert (root / "align" / "model").is_dir() and (root / "sft" / "adapter").is_dir()  # sft loads on align
    assert freed == before - disk_usage(root) and freed >= 70_000
    marker = json.loads((root / "pretrain" / "COMPLETE.json").read_text())
    assert marker["dropped"] == ["adapter"] and len(marker["hash"]) == 64

    CALLS.clear()
    assert [r for _, r in runmod.run_recipe(load_recipe(recipe_file))] == ["skipped"] * 5
    assert CALLS == []
    with pytest.raises(Exception, match="clean-up"):
        runmod.run_stage(load_recipe(recipe_file), "sft", resume=False)

    # a changed sft reads pretrain's model: pretrain runs again first, the stages before it do not
    recipe_file.write_text(recipe_file.read_text().replace("lr: 0.001", "lr: 0.002"))
    runmod.run_recipe(load_recipe(recipe_file))
    assert CALLS == ["pretrain", "sft"]
    assert (root / "pretrain" / "adapter").is_dir()
    assert "dropped" not in json.loads((root / "pretrain" / "COMPLETE.json").read_text())


def test_clean_up_waits_for_unfinished_later_stages_and_honours_keep(recipe_file, tmp_path):
    from langadapt.cleanup import clean_up, plan
    from langadapt.errors import LangadaptError

    recipe = load_recipe(recipe_file)
    runmod.run_recipe(recipe)
    root = recipe.run_dir
    (root / "sft" / "COMPLETE.json").unlink()  # sft interrupted: its STARTED.json stays
    p = plan(root)
    assert p.drop == {} and p.keep["tokenizer"] == "a later stage is unfinished"
    runmod.run_recipe(recipe)
    clean_up(root, keep=("tokenizer",), log=lambda m: None)
    assert (root / "tokenizer" / "model").is_dir() and not (root / "pretrain" / "adapter").exists()
    with pytest.raises(LangadaptError, match="not a stage with a model"):
        plan(root, keep=("clean",))
