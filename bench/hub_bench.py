"""Benchmark of issue 19: the clean stage reading a streamed Hugging Face dataset, and the token store
built by N tokenizer processes.

    python bench/hub_bench.py repo /tmp/fa-repo --mb 200          # build the local dataset repository once
    python bench/hub_bench.py clean /tmp/fa-repo --workers 1 2 --max-mb 50
    python bench/hub_bench.py store /tmp/fa-repo --workers 1 2 --mb 200
    python bench/hub_bench.py store /tmp/fa-repo --workers 1 2 --mb 10 --alternate 3   # scaling, runs in turn

``repo``: ``../shared/data`` poems and Persian Quran, ten lines to a document, repeated to ``--mb`` MB,
written as 16 Parquet files of config ``fa`` with a README whose ``configs:`` maps them, as a dataset
repository on the Hub is laid out (the data stays outside the repository).

``clean``: the whole clean stage on a recipe naming that folder as a ``format: hf`` source with
``config: fa`` (streamed, read by datatrove's HuggingFaceDatasetReader), capped at ``--max-mb`` MB.

``store``: the repository's text as clean-stage shards (4 JSONL files of sentences, ``--mb`` MB),
tokenized by SmolLM2-135M-Instruct's tokenizer into a token store: ``store.build`` in one process
(as before issue 19, with the tokenizers library's own threads, and with them off) and
``corpus_store`` with N worker processes; the stores are checked to be identical.

Needs ``psutil`` (for memory; not a langadapt dependency). Each measurement runs in a fresh process; a thread samples the memory of the process and its
children every 0.2 s: the peak of their summed proportional set sizes (forked workers share pages,
counted once) and the largest resident set of one process. The load average is printed
beside every number: the machine is shared. Nothing here is a pass/fail test; the numbers go to
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LANGADAPT_SHARED_DATA") or REPO.parent / "shared" / "data")


class Memory:
    """Peak resident memory of this process and its children, sampled in a thread."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.total = self.largest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            pss, rss = [], []
            for p in [self.me, *self.me.children(recursive=True)]:
                try:  # proportional set size: forked workers share pages with the main process
                    m = p.memory_full_info()
                    pss.append(getattr(m, "pss", m.rss))
                    rss.append(m.rss)
                except psutil.Error:
                    pass
            self.total = max(self.total, sum(pss))
            self.largest = max(self.largest, max(rss, default=0))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def load() -> float:
    return round(os.getloadavg()[0], 1)


def cpu_seconds(who: str = "all") -> float:
    """CPU time of this process ("self"), of its finished children ("children": workers are waited for
    before this is read), or both."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    own, theirs = me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime
    return {"self": own, "children": theirs}.get(who, own + theirs)


def make_repo(root: Path, mb: float) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    lines = [line.strip() for f in sorted((DATA / "poems").glob("*.txt")) + [DATA / "quran" / "fa.makarem.txt"]
             for line in open(f, encoding="utf-8") if line.strip()]
    docs = ["\n".join(lines[i:i + 10]) for i in range(0, len(lines), 10)]
    once = sum(len(d.encode()) for d in docs)
    repeat = max(1, round(mb * 1e6 / once))
    files = 16
    (root / "data" / "fa").mkdir(parents=True, exist_ok=True)
    every = docs * repeat
    for k in range(files):
        part = every[k::files]
        ids = [f"{k}-{i}" for i in range(len(part))]
        pq.write_table(pa.table({"id": ids, "text": part}), root / "data" / "fa" / f"train-{k:05d}.parquet",
                       row_group_size=2000)
    card = {"configs": [{"config_name": "fa", "data_files": [{"split": "train", "path": "data/fa/train-*.parquet"}]}]}
    (root / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n", encoding="utf-8")
    size = sum(f.stat().st_size for f in root.rglob("*.parquet"))
    return {"documents": len(docs) * repeat, "text_mb": round(once * repeat / 1e6, 1), "parquet_mb": round(size / 1e6, 1)}


def clean_once(repo: Path, workers: int, max_mb: float, out: Path) -> dict:
    import yaml
    from rich.console import Console

    from langadapt.recipe import load_recipe
    from langadapt.run import run_stage

    path = out / f"recipe-{workers}.yaml"
    path.write_text(yaml.safe_dump({
        "name": f"hub-w{workers}", "base_model": "smollm2-135m-instruct", "language": {"code": "fa"},
        "output_dir": str(out), "clean": {"workers": workers},
        "data": {"corpus": [{"name": "fa", "type": "web", "format": "hf", "path": str(repo), "config": "fa",
                             "max_bytes": int(max_mb * 1e6)}]},
    }), encoding="utf-8")
    recipe = load_recipe(path)
    before = load()
    t0, c0 = time.time(), cpu_seconds()
    with Memory() as mem:
        run_stage(recipe, "clean", resume=False, console=Console(file=open(os.devnull, "w")))
    wall, cpu = time.time() - t0, cpu_seconds() - c0
    report = json.loads((recipe.run_dir / "clean" / "report.json").read_text(encoding="utf-8"))
    mb = report["totals"]["original_bytes"] / 1e6
    return {"workers": workers, "mb": round(mb, 1), "wall_s": round(wall, 1), "stage_s": report["run"]["seconds"],
            "mb_s_per_worker": round(mb / report["run"]["seconds"] / workers, 3), "cpu_s": round(cpu, 1),
            "mb_per_cpu_s": round(mb / cpu, 3),
            "peak_rss_mb": round(mem.total / 2**20), "largest_rss_mb": round(mem.largest / 2**20),
            "sentences_in": report["totals"]["sentences_in"], "sentences_out": report["totals"]["sentences_out"],
            "load_before": before, "load_after": load()}


def shards(repo: Path, mb: float, folder: Path) -> list[Path]:
    """The repository's sentences as clean-stage JSONL shards of ``mb`` MB in all."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    files = [open(folder / f"{k:05d}.jsonl", "w", encoding="utf-8") for k in range(4)]
    left, n = mb * 1e6, 0
    for f in sorted(repo.rglob("*.parquet")):
        for batch in pq.ParquetFile(f).iter_batches(columns=["text"]):
            for doc in batch.column(0).to_pylist():
                for s in doc.split("\n"):
                    line = json.dumps({"text": s, "source": "fa", "type": "web", "lang_prob": 0.99}, ensure_ascii=False)
                    files[n % 4].write(line + "\n")
                    left -= len(s.encode())
                    n += 1
                if left <= 0:
                    break
            if left <= 0:
                break
        if left <= 0:
            break
    for f in files:
        f.close()
    return sorted(folder.glob("*.jsonl"))


def store_once(files: list[Path], mode: str, workers: int, out: Path, tag: str = "") -> dict:
    from langadapt.models import load_tokenizer
    from langadapt.train import store
    from langadapt.train.examples import iter_documents

    tok = load_tokenizer("smollm2-135m-instruct")
    mb = sum(len(t.encode()) for t in iter_documents(files)) / 1e6
    before = load()
    t0, c0, k0 = time.time(), cpu_seconds(), cpu_seconds("children")
    with Memory() as mem:
        name = f"{mode}-{workers}-{os.environ.get('TOKENIZERS_PARALLELISM', 'threads')}{tag}"
        if mode == "build":
            s = store.build(iter_documents(files), tok, out / name)
        else:
            s = store.corpus_store(files, tok, out / name, workers=workers)
    wall, cpu, kids = time.time() - t0, cpu_seconds() - c0, cpu_seconds("children") - k0
    return {"mode": mode, "workers": workers, "mb": round(mb, 1), "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "workers_cpu_s": round(kids, 1), "mb_per_cpu_s": round(mb / cpu, 2),
            "mb_s": round(mb / wall, 2), "mb_s_per_process": round(mb / wall / workers, 2),
            "tokens": s.total, "documents": s.documents, "peak_rss_mb": round(mem.total / 2**20),
            "largest_rss_mb": round(mem.largest / 2**20), "load_before": before, "load_after": load(),
            "folder": str(s.folder)}


def _child(args: list[str], env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False,
                         env={**os.environ, **(env or {})})
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"benchmark child failed: {' '.join(args)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["repo", "clean", "store", "clean-one", "store-one"])
    ap.add_argument("repo", type=Path)
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--max-mb", type=float, default=50)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mode", default="parallel")
    ap.add_argument("--alternate", type=int, default=0, help="store: N rounds of parallel builds, worker counts in turn")
    ap.add_argument("--name", default="")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    if args.what == "repo":
        if not DATA.is_dir():
            raise SystemExit(f"{DATA} is not here: this benchmark needs the shared Persian data")
        print(json.dumps(make_repo(args.repo, args.mb)))
    elif args.what == "clean-one":
        print(json.dumps(clean_once(args.repo, args.workers[0], args.max_mb, args.out)))
    elif args.what == "store-one":
        print(json.dumps(store_once(sorted(args.out.glob("clean/*.jsonl")), args.mode, args.workers[0], args.out,
                                    args.name)))
    elif args.what == "clean":
        with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
            for w in args.workers:
                print(json.dumps(_child(["clean-one", str(args.repo), "--workers", str(w), "--max-mb", str(args.max_mb),
                                         "--out", tmp])), flush=True)
    else:
        with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
            files = shards(args.repo, args.mb, Path(tmp) / "clean")
            print(json.dumps({"shards_mb": round(sum(f.stat().st_size for f in files) / 1e6, 1)}), flush=True)
            if args.alternate:  # N rounds of each worker count in turn: load on a shared machine comes and goes
                runs = [("parallel", w, {}) for _ in range(args.alternate) for w in args.workers]
            else:
                runs = [("build", 1, {}), ("build", 1, {"TOKENIZERS_PARALLELISM": "false"})]
                runs += [("parallel", w, {}) for w in args.workers]
            results = []
            for n, (mode, w, env) in enumerate(runs):
                r = _child(["store-one", str(args.repo), "--mode", mode, "--workers", str(w), "--out", tmp,
                            "--name", str(n)], env)
                r["env"] = env
                results.append(r)
                print(json.dumps(r), flush=True)
            ref = Path(results[0]["folder"])
            same = all((Path(r["folder"]) / f).read_bytes() == (ref / f).read_bytes()
                       for r in results[1:] for f in ("tokens.bin", "starts.bin"))
            print(json.dumps({"identical_stores": same}))


if __name__ == "__main__":
    main()
