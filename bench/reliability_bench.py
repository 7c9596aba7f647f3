"""Reliability trials of issue 17's data and recipe items: broken input, each case counted.

    python bench/reliability_bench.py                       # every section, on this checkout's src/
    python bench/reliability_bench.py --only parallel yaml  # some sections
    python bench/reliability_bench.py --src /tmp/before/src # the same trials on another source tree

Sections (the issue's item numbers):
- ``numbers`` (4): every int/float key of a full recipe set to .inf, -.inf, .nan and true.
- ``parallel`` (5): stray tabs, swapped columns, wrong-language sides, shifts at random lines, on
  the demo's 180 pairs and the real Quran translations (6,236 pairs, ``../shared/data``).
- ``longline`` (6): a single-line corpus of numbered sentences, cut into records and split.
- ``empty`` (7): corpora without text through ``langadapt clean``.
- ``paths`` (9): a held-out folder, an output_dir that is a file, eval files that are not UTF-8.
- ``yaml`` (10): alias bombs of 4 to 8 levels, an alias to its own container, 5,000 nested lists.
- ``kill`` (11): SIGKILL of ``langadapt clean`` with 2 workers, processes alive 5 s later.

Each case prints one line; each section ends with a summary line. Cases that need
``../shared/data`` (or LANGADAPT_SHARED_DATA) are left out without it. Nothing here is a
pass/fail test; the numbers go to bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LANGADAPT_SHARED_DATA") or REPO.parent / "shared" / "data")
DEMO_TSV = REPO / "data" / "demo" / "parallel" / "fa-en.tsv"
SRC = REPO / "src"


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}


def one_line_error(fn) -> tuple[str, str]:
    """('refused', message) for a one-line LangadaptError, ('accepted', '') or ('crash', exception type)."""
    from langadapt.errors import LangadaptError

    try:
        fn()
    except LangadaptError as e:
        return ("refused" if "\n" not in str(e) else "multi-line"), str(e)
    except Exception as e:  # noqa: BLE001 - what a user would see as a traceback
        return "crash", f"{type(e).__name__}: {str(e)[:120]}"
    return "accepted", ""


# --------------------------------------------------------------------------- 4: numbers in recipes


def _kinds(annotation) -> set:
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    return {annotation}


def numbers(tmp: Path) -> None:
    import yaml

    from langadapt import recipe as R

    base = {
        "name": "t", "base_model": "smollm2-135m-instruct",
        "data": {"corpus": [{"name": "c", "path": "c.txt"}], "parallel": [{"name": "p", "path": "p.tsv"}],
                 "instructions": [{"name": "i", "format": "alpaca", "path": "i.json", "language": "en"}],
                 "heldout": {}},
        "clean": {"slurm": {"partition": "x"}}, "tokenizer": {}, "align": {"monolingual": {}, "bilingual": {}},
        "pretrain": {"lora": {}}, "sft": {"lora": {}}, "eval": {"protocol": {}},
    }
    R.parse_recipe(copy.deepcopy(base))
    cases: list[tuple] = []

    def walk(model, node: dict, loc: tuple) -> None:
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            kinds = _kinds(f.annotation)
            sub = [k for k in kinds if isinstance(k, type) and issubclass(k, R.BaseModel)]
            if (int in kinds or float in kinds) and bool not in kinds:
                cases.append(loc + (name,))
            elif sub and isinstance(node.get(name), dict):
                walk(sub[0], node[name], loc + (name,))
            elif isinstance(node.get(name), list) and node[name] and isinstance(node[name][0], dict):
                args = [a for a in getattr(f.annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, R.BaseModel)]
                if args:
                    walk(args[0], node[name][0], loc + (name, 0))

    walk(R.Recipe, base, ())
    tally = {"refused, key named": 0, "refused, key not named": 0, "accepted": 0, "crash": 0}
    for loc in cases:
        for value in (math.inf, -math.inf, math.nan, True):
            data = copy.deepcopy(base)
            node = data
            for part in loc[:-1]:
                node = node[part]
            node[loc[-1]] = value
            path = tmp / "r.yaml"
            path.write_text(yaml.safe_dump(data), encoding="utf-8")
            outcome, msg = one_line_error(lambda: R.load_recipe(path, check_files=False))
            key = ".".join(str(p) for p in loc)
            if outcome == "refused":
                outcome = "refused, key named" if key in msg else "refused, key not named"
            tally[outcome] = tally.get(outcome, 0) + 1
            if not outcome.startswith("refused, key named"):
                print(f"  {key} = {value!r}: {outcome} {msg[:100]}")
    print(f"numbers: {len(cases)} numeric keys x 4 values = {4 * len(cases)} cases: {tally}")


# --------------------------------------------------------------------------- 5: parallel data


def _demo() -> list[tuple[str, str]]:
    return [tuple(x.split("\t")) for x in DEMO_TSV.read_text(encoding="utf-8").splitlines() if x]


def _read(tmp: Path, rows=None, **kw):
    """(outcome, pairs, report, message) of reading a source, on old and new reader signatures."""
    from langadapt.data.parallel import read_source
    from langadapt.errors import DataError
    from langadapt.recipe import ParallelSource

    if rows is not None:
        p = tmp / f"t{random.random():.8f}.tsv"
        p.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
        kw = {"format": "tsv", "path": str(p), **kw}
    src = ParallelSource(name="s", **kw)
    try:
        try:
            pairs, rep = read_source(src, lang="fa")
        except TypeError:  # a reader without language checks
            pairs, rep = read_source(src)
    except DataError as e:
        return "refused", None, None, str(e)
    return "accepted", pairs, rep, ""


def _line_of(msg: str) -> int | None:
    import re

    m = re.search(r":(\d+): ", msg)
    return int(m.group(1)) if m else None


def parallel(tmp: Path) -> None:
    rng = random.Random(17)
    demo = _demo()

    out, pairs, rep, _ = _read(tmp, demo)
    print(f"parallel: demo as shipped ({len(demo)} pairs): {out}, skipped {rep.skipped_count if rep else '-'}")

    # stray tab inside the English side
    ok = 0
    for _ in range(20):
        rows = [list(r) for r in demo]
        i = rng.randrange(len(rows))
        words = rows[i][1].split(" ")
        k = rng.randrange(1, len(words))
        rows[i][1] = " ".join(words[:k]) + "\t" + " ".join(words[k:])
        out, pairs, rep, msg = _read(tmp, rows)
        cut = " ".join(words[:k])
        ok += out == "accepted" and all(p.english != cut for p in pairs) and rep.skipped_count == 1
    print(f"parallel: stray tab in one English side, 20 trials: line skipped and counted, no side cut short: {ok}/20")

    # swapped columns
    for n in (1, 2, 5, 9, 18):
        found = refused = false_flags = 0
        for seed in range(5):
            picked = set(random.Random(seed * 100 + n).sample(range(len(demo)), n))
            rows = [r[::-1] if i in picked else r for i, r in enumerate(demo)]
            out, pairs, rep, msg = _read(tmp, rows)
            if out == "refused":
                refused += 1
                found += n if "swapped columns: " + str(n) in msg else 0
                continue
            got = set(rep.skipped.get("swapped columns", []))
            found += len(got & {i + 1 for i in picked})
            false_flags += rep.skipped_count - len(got & {i + 1 for i in picked})
        print(f"parallel: {n} of 180 demo pairs swapped ({n / 1.8:.1f}%), 5 trials: swapped lines found "
              f"{found}/{5 * n}, other lines flagged {false_flags}, source refused {refused}/5")

    # wrong language on one side
    found = 0
    for seed in range(10):
        rows = [list(r) for r in demo]
        i, j = random.Random(seed).sample(range(len(rows)), 2)
        rows[i][0] = rows[i][1]  # English twice
        rows[j][1] = rows[j][0]  # Persian twice
        out, pairs, rep, _ = _read(tmp, rows)
        found += out == "accepted" and {i + 1, j + 1} <= {n for v in rep.skipped.values() for n in v}
    print(f"parallel: one English-English and one Persian-Persian line in the demo, 10 trials: both found {found}/10")

    # shifts in data whose lengths are uniform (the demo) or varied (1-6 demo sentences per pair)
    def varied(n, seed):
        r = random.Random(seed)
        rows = []
        for i in range(n):
            idx = [(i + j) % len(demo) for j in range(r.randint(1, 6))]
            rows.append((" ".join(demo[k][0] for k in idx), " ".join(demo[k][1] for k in idx)))
        return rows

    for name, make in (("demo (uniform lengths)", lambda s: list(demo)), ("demo sentences, 1-6 per pair (240)", lambda s: varied(240, s))):
        refused = near = clean_refused = 0
        for seed in range(10):
            rows = make(seed)
            clean_refused += _read(tmp, rows)[0] == "refused"
            at = random.Random(seed).randrange(30, len(rows) - 60)
            shifted = rows[:at] + [(rows[i][0], rows[i + 1][1]) for i in range(at, len(rows) - 1)]
            out, _, _, msg = _read(tmp, shifted)
            refused += out == "refused"
            near += out == "refused" and _line_of(msg) is not None and abs(_line_of(msg) - (at + 1)) <= 3
        print(f"parallel: {name}, English column shifted up from a random line, 10 trials: refused {refused}/10, "
              f"at the line +-3 {near}/10; unshifted copies refused {clean_refused}/10")

    quran = DATA / "quran"
    if not quran.is_dir():
        print("parallel: ../shared/data/quran absent: real-data trials left out")
        return
    fa, en = quran / "fa.makarem.txt", quran / "en.yusufali.txt"
    t0 = time.perf_counter()
    out, pairs, rep, msg = _read(tmp, format="pair", target=str(fa), english=str(en))
    dt = time.perf_counter() - t0
    print(f"parallel: Quran fa/en as shipped ({rep.lines if rep else '?'} pairs): {out}, skipped "
          f"{rep.skipped_count if rep else msg[:80]} ({rep.summary() if rep else ''}), {dt:.1f} s")
    fa_lines, en_lines = fa.read_text(encoding="utf-8").splitlines(), en.read_text(encoding="utf-8").splitlines()
    for side in ("English", "Persian"):
        refused = near = 0
        off: list[int] = []
        trials = 20
        for seed in range(trials):
            at = random.Random(seed).randrange(50, len(en_lines) - 200)
            lines = list(en_lines if side == "English" else fa_lines)
            lines = lines[:at] + lines[at + 1:] + [lines[-1]]  # one line lost, one added at the end
            p = tmp / "shifted.txt"
            p.write_text("\n".join(lines) + "\n", encoding="utf-8")
            kw = {"target": str(fa), "english": str(p)} if side == "English" else {"target": str(p), "english": str(en)}
            out, _, _, msg = _read(tmp, format="pair", **kw)
            refused += out == "refused"
            if out == "refused" and _line_of(msg) is not None:
                off.append(abs(_line_of(msg) - (at + 1)))
                near += off[-1] <= 3
        print(f"parallel: Quran, one {side} line removed at a random line (and one added at the end), {trials} trials: "
              f"refused {refused}/{trials}, at the line +-3 {near}/{trials}, farthest {max(off, default='-')} lines off")
    found = refused = 0
    for seed in range(3):
        rows = list(zip(fa_lines, en_lines))
        picked = set(random.Random(seed).sample(range(len(rows)), len(rows) // 10))
        rows = [r[::-1] if i in picked else r for i, r in enumerate(rows)]
        out, _, rep, msg = _read(tmp, rows)
        refused += out == "refused"
    print(f"parallel: Quran as TSV with 10% of the pairs swapped, 3 trials: refused {refused}/3")


# --------------------------------------------------------------------------- 6: long lines


def longline(tmp: Path, mb: float) -> None:
    from types import SimpleNamespace

    from langadapt.clean.split import split_sentences
    from langadapt.data.corpus import read_source

    words = "امروز کتاب تازه‌ای درباره‌ی تاریخ شهرهای قدیمی ایران خواندم که بسیار لذت‌بخش بود".split()
    ends = [".", "!", "؟", "…", "."]
    n = int(mb * 1e6 / 125)
    sents = [f"جمله‌ی شماره‌ی {i} " + " ".join(words[: 3 + i % 9]) + ends[i % 5] for i in range(n)]
    f = tmp / "one-line.txt"
    f.write_text(" ".join(sents) + "\n", encoding="utf-8")
    src = SimpleNamespace(name="s", type="other", format="text", path=str(f), text_field="text", doc_per="line",
                          split="train")
    t0 = time.perf_counter()
    records, got = 0, []
    for r in read_source(src, Path):
        records += 1
        got.extend(split_sentences(r.text, "fa"))
    dt = time.perf_counter() - t0
    known = set(sents)
    frag = sum(1 for s in got if s not in known)
    print(f"longline: one line of {f.stat().st_size / 1e6:.1f} MB, {len(sents):,} sentences: {records} records, "
          f"{len(got):,} sentences out, {frag} half-sentence fragments, {dt:.1f} s read + split")


# --------------------------------------------------------------------------- 7: corpora without text


def empty(tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    d = tmp / "empty"
    d.mkdir(exist_ok=True)
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_text("\n  \n\t\n", encoding="utf-8")
    (d / "nulls.jsonl").write_text('{"text": null}\n{"text": ""}\n{"text": "  "}\n', encoding="utf-8")
    pq.write_table(pa.table({"text": pa.array([None, "", " "], pa.string())}), d / "nulls.parquet")
    (d / "english.txt").write_text("This whole corpus is written in English, not Persian.\n", encoding="utf-8")
    cases = {
        "one empty file": [{"name": "a", "path": "empty.txt"}],
        "one blank file": [{"name": "a", "path": "blank.txt"}],
        "empty + blank files": [{"name": "a", "path": "empty.txt"}, {"name": "b", "path": "blank.txt"}],
        "JSONL of null/empty/blank texts": [{"name": "a", "format": "jsonl", "path": "nulls.jsonl"}],
        "Parquet of null/empty/blank texts": [{"name": "a", "format": "parquet", "path": "nulls.parquet"}],
        "text, every sentence dropped": [{"name": "a", "path": "english.txt"}],
    }
    refused = 0
    for name, sources in cases.items():
        r = d / "r.yaml"
        r.write_text(yaml.safe_dump({"name": "t", "base_model": "smollm2-135m-instruct", "output_dir": str(d / "runs"),
                                     "data": {"corpus": sources}, "clean": {"workers": 1}}), encoding="utf-8")
        p = subprocess.run([sys.executable, "-m", "langadapt", "clean", str(r), "--force"], capture_output=True,
                           text=True, env=env(), timeout=300)
        err = p.stderr.strip().splitlines()
        refused += p.returncode == 2 and len(err) == 1
        print(f"empty: {name}: exit {p.returncode}, {err[-1][:150] if err else '(no error)'}")
    print(f"empty: {len(cases)} corpora without usable text: refused with one line {refused}/{len(cases)}")

    # counted: JSONL with k records without text among real sentences
    s = ["امروز صبح با خانواده به پارک بزرگ شهر رفتیم.", "کتابخانه‌ی محله تا ساعت هشت شب باز است."]
    (d / "mixed.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in
                                           [{"text": s[0]}, {"text": None}, {"text": ""}, {"text": s[1]}, {"text": " "}]),
                                   encoding="utf-8")
    r = d / "r.yaml"
    r.write_text(yaml.safe_dump({"name": "m", "base_model": "smollm2-135m-instruct", "output_dir": str(d / "runs"),
                                 "data": {"corpus": [{"name": "a", "format": "jsonl", "path": "mixed.jsonl"}]},
                                 "clean": {"workers": 1}}), encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "langadapt", "clean", str(r), "--force"], capture_output=True, text=True,
                       env=env(), timeout=300)
    rep = d / "runs" / "m" / "clean" / "report.json"
    drops = json.loads(rep.read_text())["totals"]["drops"] if rep.is_file() else {}
    print(f"empty: JSONL with 2 sentences and 3 records without text: exit {p.returncode}, "
          f"empty_text counted {drops.get('empty_text', 'not reported')}")


# --------------------------------------------------------------------------- 9: paths and encodings


def paths(tmp: Path) -> None:
    import yaml

    from langadapt.eval.tasks import load_tasks
    from langadapt.recipe import load_recipe

    d = tmp / "paths"
    d.mkdir(exist_ok=True)
    (d / "c.txt").write_text("یک جمله‌ی فارسی برای آزمون است.\n", encoding="utf-8")
    (d / "held").mkdir(exist_ok=True)
    (d / "runs-file").write_text("x", encoding="utf-8")

    def recipe(**extra):
        r = d / "r.yaml"
        data = {"name": "t", "base_model": "smollm2-135m-instruct", "data": {"corpus": [{"name": "c", "path": "c.txt"}]},
                "clean": {}}
        for k, v in extra.items():
            if k == "heldout":
                data["data"]["heldout"] = v
            else:
                data[k] = v
        r.write_text(yaml.safe_dump(data), encoding="utf-8")
        return r

    bad = d / "s.jsonl"
    bad.write_bytes(b'{"text": "ok", "label": "positive"}\n' * 500 + b'{"text": "caf\xe9", "label": "negative"}\n')
    suite = d / "suite.yaml"
    suite.write_text(yaml.safe_dump({"suite": "s", "tasks": [{"name": "sentiment", "language": "en",
                                                              "data": {"format": "jsonl", "path": str(bad)}}]}))
    latin1 = d / "latin1.yaml"
    latin1.write_bytes(b"suite: s\ntasks:\n  - name: sentiment # caf\xe9\n")
    cases = {
        "held-out path is a folder": lambda: load_recipe(recipe(heldout={"target": "held"})),
        "output_dir is a file": lambda: load_recipe(recipe(output_dir=str(d / "runs-file"))),
        "output_dir below a file": lambda: load_recipe(recipe(output_dir=str(d / "runs-file" / "x"))),
        "eval data file not UTF-8 (line 501)": lambda: [t.examples() for t in load_tasks([str(suite)])],
        "eval task file not UTF-8": lambda: load_tasks([str(latin1)]),
    }
    ok = 0
    for name, fn in cases.items():
        outcome, msg = one_line_error(fn)
        ok += outcome == "refused"
        print(f"paths: {name}: {outcome}: {msg[:160]}")
    print(f"paths: {len(cases)} cases: one-line error {ok}/{len(cases)}")


# --------------------------------------------------------------------------- 10: YAML expansion


def yaml_cases(tmp: Path) -> None:
    def bomb(levels: int) -> str:
        lines = ['l0: &l0 [' + ", ".join(['"lol"'] * 9) + ']']
        lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
        return "name: t\nbase_model: x\n" + "\n".join(lines) + "\n"

    cases = {f"alias bomb, {n} levels of 9 ({len(bomb(n))} bytes, 9^{n + 1} values)": bomb(n) for n in (4, 5, 6, 8)}
    cases["alias to its own list"] = "name: t\nbase_model: x\neval: &e {paths: {x: *e}}\n"
    cases["5,000 nested lists"] = "name: t\nbase_model: x\nseed: " + "[" * 5000 + "]" * 5000 + "\n"
    code = ("import sys, time; from langadapt.recipe import load_recipe; t=time.perf_counter()\n"
            "try:\n    load_recipe(sys.argv[1], check_files=False); r='accepted'\n"
            "except Exception as e:\n    r = type(e).__name__ + ': ' + str(e).splitlines()[0][:110] + (' [multi-line]' if '\\n' in str(e) else '')\n"
            "print(f'{time.perf_counter()-t:.2f}s {r}')")
    ok = 0
    for name, text in cases.items():
        f = tmp / "y.yaml"
        f.write_text(text, encoding="utf-8")
        try:
            p = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, env=env(), timeout=60)
            res = p.stdout.strip() or p.stderr.strip().splitlines()[-1]
        except subprocess.TimeoutExpired:
            res = "still running after 60 s (killed)"
        ok += "RecipeError" in res and "multi-line" not in res
        print(f"yaml: {name}: {res}")
    print(f"yaml: {len(cases)} cases: one-line RecipeError {ok}/{len(cases)}")


# --------------------------------------------------------------------------- 11: SIGKILL of clean


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                kids.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def kill(tmp: Path, trials: int) -> None:
    import yaml

    s = "امروز صبح با خانواده به پارک بزرگ شهر رفتیم و این سطر شماره‌ی {} از متن آزمایشی ماست."
    for half in (0, 1):
        (tmp / f"k{half}.txt").write_text("".join(s.format(i) + "\n" for i in range(half, 240_000, 2)), encoding="utf-8")
    survived = total = 0
    for t in range(trials):
        r = tmp / "k.yaml"
        r.write_text(yaml.safe_dump({"name": f"k{t}", "base_model": "smollm2-135m-instruct", "output_dir": str(tmp / "runs"),
                                     "data": {"corpus": [{"name": f"h{h}", "path": f"k{h}.txt"} for h in (0, 1)]},
                                     "clean": {"workers": 2}}), encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "langadapt", "clean", str(r)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env())
        progress = tmp / "runs" / f"k{t}" / "clean" / "work" / "progress"
        kids: set[int] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            kids = _descendants(proc.pid)
            if len(kids) >= 3 and progress.is_dir() and len(list(progress.iterdir())) >= 2:
                break
            time.sleep(0.1)
        time.sleep(1 + t)  # kill at a different point of the filter pass each time
        kids |= _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(5)
        alive = [p for p in kids if _alive(p)]
        rss = sum(int(Path(f"/proc/{p}/statm").read_text().split()[1]) * 4096 for p in alive if _alive(p)) / 1e6
        survived += len(alive)
        total += len(kids)
        print(f"kill: trial {t + 1}: {len(kids)} child processes, alive 5 s after SIGKILL of the parent: {len(alive)}"
              f" ({rss:.0f} MB resident)")
        for p in alive:
            os.kill(p, signal.SIGKILL)
    print(f"kill: {trials} trials: {survived} of {total} child processes outlived the killed clean process")


def main() -> None:
    global SRC
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None,
                    choices=["numbers", "parallel", "longline", "empty", "paths", "yaml", "kill"])
    ap.add_argument("--src", type=Path, default=SRC, help="source tree to test (default: this checkout's src/)")
    ap.add_argument("--long-line-mb", type=float, default=70)
    ap.add_argument("--kill-trials", type=int, default=3)
    args = ap.parse_args()
    SRC = args.src.resolve()
    sys.path.insert(0, str(SRC))
    os.environ["HF_HUB_OFFLINE"] = "1"
    only = set(args.only or ["numbers", "parallel", "longline", "empty", "paths", "yaml", "kill"])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, fn in (("numbers", numbers), ("parallel", parallel), ("longline", lambda t: longline(t, args.long_line_mb)),
                         ("empty", empty), ("paths", paths), ("yaml", yaml_cases),
                         ("kill", lambda t: kill(t, args.kill_trials))):
            if name in only:
                t0 = time.perf_counter()
                fn(tmp)
                print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
