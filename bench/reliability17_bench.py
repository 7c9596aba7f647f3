"""Reliability trials of issue 17's items 1, 2, 3, 4 (training side) and 8, each case counted.

    python bench/reliability17_bench.py                        # every section, on this checkout's src/
    python bench/reliability17_bench.py --only export diverge  # some sections
    python bench/reliability17_bench.py --src /tmp/before/src  # the same trials on another source tree

Sections (the issue's item numbers):
- ``export`` (1): ``langadapt export --force`` into the run folder, its parent, a stage folder, a folder
  of someone's files, ``.`` and ``..``, and over an earlier export.
- ``resume`` (2): ``langadapt align`` killed (SIGKILL) after its 3rd, 6th and 9th step checkpoint of 12,
  then the same command again without flags; the final weights against an uninterrupted run.
- ``leftovers`` (3): ``langadapt run`` killed while writing align's final model (after the weights,
  during the tokenizer files) and while writing its completion marker, then run again.
- ``diverge`` (4): align with learning rates that diverge (1e30 with and without gradient clipping,
  1e20, 1e12 on the monolingual step; 1e30 on the bilingual step).
- ``early`` (8): the demo recipe (training cut to 2 steps a stage, eval to 4 examples) with broken
  inputs through ``langadapt run``: how long until the error, after which stages. Slow (minutes per
  case on the code before, which meets the error late).

Stages run on a 2-layer Llama built here (align, with a word-level tokenizer), except ``early``,
which runs the demo on SmolLM2. Each case prints one line; the numbers go to bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{REPO / 'tests'}", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", **extra}


def cli(*args, cwd=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "langadapt", *map(str, args)], capture_output=True, text=True,
                          env=env(), cwd=cwd, timeout=timeout)


def outcome(p: subprocess.CompletedProcess) -> str:
    err = [x for line in p.stderr.strip().splitlines() for x in line.split("\r")]
    if "Traceback (most recent call last)" in p.stderr:
        return f"exit {p.returncode}, traceback ({err[-1][:90] if err else ''})"
    # a progress bar's last frame may share the error's line (no newline after it)
    last = [x[x.index("error: "):] for x in err if "error: " in x]
    return f"exit {p.returncode}" + (f": {last[-1][:150]}" if last else "")


def snapshot(*folders: Path) -> dict[Path, bytes]:
    return {f: f.read_bytes() for d in folders if d.exists() for f in d.rglob("*") if f.is_file()}


def lost(before: dict[Path, bytes]) -> int:
    """Files of ``before`` now gone or changed."""
    return sum(1 for f, b in before.items() if not f.is_file() or f.read_bytes() != b)


# --------------------------------------------------------------------------- a tiny run to work on


def workspace(root: Path, **align) -> Path:
    """The align stage's test workspace (tests/test_align_stage.py), a recipe file for it, clean and
    tokenizer marked done; returns the recipe file."""
    import yaml
    from test_align_stage import make_workspace

    from langadapt.files import write_json
    from langadapt.recipe import load_recipe
    from langadapt.run import stage_hash

    ws = make_workspace(root)
    step = {"max_steps": 12, "batch_size": 2, "seq_len": 16, "lr": 3e-2, "warmup_ratio": 0.0, "save_every": 3}
    mono, bil = {**step, **align.get("monolingual", {})}, {**step, "max_steps": 4, **align.get("bilingual", {})}
    recipe = {"name": "t", "base_model": str(ws / "base"), "output_dir": str(ws / "runs"),
              "data": {"corpus": [{"name": "c", "path": str(ws / "pairs.tsv")}],
                       "parallel": [{"name": "p", "format": "tsv", "path": str(ws / "pairs.tsv")}],
                       "heldout": {"target": str(ws / "held_fa.txt"), "english": str(ws / "held_en.txt")}},
              "clean": {}, "tokenizer": {}, "align": {"monolingual": mono, "bilingual": bil}}
    path = ws / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    r = load_recipe(path)
    for st in ("clean", "tokenizer"):
        write_json(r.run_dir / st / "COMPLETE.json", {"stage": st, "hash": stage_hash(r, st)})
    return path


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def nonfinite(folder: Path) -> int:
    import torch

    return sum(int((~torch.isfinite(t)).sum()) for t in weights(folder).values() if t.is_floating_point())


# --------------------------------------------------------------------------- 1: export


def export(tmp: Path) -> None:
    from test_export import make_run

    cases = {}
    for case in ("run", "parent", "stage", "mine", "dot", "dotdot", "earlier"):
        root = tmp / f"export-{case}"
        run, _ = make_run(root, tied=True)
        (run / "clean").mkdir()
        (run / "clean" / "COMPLETE.json").write_text("{}")
        mine = root / "mine"
        mine.mkdir()
        for i in range(5):
            (mine / f"notes{i}.txt").write_text("mine")
        work = root / "a" / "work"
        work.mkdir(parents=True)
        (work / "keep.txt").write_text("mine")
        out = {"run": run, "parent": run.parent, "stage": run / "align", "mine": mine, "dot": ".", "dotdot": "..",
               "earlier": root / "exported"}[case]
        if case == "earlier":
            first = cli("export", run, "--stage", "sft", "--out", out, cwd=work)
            assert first.returncode == 0, first.stderr[-500:]
        before = snapshot(run, mine, work)
        if case == "earlier":
            before = {f: b for f, b in before.items() if out not in f.parents}  # the export it replaces
        p = cli("export", run, "--stage", "sft", "--out", out, "--force", cwd=work)
        gone = lost(before)
        cases[case] = (p, gone)
        print(f"export --out {case:8} --force: {outcome(p)}; files lost or overwritten: {gone} of {len(before)}",
              flush=True)
    kept = sum(1 for c, (p, gone) in cases.items()
               if c != "earlier" and p.returncode == 2 and "Traceback" not in p.stderr and not gone)
    print(f"export: {kept} of 6 destructive or unclear targets refused with nothing lost; over an earlier export: "
          f"{outcome(cases['earlier'][0])}")


# --------------------------------------------------------------------------- 2: resume by default


def _kill_when(cmd_args, cwd, marker: Path, timeout=600) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "langadapt", *map(str, cmd_args)], cwd=cwd, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if marker.is_file():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return -9
        time.sleep(0.02)
    proc.wait()
    return proc.returncode


def resume(tmp: Path) -> None:
    straight = workspace(tmp / "resume-straight")
    p = cli("align", straight)
    assert p.returncode == 0, p.stderr[-1000:]
    expect = weights(straight.parent / "runs" / "t" / "align" / "model")
    resumed = same = 0
    for k in (3, 6, 9):
        r = workspace(tmp / f"resume-{k}")
        ckpt = r.parent / "runs" / "t" / "align" / "checkpoints" / "monolingual" / f"step-{k}" / "trainer_state.json"
        rc = _kill_when(["align", r], r.parent, ckpt)
        t0 = time.time()
        p = cli("align", r)
        secs = time.time() - t0
        got = weights(r.parent / "runs" / "t" / "align" / "model") if p.returncode == 0 else {}
        identical = bool(got) and all(got[n].equal(expect[n]) for n in expect)
        used = "resuming from" in p.stdout and f"step {k}" in p.stdout
        resumed += used
        same += identical
        line = next((x for x in p.stdout.splitlines() if "checkpoint" in x), "(no line about the checkpoint)")
        print(f"resume: killed after step {k} of 12 (rc {rc}); again without flags: {outcome(p)}, {secs:.1f} s, "
              f"resumed from step {k}: {used}, weights identical to an uninterrupted run: {identical}; says: {line[:120]}",
              flush=True)
    print(f"resume: {resumed} of 3 reruns resumed from the checkpoint; {same} of 3 ended bit-identical to an "
          "uninterrupted run")


# --------------------------------------------------------------------------- 3: leftovers of a killed final write

KILL_DURING = """
import os, signal, sys
point = sys.argv[2]
if point == "weights":  # after the model's weights are in the temporary folder, before the tokenizer
    from transformers import PreTrainedModel
    orig = PreTrainedModel.save_pretrained
    def save(self, path, *a, **kw):
        orig(self, path, *a, **kw)
        if "/.tmp-model-" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
    PreTrainedModel.save_pretrained = save
elif point == "tokenizer":  # in the middle of the tokenizer files
    from transformers import PreTrainedTokenizerBase
    orig = PreTrainedTokenizerBase.save_pretrained
    def save(self, path, *a, **kw):
        if "/.tmp-model-" in str(path):
            (__import__("pathlib").Path(path) / "tokenizer.json").write_text("{")
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(self, path, *a, **kw)
    PreTrainedTokenizerBase.save_pretrained = save
elif point == "marker":  # the completion marker, written last
    real = os.replace
    def replace(a, b, *x, **kw):
        if "COMPLETE.json" in str(b) and "/align/" in str(b):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(a, b, *x, **kw)
    os.replace = replace
from langadapt.cli import main
main(["run", sys.argv[1]])
"""


def leftovers(tmp: Path) -> None:
    script = tmp / "kill_during.py"
    script.write_text(KILL_DURING, encoding="utf-8")
    clean = 0
    for point in ("weights", "tokenizer", "marker"):
        r = workspace(tmp / f"left-{point}", monolingual={"max_steps": 4}, bilingual={"max_steps": 2})
        stage = r.parent / "runs" / "t" / "align"
        k = subprocess.run([sys.executable, str(script), str(r), point], capture_output=True, text=True, env=env(),
                           timeout=600)
        left_before = [p for p in stage.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        p = cli("run", r)
        left = [p for p in stage.rglob("*") if p.name.startswith((".tmp-", ".old-"))]
        size = sum(f.stat().st_size for x in left for f in ([x] if x.is_file() else x.rglob("*")) if f.is_file())
        clean += not left and p.returncode == 0
        print(f"leftovers: killed during the {point} write (rc {k.returncode}, {len(left_before)} temporary entries); "
              f"run again: {outcome(p)}, marker {'written' if (stage / 'COMPLETE.json').is_file() else 'missing'}; "
              f"left in the finished stage: {len(left)} ({size / 1024:.0f} KiB)", flush=True)
    print(f"leftovers: {clean} of 3 finished stages without a leftover")


# --------------------------------------------------------------------------- 4: divergence


def diverge(tmp: Path) -> None:
    cases = [("monolingual lr 1e30", {"monolingual": {"lr": 1e30}}),
             ("monolingual lr 1e30, max_grad_norm null", {"monolingual": {"lr": 1e30, "max_grad_norm": None}}),
             ("monolingual lr 1e20", {"monolingual": {"lr": 1e20}}),
             ("monolingual lr 1e12", {"monolingual": {"lr": 1e12}}),
             ("bilingual lr 1e30", {"bilingual": {"lr": 1e30}})]
    stopped = 0
    for i, (what, align) in enumerate(cases):
        r = workspace(tmp / f"diverge-{i}", **align)
        t0 = time.time()
        p = cli("align", r)
        stage = r.parent / "runs" / "t" / "align"
        marker = (stage / "COMPLETE.json").is_file()
        bad = nonfinite(stage / "model") if (stage / "model").is_dir() else None
        stopped += p.returncode == 2 and not marker and bad is None
        print(f"diverge: {what}: {outcome(p)} after {time.time() - t0:.1f} s; COMPLETE.json: {marker}; "
              f"model saved: {'no' if bad is None else f'yes, {bad:,} NaN/Inf weights'}", flush=True)
    print(f"diverge: {stopped} of {len(cases)} stopped with one line, no model and no marker")


# --------------------------------------------------------------------------- 8: errors before the first stage


def _demo_recipe(root: Path, edit=None) -> Path:
    import shutil

    import yaml

    shutil.copytree(REPO / "data" / "demo", root / "data")
    r = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    text = json.dumps(r).replace("../data/demo/", "data/")
    r = json.loads(text)
    r["output_dir"] = str(root / "runs")
    r["clean"]["workers"] = 1
    r["align"]["monolingual"]["max_steps"] = r["align"]["bilingual"]["max_steps"] = 2
    r["pretrain"]["max_steps"] = r["sft"]["max_steps"] = 2
    r["sft"]["samples"] = 2
    r["eval"]["max_examples"] = 4
    if edit:
        edit(root, r)
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump(r, allow_unicode=True), encoding="utf-8")
    return path


def _broken_tsv(root, r):
    tsv = root / "data" / "parallel" / "fa-en.tsv"
    lines = tsv.read_text(encoding="utf-8").splitlines()
    tsv.write_text("\n".join(x.replace("\t", "\t\t", 1) if i % 5 == 2 else x for i, x in enumerate(lines)) + "\n",
                   encoding="utf-8")


def _no_such_model(root, r):
    r["base_model"] = "langadapt-bench/no-such-model"


def _eval_labels(bad: str):
    def edit(root, r):
        import csv

        f = root / "data" / "eval" / "fa" / "entailment.csv"
        with open(f, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        rows[2][3] = rows[5][3] = bad  # '-': as the official ParsiNLU test file; 'x': a label nobody knows
        with open(f, "w", encoding="utf-8", newline="") as fh:
            csv.writer(fh).writerows(rows)
        (root / "suite.yaml").write_text("suite: mine\ntasks:\n  - name: entailment\n    language: fa\n"
                                         f"    data: {{format: parsinlu_entailment, path: {f}}}\n", encoding="utf-8")
        r["eval"]["tasks"] = [str(root / "suite.yaml")]
    return edit


def _dash_eval_only(root, r):
    _eval_labels("-")(root, r)
    for st in ("clean", "tokenizer", "align", "pretrain", "sft"):
        r.pop(st, None)
    r["eval"]["stages"] = ["base"]


def _dolly(root, r):
    r["data"]["instructions"][1]["format"] = "dolly"


def _jsonl_field(root, r):
    f = root / "data" / "corpus" / "news.jsonl"
    rows = [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines()]
    rows[20] = {"title": "x"}
    f.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")


def early(tmp: Path, cases: list[str] | None = None) -> None:
    all_cases = {"parsinlu-dash": ("2 eval rows labelled '-' (as the ParsiNLU test file)", _eval_labels("-")),
                 "tsv": ("parallel TSV with 20% stray tabs", _broken_tsv),
                 "hub": ("base_model a hub id that does not exist (offline)", _no_such_model),
                 "dash-eval-only": ("the same, eval of the base model alone", _dash_eval_only),
                 "eval-label": ("eval file with 2 unknown labels", _eval_labels("x")),
                 "dolly": ("alpaca instructions declared dolly", _dolly),
                 "jsonl": ("corpus JSONL record 21 without its text field", _jsonl_field)}
    for name in cases or list(all_cases):
        what, edit = all_cases[name]
        root = tmp / f"early-{name}"
        r = _demo_recipe(root, edit)
        t0 = time.time()
        p = cli("run", r, timeout=3600)
        secs = time.time() - t0
        done = [st for st in ("clean", "tokenizer", "align", "pretrain", "translate", "sft", "eval")
                if (root / "runs" / "demo" / st / "COMPLETE.json").is_file()]
        started = [st for st in ("clean", "tokenizer", "align", "pretrain", "translate", "sft", "eval")
                   if (root / "runs" / "demo" / st).is_dir()]
        results = root / "runs" / "demo" / "eval" / "results.json"
        counted = ""
        if results.is_file():
            tasks = json.loads(results.read_text(encoding="utf-8"))["tasks"]
            counted = "; results.json: " + ", ".join(f"{t['id']} n={t['n']} unlabeled={t.get('unlabeled')}"
                                                     for t in tasks)
        print(f"early: {what}: {outcome(p)} after {secs:.0f} s; stages finished before: {', '.join(done) or 'none'}"
              f" (started: {', '.join(started) or 'none'}){counted}", flush=True)


def main() -> None:
    global SRC
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sections = ["export", "resume", "leftovers", "diverge", "early"]
    ap.add_argument("--only", nargs="*", default=None, choices=sections)
    ap.add_argument("--early", nargs="*", default=None, help="early: only these cases")
    ap.add_argument("--src", type=Path, default=SRC, help="source tree to test (default: this checkout's src/)")
    args = ap.parse_args()
    SRC = args.src.resolve()
    sys.path[:0] = [str(SRC), str(REPO / "tests")]
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, fn in (("export", export), ("resume", resume), ("leftovers", leftovers), ("diverge", diverge),
                         ("early", lambda t: early(t, args.early))):
            if name in (args.only or sections):
                t0 = time.perf_counter()
                fn(tmp)
                print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
