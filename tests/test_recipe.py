"""Recipe validation: every class of mistake is refused before work starts, as one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from langadapt.errors import RecipeError
from langadapt.recipe import load_recipe

BASE = """\
name: t
base_model: smollm2-135m-instruct
data:
  corpus:
    - {name: a, path: corpus.txt}
  parallel:
    - {name: p, format: tsv, path: pairs.tsv}
clean: {}
tokenizer: {new_pieces: 100}
align: {}
pretrain:
  lora: {r: 8}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "corpus.txt").write_text("یک جمله‌ی فارسی برای آزمون است.\n", encoding="utf-8")
    (tmp_path / "pairs.tsv").write_text("سلام دنیا\thello world\n", encoding="utf-8")
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def error_of(tmp_path: Path, text: str) -> RecipeError:
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(e.value), "a recipe error is one line"
    return e.value


def test_valid_recipe_parses_with_defaults(tmp_path):
    r = load_recipe(write(tmp_path, BASE))
    assert r.enabled_stages() == ["clean", "tokenizer", "align", "pretrain"]
    assert r.pretrain.lora.alpha == 32 and r.clean.lang_threshold == 0.70
    assert r.resolve("corpus.txt") == tmp_path / "corpus.txt"


def test_unknown_key_names_the_key_the_line_and_the_valid_keys(tmp_path):
    e = error_of(tmp_path, BASE.replace("lora: {r: 8}", "lora: {rank: 8}"))
    assert e.line == 12
    assert "unknown key 'pretrain.lora.rank'" in str(e) and "r, alpha, dropout, targets" in str(e)


def test_wrong_type_is_refused(tmp_path):
    e = error_of(tmp_path, BASE + "seed: many\n")
    assert "seed" in str(e) and "integer" in str(e) and e.line == 13


def test_lora_rank_zero_is_impossible(tmp_path):
    e = error_of(tmp_path, BASE.replace("lora: {r: 8}", "lora: {r: 0}"))
    assert "pretrain.lora.r" in str(e) and "greater than or equal to 1" in str(e)


def test_missing_input_file_is_named(tmp_path):
    e = error_of(tmp_path, BASE.replace("path: corpus.txt", "path: nowhere.txt"))
    assert "data.corpus.0.path" in str(e) and "nowhere.txt" in str(e) and e.line == 5


def test_stage_needing_a_disabled_stage_is_refused(tmp_path):
    e = error_of(tmp_path, BASE.replace("align: {}", "align: {enabled: false}"))
    assert "pretrain" in str(e) and "'align'" in str(e) and "disabled" in str(e)


def test_missing_required_key(tmp_path):
    e = error_of(tmp_path, BASE.replace("base_model: smollm2-135m-instruct\n", ""))
    assert "missing required key 'base_model'" in str(e)


def test_invalid_yaml_points_at_the_line(tmp_path):
    e = error_of(tmp_path, BASE + "eval: {tasks: [demo\n")
    assert "not valid YAML" in str(e)


def test_merged_vocab_smaller_than_base_is_refused(tmp_path):
    from langadapt.recipe import check_against_base

    r = load_recipe(write(tmp_path, BASE.replace("{new_pieces: 100}", "{new_pieces: 100, merged_vocab_size: 1000}")))
    with pytest.raises(RecipeError, match="smaller than the base vocabulary"):
        check_against_base(r, 49152)


def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    p = write(tmp_path, BASE.replace("lora: {r: 8}", "lora: {r: 0}"))
    out = subprocess.run([sys.executable, "-m", "langadapt", "run", str(p)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"error: {p}:12: pretrain.lora.r")


def test_shipped_recipes_parse():
    repo = Path(__file__).resolve().parents[1]
    for recipe in sorted((repo / "configs").glob("*.yaml")):
        load_recipe(recipe, check_files=recipe.name != "paper-llama2-7b-fa.yaml")


@pytest.mark.parametrize("name", ["demo.yaml", "paper-llama2-7b-fa.yaml"])
def test_shipped_recipes_are_valid(name):
    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "configs" / name, check_files=name == "demo.yaml")  # the paper's corpora are not shipped
    assert {"clean", "tokenizer", "align", "pretrain", "sft", "eval"} <= set(recipe.enabled_stages())
