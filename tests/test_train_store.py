"""The on-disk token store serves exactly the rows the in-memory packer builds from the stages'
document encoding, and training on it is training on them."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import REPO, tiny_llama
from test_train_core import TEXT, _free_port, settings, tiny_tokenizer

from langadapt.train import store as token_store
from langadapt.train.examples import document_examples
from langadapt.train.packing import pack


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = " ".join(TEXT).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.mark.parametrize("seq_len", [7, 16, 64])
def test_store_rows_equal_the_packer_rows(tmp_path, monkeypatch, seq_len):
    monkeypatch.setattr(token_store, "BATCH_TEXTS", 5)  # several tokenizer batches, documents split across them
    tok = tiny_tokenizer()
    texts = random_texts(37)
    st = token_store.build(texts, tok, tmp_path / "s").rows(seq_len, tok.pad_token_id)
    ref = pack(document_examples(tok, texts), seq_len, tok.pad_token_id)
    assert len(st) == len(ref) and torch.equal(st.tokens, ref.tokens)
    index = torch.tensor(list(range(len(ref)))[::-1])  # any order, the last (padded) row included
    got, want = st.batch(index), ref.batch(index)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert st.documents == 37 and st.total == sum(len(d["input_ids"]) for d in document_examples(tok, texts))


def test_store_is_reused_for_the_same_key_rebuilt_for_another_and_never_left_half_written(tmp_path):
    tok = tiny_tokenizer()
    folder = tmp_path / "s"
    a = token_store.build(random_texts(10), tok, folder, key="one")
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    calls = []
    token_store.build(iter(calls.append(1) or []), tok, folder, key="one")  # reused: the texts are never read
    b = token_store.build(random_texts(10, seed=1), tok, folder, key="two", limit=4)
    assert b.documents == 4 and json.loads((folder / "meta.json").read_text())["key"] == "two"
    assert a.documents == 10
    with pytest.raises(ValueError, match="no tokens"):
        token_store.build(["", ""], tok, tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    b.remove()
    assert not folder.exists()


def test_training_on_the_store_is_training_on_the_packed_examples(tmp_path):
    from langadapt.train.core import train_model
    from langadapt.train.freeze import apply_policy

    tok = tiny_tokenizer()
    texts = random_texts(24)
    results = []
    for name, data in (("list", document_examples(tok, texts)),
                       ("store", token_store.build(texts, tok, tmp_path / "tokens"))):
        model, _ = apply_policy(tiny_llama(len(tok)), embeddings="all")
        r = train_model(model, tok, data, settings(max_steps=3), tmp_path / name, log=lambda m: None)
        results.append((r.final_loss, r.tokens, r.rows))
    assert results[0] == results[1]


MULTI = """
import json, os, sys
sys.path.insert(0, sys.argv[2])
from test_train_core import tiny_tokenizer
from pathlib import Path
from langadapt.layout import RunLayout
from langadapt.train.store import corpus_store

store = corpus_store(RunLayout(Path(sys.argv[1])).clean_shards(), tiny_tokenizer(), sys.argv[1] + "/tokens")
batch = store.rows(8, 2).batch([0, len(store) - 1])
with open(sys.argv[1] + f"/rank{os.environ['RANK']}.json", "w") as f:
    json.dump({"documents": store.documents, "total": store.total, "ids": batch["input_ids"].tolist()}, f)
"""


def test_two_processes_open_the_same_store_and_leave_one_folder(tmp_path):
    import os
    import subprocess
    import sys

    clean = tmp_path / "clean" / "sentences"
    clean.mkdir(parents=True)
    for shard in range(2):
        with open(clean / f"{shard:05d}.jsonl", "w", encoding="utf-8") as f:
            for t in random_texts(15, seed=shard):
                f.write(json.dumps({"text": t}) + "\n")
    script = tmp_path / "multi.py"
    script.write_text(MULTI)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    config = REPO / "configs" / "accelerate" / "cpu-gloo-2proc.yaml"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                           "--main_process_port", str(_free_port()), str(script), str(tmp_path), str(REPO / "tests")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0 == r1 and r0["documents"] == 30
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tokens")) == ["tokens"]
