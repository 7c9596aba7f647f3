"""The clean stage end to end: datatrove passes, dedup across workers, rejects, report, bad input, Slurm."""

from __future__ import annotations

import csv
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DEMO
from langadapt.errors import LangadaptError

CORPUS = DEMO / "corpus"


def _recipe(tmp_path: Path, sources: list[dict], **clean) -> Path:
    path = tmp_path / "recipe.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "name": "t", "base_model": "smollm2-135m-instruct", "language": {"code": "fa"},
        "output_dir": str(tmp_path / "runs"), "data": {"corpus": sources}, "clean": {"workers": 1, **clean},
    }, allow_unicode=True), encoding="utf-8")
    return path


def _clean(tmp_path: Path, sources: list[dict], **clean) -> tuple[Path, dict]:
    from langadapt.recipe import load_recipe
    from langadapt.run import run_stage

    recipe = load_recipe(_recipe(tmp_path, sources, **clean))
    summary = run_stage(recipe, "clean", resume=False)
    return recipe.run_dir / "clean", summary


def _documents(out: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "documents").glob("*.jsonl")) for line in f.open(encoding="utf-8")]


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "rejects").glob("*/*.jsonl")) for line in f.open(encoding="utf-8")]


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


S = [  # real Persian sentences of more than five words
    "امروز صبح با خانواده به پارک بزرگ شهر رفتیم.",
    "کتابخانه‌ی محله تا ساعت هشت شب باز است.",
    "برادرم هر روز بعد از مدرسه فوتبال بازی می‌کند.",
    "مادربزرگم بهترین آش رشته‌ی فامیل را می‌پزد.",
    "در تعطیلات تابستان به روستای پدری‌ام سفر کردم.",
    "دیروز باران شدیدی بارید و خیابان‌ها خیس شدند.",
]


# --------------------------------------------------------------------------- the demo corpus


def test_demo_noisy_lines_are_dropped_for_the_right_reasons_and_real_sentences_kept(tmp_path):
    expected_file = CORPUS / "noisy_expected.tsv"
    if not (CORPUS / "noisy.txt").is_file() or not expected_file.is_file():
        pytest.skip("data/demo/corpus/noisy.txt or noisy_expected.tsv is missing")
    from langadapt.clean.normalize import normalize
    from langadapt.clean.split import split_sentences

    out, summary = _clean(tmp_path, [
        {"name": "everyday", "type": "other", "path": str(CORPUS / "everyday.txt")},
        {"name": "news", "type": "news", "format": "jsonl", "text_field": "body", "path": str(CORPUS / "news.jsonl")},
        {"name": "noisy", "type": "web", "path": str(CORPUS / "noisy.txt")},
    ], rejects=True)

    raw = (CORPUS / "noisy.txt").read_bytes()
    starts = {0: 1}
    for n, i in enumerate((i for i, b in enumerate(raw) if b == 0x0A), start=2):
        starts[i + 1] = n
    outcome: dict[int, str] = {}
    for r in _rejects(out):
        if r["source"] == "noisy":
            offset = int(r["doc"].rsplit(":", 1)[1].split("/")[0])
            outcome[starts[offset]] = r["reason"]
    lines = raw.decode("utf-8").splitlines()
    by_text = {}
    for n, line in enumerate(lines, start=1):
        sentences = split_sentences(normalize(line, "fa"), "fa")
        assert len(sentences) == 1, f"noisy.txt line {n} should be one sentence: {sentences}"
        by_text[sentences[0]] = n
    kept_noisy = [s for s in _documents(out) if s["source"] == "noisy"]
    for s in kept_noisy:
        outcome[by_text[s["text"]]] = "keep"

    with expected_file.open(encoding="utf-8") as f:
        expected = {int(row["line"]): row["reason"] for row in csv.DictReader(f, delimiter="\t")}
    assert len(expected) == len(lines)
    wrong = {n: (outcome.get(n), want) for n, want in expected.items() if outcome.get(n) != want}
    assert wrong == {}, "noisy.txt line: (got, expected)"

    # the kept lines come out normalized: Persian letters and digits, no diacritics
    kept_text = " ".join(s["text"] for s in kept_noisy)
    assert not set("يك٠١٢٣٤٥٦٧٨٩\u064e\u064f\u0650\u0651") & set(kept_text)
    # every real sentence of the clean demo files survives, once
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = {r["source"]: r for r in report["sources"]}
    for name in ("everyday", "news"):
        assert rows[name]["sentences_out"] == rows[name]["sentences_in"] > 100
        assert sum(rows[name]["drops"].values()) == 0
    assert rows["noisy"]["sentences_out"] == 6
    docs = _documents(out)  # the kept sentences put back together, a line of the demo files each
    assert summary["sentences_out"] == sum(d["sentences"] for d in docs)
    assert summary["documents_out"] == len(docs) == len({d["text"] for d in docs}) < summary["sentences_out"]
    assert all(0.7 <= s["lang_prob"] <= 1.0 and s["type"] in ("other", "news", "web") for s in _documents(out))


# --------------------------------------------------------------------------- dedup across workers


def test_dedup_is_correct_across_two_shards_processed_by_different_workers(tmp_path):
    from langadapt.data.corpus import plan_pieces
    from langadapt.recipe import load_recipe

    a = _write(tmp_path / "a.txt", [S[0], S[1], S[2], S[1]])  # S[1] twice within the first source
    b = _write(tmp_path / "b.txt", [S[3], S[0], "ديروز باران شديدي باريد و خيابان‌ها خيس شدند.", S[4]])  # S[0]; S[5] spelt with Arabic yeh
    c = _write(tmp_path / "c.txt", [S[5], S[2]])
    sources = [{"name": "a", "path": a}, {"name": "b", "path": b}, {"name": "c", "path": c}]
    recipe = load_recipe(_recipe(tmp_path, sources, workers=2, rejects=True))
    plan = plan_pieces(recipe.data.corpus, recipe.resolve, 2)
    task_of = {Path(p.path).name: t for t, task in enumerate(plan) for p in task}
    assert task_of["a.txt"] != task_of["b.txt"] or task_of["a.txt"] != task_of["c.txt"]  # really two workers

    out, summary = _clean(tmp_path, sources, workers=2, rejects=True)
    texts = [s["text"] for s in _documents(out)]
    assert sorted(texts) == sorted(S)  # every sentence exactly once
    assert len(list((out / "documents").glob("*.jsonl"))) == 2  # written by two tasks
    kept_from = {s["text"]: s["source"] for s in _documents(out)}
    assert kept_from[S[0]] == "a" and kept_from[S[2]] == "a" and kept_from[S[5]] == "b"  # first-listed source wins
    dups = sorted((r["source"], r["text"]) for r in _rejects(out) if r["reason"] == "duplicate")
    assert dups == sorted([("a", S[1]), ("b", S[0]), ("c", S[5]), ("c", S[2])])
    assert summary["drops"]["duplicate"] == 4


# --------------------------------------------------------------------------- report and rejects


def test_report_counts_every_sentence_and_rejects_only_when_asked(tmp_path):
    lines = [S[0], "خیلی ممنون", "This sentence is plainly written in English, not Persian.",
             "if (a == b) { run(); } else { stop(); }", "این سایت از کوکی‌ها برای بهبود تجربه‌ی شما استفاده می‌کند", S[0]]
    src = [{"name": "web", "type": "web", "path": _write(tmp_path / "w.txt", lines)}]
    out, summary = _clean(tmp_path, src)
    assert not (out / "rejects").exists()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    row = report["sources"][0]
    assert row["drops"] == {"invalid_utf8": 0, "empty_text": 0, "too_short": 1, "code": 1, "boilerplate": 1,
                            "language": 1, "duplicate": 1, "near_duplicate": 0}
    assert (row["sentences_in"], row["sentences_out"]) == (6, 1)
    assert row["original_bytes"] == sum(len(x.encode()) for x in lines)
    assert row["cleaned_bytes"] == len(S[0].encode())
    with (out / "report.csv").open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["source"] for r in table] == ["web", "total"] and table[1]["language"] == "1"
    assert summary["sentences_out"] == 1 and report["totals"]["drops"]["code"] == 1

    out, _ = _clean(tmp_path / "again", src, rejects=True)
    reasons = sorted(r["reason"] for r in _rejects(out))
    assert reasons == ["boilerplate", "code", "duplicate", "language", "too_short"]
    assert {r["text"] for r in _rejects(out) if r["reason"] == "too_short"} == {"خیلی ممنون"}
    assert sorted(p.name for p in (out / "rejects").iterdir()) == sorted(reasons)


def test_invalid_utf8_lines_are_counted_and_skipped_and_empty_files_are_fine(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(S[0].encode() + b"\n" + b"\xd8\xa7\xff\xfe broken line of text here\n" + S[1].encode())  # no final newline
    (tmp_path / "empty.txt").write_bytes(b"")
    out, summary = _clean(tmp_path, [{"name": "bad", "path": str(bad)}, {"name": "empty", "path": str(tmp_path / "empty.txt")}],
                          rejects=True)
    assert sorted(s["text"] for s in _documents(out)) == sorted(S[:2])
    assert summary["drops"]["invalid_utf8"] == 1
    assert [r["reason"] for r in _rejects(out)] == ["invalid_utf8"]
    rows = {r["source"]: r for r in json.loads((out / "report.json").read_text())["sources"]}
    assert rows["empty"]["original_bytes"] == 0 and rows["empty"]["sentences_in"] == 0


def test_records_without_text_are_counted_and_an_empty_result_is_an_error_naming_the_sources(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    j = tmp_path / "web.jsonl"
    rows = [{"text": S[0]}, {"text": None}, {"text": ""}, {"text": " \t "}, {"text": S[1]}]
    j.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pq.write_table(pa.table({"text": [S[2], None, "", S[3]]}), tmp_path / "p.parquet")
    out, summary = _clean(tmp_path / "a", [{"name": "web", "format": "jsonl", "path": str(j)},
                                           {"name": "pq", "format": "parquet", "path": str(tmp_path / "p.parquet")}])
    rows = {r["source"]: r for r in json.loads((out / "report.json").read_text(encoding="utf-8"))["sources"]}
    assert rows["web"]["drops"]["empty_text"] == 3 and rows["pq"]["drops"]["empty_text"] == 2
    assert (rows["web"]["sentences_in"], rows["web"]["sentences_out"]) == (2, 2)
    assert summary["drops"]["empty_text"] == 5 and summary["sentences_out"] == 4
    assert "empty_text" in (out / "report.csv").read_text(encoding="utf-8").splitlines()[0]

    # only empty and blank files: an error naming the sources, not "done, 0 sentences"
    from langadapt.cli import main

    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "empty.txt").write_bytes(b"")
    (tmp_path / "e" / "blank.txt").write_text("\n   \n\t\n", encoding="utf-8")
    nulls = tmp_path / "e" / "nulls.jsonl"
    nulls.write_text('{"text": null}\n{"text": "  "}\n', encoding="utf-8")
    recipe = _recipe(tmp_path / "e", [{"name": "blank", "path": str(tmp_path / "e" / "blank.txt")},
                                      {"name": "empty", "path": str(tmp_path / "e" / "empty.txt")},
                                      {"name": "nulls", "format": "jsonl", "path": str(nulls)}])
    # a config file instead of reading SmolLM2's (the command's preflight needs only the vocabulary size)
    (tmp_path / "e" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 49152}))
    recipe.write_text(recipe.read_text(encoding="utf-8") + "base_config: config.json\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["clean", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no sentences from source(s) 'blank', 'empty', 'nulls'" in err
    assert "empty_text 2" in err
    assert not (tmp_path / "e" / "runs" / "t" / "clean" / "COMPLETE.json").exists()

    # text, but every sentence dropped: the error says by which rules
    with pytest.raises(LangadaptError, match=r"every sentence of source\(s\) 'english' was dropped "
                                             r"\(2 in; too_short 1, language 1\)"):
        _clean(tmp_path / "f", [{"name": "english", "path": _write(tmp_path / "en.txt", [
            "This sentence is plainly written in English, not Persian at all.", "Short one."])}])


def test_missing_input_is_one_line_error_before_any_work(tmp_path, capsys):
    from langadapt.cli import main

    recipe = _recipe(tmp_path, [{"name": "gone", "path": str(tmp_path / "nowhere.txt")}])
    assert main(["clean", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere.txt" in err and "input not found" in err

    # the stage checks too (a file removed after the recipe was loaded), before it writes anything
    from langadapt.recipe import load_recipe
    from langadapt.run import run_stage

    f = Path(_write(tmp_path / "x.txt", S))
    rec = load_recipe(_recipe(tmp_path, [{"name": "x", "path": str(f)}]))
    f.unlink()
    with pytest.raises(LangadaptError, match="input not found"):
        run_stage(rec, "clean", resume=False)
    assert not (rec.run_dir / "clean" / "work").exists()


def test_a_bad_jsonl_line_found_by_a_worker_stops_the_run_naming_file_and_line(tmp_path):
    from langadapt.errors import DataError
    from langadapt.recipe import load_recipe
    from langadapt.run import run_stage

    j = tmp_path / "web.jsonl"
    j.write_text("".join(json.dumps({"text": s}, ensure_ascii=False) + "\n" for s in S) + '{"text": oops\n',
                 encoding="utf-8")
    other = _write(tmp_path / "o.txt", S)
    recipe = load_recipe(_recipe(tmp_path, [{"name": "web", "format": "jsonl", "path": str(j)}, {"name": "o", "path": other}],
                                 workers=2))
    with pytest.raises(DataError) as e:  # raised in a worker process, handed back to the stage
        run_stage(recipe, "clean", resume=False)
    assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith(f"{j}: line 7: not valid JSON")


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its exit status is left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_clean_process(tmp_path):
    import signal
    import subprocess
    import time

    # a corpus that keeps two workers busy for several seconds
    lines = [f"{S[i % len(S)][:-1]} و این سطر شماره‌ی {i} از متن آزمایشی بلند ماست." for i in range(120_000)]
    halves = [_write(tmp_path / "a.txt", lines[::2]), _write(tmp_path / "b.txt", lines[1::2])]
    recipe = _recipe(tmp_path, [{"name": "a", "path": halves[0]}, {"name": "b", "path": halves[1]}], workers=2)
    proc = subprocess.Popen([sys.executable, "-m", "langadapt", "clean", str(recipe)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    progress = tmp_path / "runs" / "t" / "clean" / "work" / "progress"
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _descendants(proc.pid)
            if len(workers) >= 3 and progress.is_dir() and len(list(progress.iterdir())) >= 2:
                break  # the manager and two workers, both reading
            time.sleep(0.1)
        assert proc.poll() is None and len(workers) >= 3, "the clean stage finished or failed before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(5)
        survivors = [p for p in workers if _alive(p)]
        assert not survivors, f"{len(survivors)} of {len(workers)} worker processes outlived the killed clean process"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_near_duplicates_removed_only_with_the_flag_and_parquet_output(tmp_path):
    import pyarrow.parquet as pq

    base = "در تعطیلات تابستان امسال همراه خانواده به روستای زیبای پدری‌ام در شمال کشور سفر کردیم."
    near = base.replace("امسال", "پارسال")
    src = [{"name": "n", "path": _write(tmp_path / "n.txt", [base, near, S[1]])}]
    _, summary = _clean(tmp_path / "off", src)
    assert summary["sentences_out"] == 3
    out, summary = _clean(tmp_path / "on", src, near_dedup=True, rejects=True, output_format="parquet")
    assert summary["sentences_out"] == 2 and summary["drops"]["near_duplicate"] == 1
    rows = [r for f in sorted((out / "documents").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(rows[0]) == ["lang_prob", "sentences", "source", "text", "type"] and len(rows) == 2
    assert [r["reason"] for r in _rejects(out)] == ["near_duplicate"]


def test_resume_skips_finished_passes_and_gives_the_same_result(tmp_path):
    from langadapt.clean import pipeline
    from langadapt.recipe import load_recipe
    from langadapt.run import run_stage

    src = [{"name": "a", "path": _write(tmp_path / "a.txt", S + S[:2])}]
    rec = load_recipe(_recipe(tmp_path, src))
    real = pipeline.QuietLocalExecutor.run
    calls = []

    def dies_in_third_pass(self):
        calls.append(str(self.logging_dir.path))
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the run were killed here
        return real(self)

    pipeline.QuietLocalExecutor.run = dies_in_third_pass
    try:
        with pytest.raises(KeyboardInterrupt):
            run_stage(rec, "clean", resume=True)
    finally:
        pipeline.QuietLocalExecutor.run = real
    logs = rec.run_dir / "clean" / "work" / "logs"
    assert (logs / "filter" / "completions" / "00000").is_file()
    stamp = (logs / "filter" / "stats" / "00000.json").stat().st_mtime_ns
    summary = run_stage(rec, "clean", resume=True)
    assert summary["sentences_out"] == len(S) and summary["drops"]["duplicate"] == 2
    assert (rec.run_dir / "clean" / "logs" / "filter" / "stats" / "00000.json").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- Slurm


FAKE_SBATCH = r'''#!/usr/bin/env python3
# Stands in for a Slurm cluster: runs every array task of the submitted script right away.
import os, re, subprocess, sys
args = sys.argv[1:]
script = args[-1]
env = dict(os.environ, SLURM_NODELIST="localhost", SLURM_JOB_ID="4242")
for a in args[:-1]:
    if a.startswith("--export=ALL,"):
        env.update(kv.split("=", 1) for kv in a[len("--export=ALL,"):].split(","))
text = open(script).read()
with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
    log.write(" ".join(args[:-1]) + "\n" + text + "\n")
m = re.search(r"#SBATCH --array=0-(\d+)", text)
if "merge_stats" in text:  # datatrove's optional stats summary job: not needed here, and slow to start
    m = None
for i in range(int(m.group(1)) + 1 if m else 0):
    subprocess.run(["bash", script], env=dict(env, SLURM_ARRAY_TASK_ID=str(i)), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("Submitted batch job 4242")
'''


def test_slurm_executor_submits_the_same_passes_as_job_arrays(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        "sbatch": FAKE_SBATCH,
        "srun": '#!/bin/bash\nwhile [[ "$1" == -* ]]; do [[ "$1" == "-n" ]] && shift; shift; done\nexec "$@"\n',
        "scontrol": "#!/bin/bash\necho localhost\n",
        "squeue": "#!/bin/bash\nexit 0\n",
    }
    for name, body in tools.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755 | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_LOG", str(tmp_path / "submitted.txt"))

    src = [{"name": "a", "path": _write(tmp_path / "a.txt", S[:3] + [S[0]])},
           {"name": "b", "path": _write(tmp_path / "b.txt", S[3:] + [S[1]])}]
    out, summary = _clean(tmp_path, src, executor="slurm", workers=None, slurm={
        "partition": "cpu", "tasks": 2, "time": "1:00:00", "poll_seconds": 1, "sbatch_args": {"account": "proj"},
        "env_command": f"export PATH={Path(sys.executable).parent}:$PATH"})
    assert sorted(s["text"] for s in _documents(out)) == sorted(S)
    assert summary["drops"]["duplicate"] == 2
    submitted = (tmp_path / "submitted.txt").read_text()
    assert submitted.count("#SBATCH --partition=cpu") >= 3 and "#SBATCH --account=proj" in submitted
    assert "#SBATCH --array=0-1" in submitted and "--dependency=afterok:4242" in submitted
    assert "launch_pickled_pipeline" in submitted


def test_slurm_needs_its_settings(tmp_path):
    from langadapt.errors import RecipeError
    from langadapt.recipe import load_recipe

    path = _recipe(tmp_path, [{"name": "a", "path": _write(tmp_path / "a.txt", S)}], executor="slurm")
    with pytest.raises(RecipeError, match="slurm"):
        load_recipe(path)
