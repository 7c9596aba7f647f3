"""Hugging Face datasets as sources of every kind, offline: a local folder laid out as the Hub lays out a
dataset repository (README.md with ``configs:``, Parquet files per config and split) read through the same
``datasets.load_dataset(path, name=config, split=..., streaming=..., data_files=...)`` path as a hub id; the
clean stage reading it with datatrove's own reader in two workers; caps that stop the stream (bytes read
measured, not only records kept); Hub access errors as one line (a local server standing in for the Hub)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import DEMO, REPO

from langadapt import layout
from langadapt import layout
from langadapt.errors import DataError, LangadaptError, RecipeError

EVERYDAY = [line.strip() for line in (DEMO / "corpus" / "everyday.txt").read_text(encoding="utf-8").splitlines()
            if line.strip()]


def make_repo(root: Path, configs: dict[str, dict[str, list[dict]]], *, files: int = 2, row_group: int = 50) -> Path:
    """A dataset repository as on the Hub: ``<config>/<split>-0000k.parquet`` and a README whose YAML front
    matter maps each config and split to its files by glob."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cards = []
    for config, splits in configs.items():
        entries = []
        for split, rows in splits.items():
            (root / "data" / config).mkdir(parents=True, exist_ok=True)
            for k in range(files):
                part = rows[k::files]
                pq.write_table(pa.Table.from_pylist(part), root / "data" / config / f"{split}-{k:05d}.parquet",
                               row_group_size=row_group)
            entries.append({"split": split, "path": f"data/{config}/{split}-*.parquet"})
        cards.append({"config_name": config, "data_files": entries})
    (root / "README.md").write_text("---\n" + yaml.safe_dump({"configs": cards}) + "---\n# test dataset\n",
                                    encoding="utf-8")
    return root


def docs(n: int, lang: str = "fa") -> list[dict]:
    return [{"id": f"{lang}-{i}", "text": f"{EVERYDAY[i % len(EVERYDAY)]} ({lang} {i})"} for i in range(n)]


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "repo", {"fa": {"train": docs(300), "test": docs(20)},
                                         "en": {"train": docs(40, "en")}})


def src(**kw):
    from langadapt.recipe import CorpusSource

    return CorpusSource(**{"name": "web", "format": "hf", **kw})


# --------------------------------------------------------------------------- loading by config, split, files


def test_a_config_and_split_stream_from_a_hub_layout_folder(repo):
    from langadapt.data.hub import open_dataset, rows

    opened, ds = open_dataset(src(path=str(repo), config="fa"), repo, what="corpus source 'web'", streaming=True)
    assert opened.streaming and opened.n_shards == 2 and type(ds).__name__ == "IterableDataset"
    got = [r["id"] for _, r in rows(src(path=str(repo), config="fa"), repo, what="w", streaming=True)]
    assert sorted(got) == sorted(d["id"] for d in docs(300))  # every row of fa/train, nothing of en or test
    test = [r["id"] for _, r in rows(src(path=str(repo), config="fa", split="test"), repo, what="w")]
    assert sorted(test) == sorted(d["id"] for d in docs(20))
    # data_files picks files inside the repository, whatever the configs say
    one = [r["id"] for _, r in rows(src(path=str(repo), data_files="data/en/train-00001.parquet"), repo, what="w")]
    assert one == [d["id"] for d in docs(40, "en")[1::2]]


def test_unknown_config_split_field_and_files_are_one_line_errors_naming_the_source(repo):
    from langadapt.data.hub import rows

    cases = [
        (dict(config="pes_Arab"), r"corpus source 'web': dataset '.*repo' has no config 'pes_Arab'; available configs: fa, en"),
        (dict(), r"has several configs; set config to one of: fa, en"),
        (dict(config="fa", split="validation"), r"has no split 'validation' \(splits: train, test\)"),
        (dict(config="fa", text_field="body"), r"has no field 'body' \(fields: id, text\)"),
        (dict(data_files="data/xx/*.parquet"), r"data_files 'data/xx/\*.parquet' match no file"),
    ]
    for kw, message in cases:
        s = src(path=str(repo), **kw)
        with pytest.raises(DataError, match=message) as e:
            list(rows(s, repo, what="corpus source 'web'", fields=(s.text_field,)))
        assert "\n" not in str(e.value)


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts bytes read through /proc (Linux)")
def test_caps_stop_the_stream_early_without_reading_the_rest(tmp_path, monkeypatch):
    from langadapt.data import hub
    from test_train_core import tiny_tokenizer

    rng = random.Random(0)
    letters = "ابپتثجچحخدذرزژسشصضطظعغفقکگلمنوهی "
    big = [{"id": str(i), "text": "".join(rng.choice(letters) for _ in range(2000))} for i in range(6000)]
    root = make_repo(tmp_path / "big", {"fa": {"train": big}}, files=8, row_group=100)
    size = sum(f.stat().st_size for f in root.rglob("*.parquet"))
    assert size > 12_000_000  # random letters hardly compress

    def read(**caps) -> tuple[int, int, int]:
        s = src(path=str(root), config="fa", **caps)
        before = _bytes_read()
        kept = [r for _, r in hub.rows(s, root, what="w", streaming=True, text_of=lambda r: r["text"])]
        return len(kept), sum(len(r["text"].encode()) for r in kept), _bytes_read() - before

    read(max_documents=1)  # the first read imports half of datasets and torch: not counted below
    # datasets reads a Parquet file whole when the stream reaches it: a cap stops within the first of 8 files
    n, _, read_docs = read(max_documents=25)
    assert n == 25 and read_docs < size / 6
    n, nbytes, read_bytes = read(max_bytes="200KB")
    assert 200_000 <= nbytes < 200_000 + 4 * 2000 and read_bytes < size / 6  # the record reaching the cap is the last
    monkeypatch.setattr(hub, "_tokenizer", lambda model: tiny_tokenizer())
    s = src(path=str(root), config="fa", max_tokens=50)
    s._tokens_with = "any"
    kept = [r for _, r in hub.rows(s, root, what="w", streaming=True, text_of=lambda r: r["text"])]
    counts = [len(tiny_tokenizer()(r["text"], add_special_tokens=False)["input_ids"]) for r in kept]
    assert sum(counts[:-1]) < 50 <= sum(counts)
    n, _, read_all = read()
    assert n == 6000 and read_all > size  # the measure sees a whole read


def test_shuffle_buffer_follows_the_seed_and_keeps_every_row(repo, monkeypatch):
    import datasets

    from langadapt.data.hub import rows

    # a shuffled stream waits 5 s for pyarrow's threads when it ends (apache/arrow#45214), four times here
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)

    def order(seed: int, **kw) -> list[str]:
        return [r["id"] for _, r in rows(src(path=str(repo), config="fa", shuffle_buffer=64, **kw), repo, what="w",
                                         seed=seed, streaming=True)]

    a, b, c = order(1), order(1), order(2)
    plain = [d["id"] for d in docs(300)[0::2] + docs(300)[1::2]]  # file by file, as make_repo wrote them
    assert a == b and a != c and a != plain and sorted(a) == sorted(plain)
    assert order(1, max_documents=10) == a[:10]


# --------------------------------------------------------------------------- every source kind


def _clean(tmp_path: Path, sources: list[dict], **clean) -> tuple[Path, dict]:
    from langadapt.recipe import load_recipe
    from langadapt.run import run_stage

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "base_model": "smollm2-135m-instruct", "language": {"code": "fa"}, "seed": 3,
        "output_dir": str(tmp_path / "runs"), "data": {"corpus": sources}, "clean": {"workers": 2, **clean},
    }, allow_unicode=True), encoding="utf-8")
    recipe = load_recipe(path)
    return recipe.run_dir / "clean", run_stage(recipe, "clean", resume=False)


def test_clean_reads_a_dataset_with_datatrove_in_two_workers_within_its_caps(tmp_path, repo):
    from datatrove.pipeline.readers.huggingface import HuggingFaceDatasetReader

    from langadapt.clean.hub import HubCorpusReader
    from langadapt.clean.report import collect_counts

    assert issubclass(HubCorpusReader, HuggingFaceDatasetReader)
    local = tmp_path / "local.txt"
    local.write_text("\n".join(EVERYDAY[:5]) + "\n", encoding="utf-8")
    out, summary = _clean(tmp_path, [
        {"name": "web", "type": "web", "format": "hf", "path": str(repo), "config": "fa", "max_documents": 41},
        {"name": "local", "path": str(local)},  # local files keep working beside it
    ])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    web = next(r for r in report["sources"] if r["source"] == "web")
    per_task = {}
    for f in sorted((out / "logs" / "filter" / "stats").glob("*.json")):
        for step in json.loads(f.read_text(encoding="utf-8")):
            if step["name"].endswith("🤗 hub corpus"):
                per_task[f.stem] = step["stats"].get("web|documents", {}).get("total", 0)
    assert sorted(per_task.values()) == [20, 21]  # each worker its file, the cap shared between them
    assert web["sentences_in"] >= 41 and web["original_bytes"] > 0 and summary["sentences_out"] > 0
    texts = [json.loads(line)["text"] for f in (out / layout.DOCUMENTS).glob("*.jsonl") for line in f.open(encoding="utf-8")]
    assert any("(fa " in t for t in texts) and not any("(en " in t for t in texts)
    assert collect_counts(out / "logs")["local|bytes_in"] > 0


def test_clean_counts_documents_without_text_and_refuses_a_bad_config_before_starting(tmp_path):
    rows_ = docs(30) + [{"id": "e1", "text": ""}, {"id": "e2", "text": None}, {"id": "e3", "text": "  "}]
    repo = make_repo(tmp_path / "r", {"default": {"train": rows_}}, files=1)
    out, _ = _clean(tmp_path / "a", [{"name": "web", "format": "hf", "path": str(repo)}])
    web = json.loads((out / "report.json").read_text(encoding="utf-8"))["sources"][0]
    assert web["drops"]["empty_text"] == 3
    with pytest.raises(LangadaptError, match="corpus source 'web': dataset .* has no config 'fa'"):
        _clean(tmp_path / "b", [{"name": "web", "format": "hf", "path": str(repo), "config": "fa"}])
    assert not (tmp_path / "b" / "runs" / "t" / "clean" / "work").exists()


def test_clean_reads_a_saved_dataset_dict_split_in_two_workers(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(docs(40)),
                          "test": datasets.Dataset.from_list(docs(5, "en"))}).save_to_disk(str(folder))
    out, _ = _clean(tmp_path / "run", [{"name": "web", "format": "hf", "path": str(folder), "split": "train"}])
    texts = [json.loads(line)["text"] for f in (out / layout.DOCUMENTS).glob("*.jsonl") for line in f.open(encoding="utf-8")]
    assert sum("(fa " in t for t in texts) == 40 and not any("(en " in t for t in texts)
    with pytest.raises(LangadaptError, match=r"has no split 'validation' \(splits: train, test\)"):
        _clean(tmp_path / "bad", [{"name": "web", "format": "hf", "path": str(folder), "split": "validation"}])


def test_parallel_instructions_heldout_and_eval_data_read_datasets_by_config(tmp_path):
    from langadapt.data.instructions import read_instructions
    from langadapt.data.parallel import read_source
    from langadapt.eval.tasks import load_tasks
    from langadapt.recipe import InstructionSource, ParallelSource, parse_recipe
    from langadapt.train.bpc import read_heldout

    pairs = [ln.split("\t") for ln in (DEMO / "parallel" / "fa-en.tsv").read_text(encoding="utf-8").splitlines()]
    repo = make_repo(tmp_path / "opus", {
        "en-fa": {"train": [{"translation": {"en": e, "fa": f}} for f, e in pairs]},
        "en-hi": {"train": [{"translation": {"en": "x", "hi": "y"}}]},
    }, files=1)
    got, report = read_source(ParallelSource(name="opus", format="hf", path=str(repo), config="en-fa",
                                             target_field="translation.fa", english_field="translation.en",
                                             max_documents=12), lang="fa")
    assert len(got) == report.lines == 12 and got[0].english == pairs[0][1]

    aya = make_repo(tmp_path / "aya", {"persian": {"train": [
        {"inputs": f"پرسش {i}", "targets": f"پاسخ {i}", "language": "pes"} for i in range(9)]}}, files=1)
    convs, rep = read_instructions(InstructionSource(
        name="aya", format="alpaca", language="fa", path=str(aya), config="persian",
        fields={"instruction": "inputs", "output": "targets"}, max_documents=5))
    assert [c.response for c in convs] == [f"پاسخ {i}" for i in range(5)] and rep.read == 5

    wiki = make_repo(tmp_path / "wiki", {"20231101.fa": {"train": [{"text": f"سطر اول {i}\nسطر دوم {i}"}
                                                                  for i in range(50)]}}, files=1)
    recipe = parse_recipe({"name": "t", "base_model": "smollm2-135m-instruct", "data": {"heldout": {
        "target": {"path": str(wiki), "config": "20231101.fa"}, "max_chars": 100}}})
    held = read_heldout(recipe)["target"]
    assert held.startswith("سطر اول 0\nسطر دوم 0\nسطر اول 1") and 60 < len(held) <= 100

    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"name": "sentiment", "language": "fa", "data": {
        "format": "hf", "path": str(make_repo(tmp_path / "senti", {"food": {"test": [
            {"review": f"غذا {'خوب' if i % 2 else 'بد'} بود {i}", "label": "positive" if i % 2 else "negative"}
            for i in range(30)]}}, files=1)),
        "config": "food", "max_documents": 10, "fields": {"text": "review"}}}, allow_unicode=True),
        encoding="utf-8")
    (t,) = load_tasks([str(task)], target_language="fa")
    examples = t.examples()
    assert len(examples) == 10 and {e.label for e in examples} == {"positive", "negative"}


def test_a_long_document_in_another_script_is_cut_between_sentences():
    from langadapt.data.corpus import cut_document

    for sentence in ("मेरी माँ हर सुबह हम सबके लिए गरम चाय बनाती हैं। ", "ትናንት ወደ ትልቁ ገበያ ሄድኩ። "):
        parts = list(cut_document(sentence * 300, 4096))
        assert len(parts) > 3 and all(len(p.encode()) <= 4096 for p in parts)
        assert all(p.endswith(sentence) for p in parts)  # never half a sentence on either side of a cut


def test_hub_only_settings_are_refused_on_local_files_and_sizes_read_as_bytes(tmp_path):
    from langadapt.recipe import parse_recipe

    with pytest.raises(RecipeError, match=r"data.corpus.0: config: only for a Hugging Face dataset \(format hf\)"):
        parse_recipe({"name": "t", "base_model": "m", "data": {"corpus": [{"name": "a", "path": "x.txt", "config": "fa"}]}})
    r = parse_recipe({"name": "t", "base_model": "m", "data": {"corpus": [
        {"name": "a", "format": "hf", "path": "o/n", "max_bytes": "2GB"},
        {"name": "b", "format": "hf", "path": "o/n", "max_bytes": "1.5 GiB"}]}})
    assert [s.max_bytes for s in r.data.corpus] == [2_000_000_000, int(1.5 * 2**30)]
    assert r.data.corpus[0]._tokens_with == "m"  # max_tokens counts with the base model's tokenizer
    with pytest.raises(RecipeError, match="max_bytes: not a size"):
        parse_recipe({"name": "t", "base_model": "m", "data": {"corpus": [
            {"name": "a", "format": "hf", "path": "o/n", "max_bytes": "lots"}]}})


# --------------------------------------------------------------------------- the Hub: access, errors, cache


class _FakeHub(BaseHTTPRequestHandler):
    """Stands in for huggingface.co: every dataset is gated (403, as the Hub answers a token without
    access; 401 without a token) except 'owner/missing' (404); remembers the Authorization headers."""

    seen: list = []

    def log_message(self, *args):
        pass

    def _answer(self):
        self.seen.append(self.headers.get("Authorization"))
        missing = "/owner/missing/" in self.path
        self.send_response(404 if missing else (403 if self.headers.get("Authorization") else 401))
        self.send_header("X-Error-Code", "RepoNotFound" if missing else "GatedRepo")
        self.send_header("X-Error-Message", "Repository not found" if missing else "Access to this dataset is restricted")
        self.send_header("Content-Length", "2")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"{}")

    do_GET = do_HEAD = _answer


HUB_SCRIPT = """
import os, sys
from langadapt.data.hub import rows
from langadapt.errors import DataError
from langadapt.recipe import CorpusSource
for case in sys.argv[1:]:
    repo_id, _, token = case.partition("@")
    os.environ.pop("HF_TOKEN", None)
    if token:
        os.environ["HF_TOKEN"] = token
    try:
        src = CorpusSource(name="web", format="hf", path=repo_id, config="pes_Arab")
        print("ROWS", [r["text"] for _, r in rows(src, repo_id, what="corpus source 'web'", streaming=True)])
    except DataError as e:
        print("ERROR", e)
"""


def _run_hub(cases: list[str], env: dict) -> list[str]:
    """What reading each dataset (``id`` or ``id@token``) prints, in a fresh process with ``env``
    (huggingface_hub reads HF_HUB_OFFLINE, HF_ENDPOINT and the cache folder when it is imported)."""
    # TRANSFORMERS_OFFLINE counts as HF_HUB_OFFLINE for huggingface_hub
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))} | {
        "PYTHONPATH": str(REPO / "src")} | env
    p = subprocess.run([sys.executable, "-c", HUB_SCRIPT, *cases], capture_output=True, text=True, env=env,
                       timeout=120)
    out = [line for line in p.stdout.splitlines() if line.startswith(("ROWS", "ERROR"))]
    assert p.returncode == 0 and len(out) == len(cases), p.stderr[-2000:]
    return out


def test_gated_and_unknown_datasets_are_one_line_errors_and_the_token_is_sent(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HOME": str(tmp_path / "hf")}
        gated, with_token, missing = _run_hub(["owner/fineweb", "owner/fineweb@hf_test_token", "owner/missing"], env)
    finally:
        server.shutdown()
    assert gated == ("ERROR corpus source 'web': dataset 'owner/fineweb' is gated: ask for access at "
                     "https://huggingface.co/datasets/owner/fineweb, then log in (huggingface-cli login) or set HF_TOKEN")
    assert "is gated and the token in use (HF_TOKEN or huggingface-cli login) has no access" in with_token
    assert "Bearer hf_test_token" in _FakeHub.seen and None in _FakeHub.seen  # HF_TOKEN is sent, and only then
    assert "dataset 'owner/missing' does not exist on the Hub, or is private" in missing


def test_offline_reads_the_hub_cache_and_says_what_to_do_when_it_is_not_there(tmp_path):
    # the cache as huggingface_hub lays it out (huggingface-cli download --repo-type dataset owner/fineweb)
    cache = tmp_path / "hub"
    entry = cache / "datasets--owner--fineweb"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(sha)
    make_repo(entry / "snapshots" / sha, {"pes_Arab": {"train": [{"text": "سلام دنیا"}, {"text": "روز خوش"}]}}, files=1)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    cached, other = _run_hub(["owner/fineweb", "owner/other"], env)
    assert cached == "ROWS ['سلام دنیا', 'روز خوش']"
    assert other == ("ERROR corpus source 'web': dataset 'owner/other' is not in the local cache and HF_HUB_OFFLINE=1 "
                     "is set; download it once with network access (huggingface-cli download --repo-type dataset "
                     "owner/other), or unset HF_HUB_OFFLINE")


def test_no_network_is_one_line(monkeypatch):
    # what datasets raises when the Hub cannot be reached (after huggingface_hub's retries: 20 s and more)
    from huggingface_hub import constants

    from langadapt.data.hub import Opened, explain

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    e = explain(ConnectionError("Couldn't reach 'owner/fineweb' on the Hub (LocalEntryNotFoundError)"),
                what="corpus source 'web'", opened=Opened("owner/fineweb", "owner/fineweb", hub=True))
    assert str(e) == ("corpus source 'web': cannot reach the Hugging Face Hub for dataset 'owner/fineweb' (no "
                      "network?); connect, or use a copy in the local cache with HF_HUB_OFFLINE=1")
