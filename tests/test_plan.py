"""`plan`: counts computed on the meta device match hand arithmetic and the paper's Table 4."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from langadapt.models import load_config
from langadapt.plan import make_plan
from langadapt.recipe import parse_recipe

REPO = Path(__file__).resolve().parents[1]


def tiny_config_file(tmp_path: Path, tied: bool) -> Path:
    cfg = {
        "model_type": "llama", "vocab_size": 100, "hidden_size": 16, "intermediate_size": 40,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": tied,
    }
    p = tmp_path / f"config-{tied}.json"
    p.write_text(json.dumps(cfg))
    return p


def plan_for(tmp_path, tied: bool, **sections):
    recipe = parse_recipe({
        "name": "t", "base_model": "x/y", "base_config": str(tiny_config_file(tmp_path, tied)),
        "data": {"corpus": [{"name": "c", "path": "c.txt"}], "parallel": [{"name": "p", "path": "p.tsv"}]},
        "clean": {}, "tokenizer": {"merged_vocab_size": 130}, "align": {}, "pretrain": {"lora": {"r": 4}},
        "sft": {"start_from": "pretrain", "lora": {"r": 4}}, **sections,
    })
    recipe.output_dir = str(tmp_path / "runs")
    config = load_config("x/y", recipe.base_config)
    return make_plan(recipe, config)


def test_plan_counts_match_hand_arithmetic_untied(tmp_path):
    vocab, plans = plan_for(tmp_path, tied=False)
    by = {p.stage: p.counts for p in plans}
    h, inter, layers, rows = 16, 40, 2, 130
    kv = 2 * (h // 4)  # two key/value heads of size 4
    block = h * h * 2 + h * kv * 2 + 3 * h * inter + 2 * h  # q,o + k,v + mlp + two norms
    base_body = layers * block + h  # + final norm
    assert vocab.base_params == base_body + 2 * 100 * h
    assert by["align"].total == base_body + 2 * rows * h
    assert by["align"].trainable == 2 * rows * h
    r = 4
    lora = layers * (2 * r * (h + h) + 2 * r * (h + kv) + 2 * r * (h + inter) + r * (inter + h))
    assert by["pretrain"].total == base_body + 2 * rows * h + lora
    assert by["pretrain"].trainable == 2 * rows * h + lora
    assert by["sft"].trainable == by["pretrain"].trainable


def test_plan_counts_tied_embeddings_once_and_new_rows_only(tmp_path):
    vocab, plans = plan_for(tmp_path, tied=True, align={"monolingual": {"train_rows": "new"}, "bilingual": {"train_rows": "new"}})
    align = {p.stage: p.counts for p in plans}["align"]
    assert align.trainable == (130 - 100) * 16  # new rows of the one tied matrix
    assert align.total == vocab.base_params + 30 * 16


def test_plan_reproduces_paper_table_4_offline_without_weights():
    out = subprocess.run([sys.executable, "-m", "langadapt", "plan", str(REPO / "configs/paper-llama2-7b-fa.yaml")],
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "", "COLUMNS": "200"}, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for number in ("6,884,372,480", "408,100,864", "6,904,360,960", "428,089,344", "5.93%", "6.20%"):
        assert number in text
    assert text.count("428,089,344") >= 2  # pretrain and instruction tuning
