"""The token store built by N tokenizer processes is the store one process builds, byte for byte; a killed
build leaves no worker behind and a rerun tokenizes only the parts it had not finished."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from test_train_core import TEXT, tiny_tokenizer

from langadapt.errors import DataError
from langadapt.train import parallel_store
from langadapt.train import store as token_store
from langadapt.train.examples import iter_documents


def shards(folder: Path, n: int = 3, lines: int = 4000, *, parquet: bool = True) -> list[Path]:
    """Clean-stage shards: JSONL (blank lines and empty texts among them, as the readers must skip) and a Parquet one."""
    rng = random.Random(0)
    words = " ".join(TEXT).split()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        with open(folder / f"{k:05d}.jsonl", "w", encoding="utf-8") as f:
            for i in range(lines):
                text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
                f.write(json.dumps({"text": text, "source": "s"}) + ("\n\n" if i % 97 == 0 else "\n"))
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
        pq.write_table(pa.table({"text": texts}), folder / f"{n:05d}.parquet", row_group_size=700)
    return sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".parquet"))


def same_store(a: Path, b: Path) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in ("tokens.bin", "starts.bin"))


@pytest.mark.parametrize("limit", [None, 5000])
def test_two_processes_build_the_store_one_process_builds(tmp_path, monkeypatch, limit):
    monkeypatch.setattr(parallel_store, "MIN_PART_BYTES", 1 << 14)  # parts small enough for two workers here
    files = shards(tmp_path / "clean")
    tok = tiny_tokenizer()
    one = token_store.build(iter_documents(files), tok, tmp_path / "one", limit=limit)
    parts = parallel_store.plan_parts(files)
    assert len(parts) > 8 and {p.kind for p in parts} == {"lines", "rows"}
    two = token_store.corpus_store(files, tok, tmp_path / "two", limit=limit, workers=2)
    assert same_store(one.folder, two.folder) and (two.documents, two.total) == (one.documents, one.total)
    assert two.documents == (limit or sum(1 for _ in iter_documents(files)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "one", "two"]  # no parts left behind
    for index in ([0, 1, len(two.rows(16, 2)) - 1],):
        assert all((two.batch(index)[k] == one.rows(16, 2).batch(index)[k]).all() for k in ("input_ids", "labels"))


def test_a_bad_line_in_a_worker_is_one_error_naming_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel_store, "MIN_PART_BYTES", 1 << 14)
    files = shards(tmp_path / "clean", n=2, parquet=False)
    with open(files[1], "a", encoding="utf-8") as f:
        f.write('{"text": "ok"}\n{"txt": "no text field"}\n')
    lines = sum(1 for _ in open(files[1], encoding="utf-8"))
    with pytest.raises(DataError, match=rf"00001.jsonl:{lines}: not a clean-stage record"):
        token_store.corpus_store(files, tiny_tokenizer(), tmp_path / "s", workers=2)


KILLED = """
import sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from test_train_core import tiny_tokenizer
from langadapt.train import parallel_store, store

if __name__ == "__main__":
    parallel_store.MIN_PART_BYTES = 1 << 14
    store.corpus_store(sorted(Path(sys.argv[1]).iterdir()), tiny_tokenizer(), sys.argv[2], workers=2)
"""


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # any of its threads may have started one
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_build_leaves_no_worker_and_resumes_from_its_finished_parts(tmp_path, monkeypatch):
    files = shards(tmp_path / "clean", n=4, lines=10000, parquet=False)
    folder = tmp_path / "store"
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "clean"), str(folder), str(REPO / "tests")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = folder.with_name("store.parts")
    deadline = time.time() + 120
    def finished_parts() -> list[str]:  # part folders only: a part being written is 000NN.tmp/ until renamed
        return sorted(p.parent.name for p in parts.glob("0*/meta.json") if p.parent.name.isdigit())

    while time.time() < deadline and len(finished_parts()) < 2:
        time.sleep(0.05)
    workers = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)  # they died with the build (PR_SET_PDEATHSIG)
    finished = finished_parts()  # after the workers are gone: none can finish a part any more
    monkeypatch.setattr(parallel_store, "MIN_PART_BYTES", 1 << 14)  # the plan the killed build made
    total = len(parallel_store.plan_parts(files))
    assert workers and 2 <= len(finished) < total, (finished, total)
    assert not folder.exists()

    redone = []
    real = parallel_store.tokenize_part

    def counting(part, out, limit):
        redone.append(Path(out).name)
        return real(part, out, limit)

    monkeypatch.setattr(parallel_store, "tokenize_part", counting)
    tok = tiny_tokenizer()
    # in this process (one worker), so the parts it tokenizes are seen
    got = token_store.corpus_store(files, tok, folder, workers=1)
    assert redone and not set(redone) & set(finished)  # only the parts the killed build had not finished
    assert len(redone) + len(finished) == total
    assert same_store(got.folder, token_store.build(iter_documents(files), tok, tmp_path / "one").folder)
