"""`langadapt check` and run's checks before the first stage (issue 17 item 8): broken inputs are found on
their first records, before any stage runs, as one line naming the file and line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import DEMO, tiny_llama
from langadapt import stages
from langadapt.cli import main
from langadapt.errors import LangadaptError

RAN: list[str] = []


def fake_stage(ctx):
    RAN.append(ctx.stage)
    return {}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """The demo's data and recipe, a tiny local base model, and every stage replaced by a recorder."""
    for spec in stages.TABLE:
        monkeypatch.setitem(stages.BY_NAME, spec.name, replace(spec, entry=f"{__name__}:fake_stage"))
    RAN.clear()
    shutil.copytree(DEMO, tmp_path / "data")
    tiny_llama(vocab_size=49152).config.save_pretrained(tmp_path / "base")
    recipe = (Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text(encoding="utf-8")
    recipe = recipe.replace("../data/demo/", "data/").replace("base_model: smollm2-135m-instruct",
                                                                         f"base_model: {tmp_path / 'base'}")
    (tmp_path / "r.yaml").write_text(recipe + f"\noutput_dir: {tmp_path / 'runs'}\n", encoding="utf-8")
    return tmp_path


def refused(ws: Path, capsys, match: str) -> str:
    """`check` and `run` both refuse the recipe with one line matching ``match``, and no stage has run."""
    capsys.readouterr()
    assert main(["check", str(ws / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and __import__("re").search(match, err), err
    assert main(["run", str(ws / "r.yaml")]) == 2
    assert RAN == [] and not (ws / "runs").exists()
    return err


def test_the_demo_inputs_pass_and_check_says_what_it_read(workspace, capsys):
    assert main(["check", str(workspace / "r.yaml")]) == 0
    out = capsys.readouterr().out
    assert "✓ data.parallel[0] 'demo-pairs': tsv, 180 lines, 180 pairs" in out
    assert "✓ data.corpus[1] 'news': jsonl, 30 records: 30 with text" in out
    assert "✓ eval task fa/entailment (demo): 27 examples" in out
    assert "  clean: runs (not run yet)" in out and "ready: 17 inputs" in out
    assert RAN == []


def test_a_tsv_with_a_fifth_of_its_lines_broken_is_refused_before_the_first_stage(workspace, capsys):
    tsv = workspace / "data" / "parallel" / "fa-en.tsv"
    lines = tsv.read_text(encoding="utf-8").splitlines()
    lines = [line.replace("\t", "\t\t", 1) if i % 5 == 2 else line for i, line in enumerate(lines)]  # 20% stray tabs
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    refused(workspace, capsys, rf"{tsv}:3: refusing parallel source 'demo-pairs': .* not 2 tab-separated columns")


def test_a_shifted_parallel_file_is_refused_naming_where_the_shift_starts(workspace, capsys, shared_data):
    fa = (shared_data / "quran" / "fa.makarem.txt").read_text(encoding="utf-8").splitlines()[:1500]
    en = (shared_data / "quran" / "en.yusufali.txt").read_text(encoding="utf-8").splitlines()[:1500]
    del en[90]  # line 91 lost on the English side: every later pair is misaligned
    (workspace / "data" / "fa.txt").write_text("\n".join(fa[:-1]) + "\n", encoding="utf-8")
    (workspace / "data" / "en.txt").write_text("\n".join(en) + "\n", encoding="utf-8")
    r = workspace / "r.yaml"
    r.write_text(r.read_text().replace("{name: demo-pairs, format: tsv, path: data/parallel/fa-en.tsv}",
                                       "{name: quran, format: pair, target: data/fa.txt, english: data/en.txt}"))
    refused(workspace, capsys, r"fa.txt:(8\d|9\d): refusing parallel source 'quran': from line (8\d|9\d)")


def test_a_corpus_without_its_text_field_is_refused_with_its_line(workspace, capsys):
    news = workspace / "data" / "corpus" / "news.jsonl"
    rows = [json.loads(x) for x in news.read_text(encoding="utf-8").splitlines()]
    rows[3] = {"title": rows[3].get("title", "x")}
    news.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
    refused(workspace, capsys, rf"{news}: line 4: no field 'body'")


def test_instructions_in_another_format_than_declared_are_refused(workspace, capsys):
    r = workspace / "r.yaml"
    r.write_text(r.read_text().replace("{name: alpaca-fa, format: alpaca,", "{name: alpaca-fa, format: dolly,"))
    refused(workspace, capsys, r"data.instructions\[1\] 'alpaca-fa': no record read is a usable 'dolly' record")


def test_eval_task_files_are_read_before_training_and_unlabeled_rows_only_counted(workspace, capsys):
    import csv

    ent = workspace / "data" / "eval" / "fa" / "entailment.csv"
    with open(ent, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    rows[2][3], rows[5][3] = "-", ""  # as in the official ParsiNLU test file

    def save():
        with open(ent, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(rows)

    save()
    suite = workspace / "suite.yaml"
    suite.write_text("suite: mine\ntasks:\n  - name: entailment\n    language: fa\n"
                     f"    data: {{format: parsinlu_entailment, path: {ent}}}\n", encoding="utf-8")
    r = workspace / "r.yaml"
    r.write_text(r.read_text().replace("tasks: [demo]", f"tasks: [{suite}]"))
    assert main(["check", str(r)]) == 0
    assert "✓ eval task fa/entailment (mine): 25 examples, 2 rows without a label (skipped)" in capsys.readouterr().out
    rows[3][3] = "maybe"
    save()
    refused(workspace, capsys, rf"{ent}:4: label 'maybe' is not in the task's label_map")


def test_a_hub_model_that_is_not_there_is_refused_before_the_first_stage(workspace, capsys, monkeypatch):
    r = workspace / "r.yaml"
    r.write_text(r.read_text().replace(f"base_model: {workspace / 'base'}", "base_model: nobody/no-such-model"))
    monkeypatch.setenv("HF_HUB_CACHE", str(workspace / "hub-cache"))
    refused(workspace, capsys, r"base_model: 'nobody/no-such-model' is not in the local Hugging Face cache and "
                               r"HF_HUB_OFFLINE=1 is set")
    # in the cache: fine offline
    snap = workspace / "hub-cache" / "models--nobody--no-such-model" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert main(["check", str(r)]) == 0
    assert "✓ base_model: model in the local cache (HF_HUB_OFFLINE=1)" in capsys.readouterr().out


class FakeHub:
    """HfApi's two calls, answering from a table; every call is recorded (the check makes one per id)."""

    calls: list[str] = []

    def __init__(self, *a, **kw):
        pass

    def _answer(self, repo_id, timeout=None, **kw):
        from types import SimpleNamespace

        from huggingface_hub.errors import RepositoryNotFoundError

        FakeHub.calls.append(repo_id)
        assert timeout is not None and timeout <= 30
        if repo_id == "owner/unreachable":
            raise OSError("[Errno -2] Name or service not known")
        if repo_id.startswith("owner/"):
            return SimpleNamespace(card_data={"configs": [{"config_name": "fa"}, {"config_name": "en"}]})
        raise RepositoryNotFoundError("404 Client Error", response=SimpleNamespace(headers={}, request=None))

    model_info = dataset_info = _answer


@pytest.mark.parametrize("repo, config, error", [
    ("owner/model", None, None),
    ("nobody/model", None, r"no model 'nobody/model' on the Hugging Face hub"),
    ("owner/unreachable", None, r"cannot check 'owner/unreachable': the Hugging Face hub could not be reached "
                                r"\(OSError: .*Name or service not known\) and the local cache does not hold it"),
    ("owner/data", "fa", None),
    ("owner/data", "de", r"dataset 'owner/data' has no config 'de' \(configs: fa, en\)"),
])
def test_hub_ids_are_resolved_with_one_call_each(monkeypatch, tmp_path, repo, config, error):
    import huggingface_hub

    from langadapt.check import check_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls.clear()
    kind = "dataset" if config else "model"
    if error is None:
        assert check_hub(repo, kind=kind, where="x", config=config) == "on the Hugging Face hub"
    else:
        with pytest.raises(LangadaptError, match=error):
            check_hub(repo, kind=kind, where="x", config=config)
    assert FakeHub.calls == [repo]
