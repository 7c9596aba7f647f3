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


@pytest.mark.parametrize("old, new, message", [
    ("align: {}", "align: {monolingual: {lr: .inf}}", "align.monolingual.lr: Input should be a finite number (got inf)"),
    ("align: {}", "align: {bilingual: {epochs: .inf}}", "align.bilingual.epochs: Input should be a finite number (got inf)"),
    ("  lora: {r: 8}", "  lora: {r: 8}\n  warmup_ratio: .nan", "pretrain.warmup_ratio: Input should be a finite number (got nan)"),
    ("  lora: {r: 8}", "  lora: {r: 8, alpha: -.inf}", "pretrain.lora.alpha: Input should be a finite number (got -inf)"),
    ("  lora: {r: 8}", "  lora: {r: 8}\n  max_steps: .inf", "pretrain.max_steps: Input should be a finite number (got inf)"),
    ("clean: {}", "clean: {min_words: true}", "clean.min_words: Input should be a number, not true/false (got True)"),
    ("clean: {}", "clean: {lang_threshold: false}", "clean.lang_threshold: Input should be a number, not true/false (got False)"),
    ("tokenizer: {new_pieces: 100}", "tokenizer: {new_pieces: true}", "tokenizer.new_pieces: Input should be a number, not true/false"),
])
def test_non_finite_numbers_and_booleans_for_numbers_are_refused_on_their_line(tmp_path, old, new, message):
    text = BASE.replace(old, new)
    e = error_of(tmp_path, text)
    assert message in str(e)
    key_line = next(i for i, line in enumerate(text.splitlines(), 1) if new.splitlines()[-1] in line)
    assert e.line == key_line


def test_numbers_yaml_reads_as_text_and_real_booleans_still_parse(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string: still a valid learning rate
    r = load_recipe(write(tmp_path, BASE.replace("align: {}", "align: {monolingual: {lr: 1e-4}, bilingual: {enabled: false}}")
                          + "eval: {share_prefix: false}\n"))
    assert r.align.monolingual.lr == 1e-4 and r.align.bilingual.enabled is False and r.eval.share_prefix is False


def test_yaml_alias_bomb_and_endless_aliases_are_refused_quickly(tmp_path):
    import time

    # "billion laughs": six levels of nine aliases, ~650 bytes, 9**6 values once expanded
    bomb = ['l0: &l0 [' + ", ".join(['"lol"'] * 9) + ']']
    bomb += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 7)]
    text = BASE + "\n".join(bomb) + "\n"
    assert len("\n".join(bomb)) < 700
    t0 = time.perf_counter()
    e = error_of(tmp_path, text)
    assert time.perf_counter() - t0 < 5
    assert "expands to more than" in str(e) and "aliases" in str(e) and e.line == 18

    e = error_of(tmp_path, BASE + "eval: &e {paths: {x: *e}}\n")
    assert "alias refers to a mapping or list that contains it" in str(e) and e.line == 13
    e = error_of(tmp_path, BASE + "seed: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nests deeper than" in str(e)

    # an ordinary alias still works
    r = load_recipe(write(tmp_path, BASE.replace("align: {}", "align: {monolingual: &tr {lr: 0.001, epochs: 2}, bilingual: *tr}")))
    assert r.align.bilingual.lr == 0.001 and r.align.bilingual.epochs == 2


def test_heldout_folder_and_output_dir_file_are_refused_on_their_line(tmp_path):
    (tmp_path / "held").mkdir()
    e = error_of(tmp_path, BASE.replace("data:\n", "data:\n  heldout: {target: held}\n"))
    assert "data.heldout.target: expected a file, found a folder: held" in str(e) and e.line == 4
    e = error_of(tmp_path, BASE.replace("path: pairs.tsv", "path: held"))
    assert "data.parallel.0.path: expected a file, found a folder" in str(e)

    (tmp_path / "runs.txt").write_text("not a folder\n")
    e = error_of(tmp_path, BASE + f"output_dir: {tmp_path / 'runs.txt'}\n")
    assert "output_dir:" in str(e) and "is a file, not a folder" in str(e) and e.line == 13
    e = error_of(tmp_path, BASE + f"output_dir: {tmp_path / 'runs.txt' / 'deeper'}\n")
    assert "runs.txt is a file, not a folder" in str(e)
    load_recipe(write(tmp_path, BASE + f"output_dir: {tmp_path / 'new' / 'runs'}\n"))  # not there yet: fine
