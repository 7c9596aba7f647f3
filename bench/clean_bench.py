"""Benchmark of the clean stage (issue 3): throughput per worker, scaling to 2 workers, peak memory.

    python bench/clean_bench.py                      # poems + Persian Quran, 1 and 2 workers
    python bench/clean_bench.py --workers 1 2 --repeat 2
    python bench/clean_bench.py --long-line-mb 64     # also: one 64 MB line through the whole stage
    python bench/clean_bench.py --reader-gb 1         # also: read a 1 GB single-line file (reader only)

Each configuration runs in a fresh process (so peak memory is its own): the full stage via
``run_stage`` on a recipe over ``../shared/data/poems`` and ``../shared/data/quran/fa.makarem.txt``.
Reported: wall seconds, MB of raw input per second per worker (wall), MB per CPU-second (the
workers' own CPU time, which other load on the machine inflates less than wall time), peak
resident memory of the main process and of the largest worker, and the stage's report table.
Nothing here is a pass/fail test; the numbers go to bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def recipe_text(out: Path, workers: int, sources: list[tuple[str, str, Path]]) -> str:
    import yaml

    return yaml.safe_dump({
        "name": f"bench-w{workers}", "base_model": "smollm2-135m-instruct", "language": {"code": "fa"},
        "output_dir": str(out), "clean": {"workers": workers},
        "data": {"corpus": [{"name": n, "type": t, "format": "text", "path": str(p)} for n, t, p in sources]},
    })


def one(workers: int, out: Path, sources_json: str) -> dict:
    """Run the stage once in this process; print a JSON line of measurements."""
    from langadapt.recipe import load_recipe
    from langadapt.run import run_stage

    sources = [(n, t, Path(p)) for n, t, p in json.loads(sources_json)]
    path = out / f"recipe-w{workers}.yaml"
    path.write_text(recipe_text(out, workers, sources), encoding="utf-8")
    recipe = load_recipe(path)
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    k0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    from rich.console import Console

    run_stage(recipe, "clean", resume=False, console=Console(file=open(os.devnull, "w")))
    wall = time.time() - t0
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = json.loads((recipe.run_dir / "clean" / "report.json").read_text(encoding="utf-8"))
    cpu = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) + (k1.ru_utime + k1.ru_stime - k0.ru_utime - k0.ru_stime)
    mb = report["totals"]["original_bytes"] / 1e6
    return {
        "workers": workers, "wall_s": round(wall, 2), "stage_s": report["run"]["seconds"], "cpu_s": round(cpu, 2),
        "mb": round(mb, 3), "mb_s_per_worker": round(mb / wall / workers, 3), "mb_per_cpu_s": round(mb / cpu, 3),
        "peak_rss_main_mb": round(c1.ru_maxrss / 1024, 1), "peak_rss_worker_mb": round(k1.ru_maxrss / 1024, 1),
        "report": report,
    }


def reader_only(gb: float, tmp: Path) -> dict:
    """Read a single-line file of ``gb`` GB through the corpus reader; peak memory stays flat."""
    from types import SimpleNamespace

    from langadapt.data.corpus import plan_pieces, read_piece

    f = tmp / "one-line.txt"
    chunk = (DATA / "quran" / "fa.makarem.txt").read_bytes().replace(b"\n", b" ")
    with open(f, "wb") as out:
        left = int(gb * 1e9)
        while left > 0:
            out.write(chunk[:left])
            left -= len(chunk)
    src = SimpleNamespace(name="one", type="other", format="text", path=str(f), text_field="text", doc_per="line", split="train")
    t0 = time.time()
    records = nbytes = 0
    for task in plan_pieces([src], Path, 1):
        for piece in task:
            for r in read_piece(piece, src):
                records += 1
                nbytes += r.nbytes
    wall = time.time() - t0
    f.unlink()
    return {"gb": gb, "records": records, "bytes": nbytes, "wall_s": round(wall, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"benchmark child failed: {' '.join(args)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1, help="runs per worker count (the fastest is reported)")
    ap.add_argument("--long-line-mb", type=float, default=0, help="also clean one line of this many MB")
    ap.add_argument("--reader-gb", type=float, default=0, help="also read a single-line file of this many GB")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--reader", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--sources", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one is not None:
        res = one(args.one, Path(args.out), args.sources)
        print(json.dumps(res, ensure_ascii=False))
        return
    if args.reader is not None:
        print(json.dumps(reader_only(args.reader, Path(args.out))))
        return

    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is not here: this benchmark needs the shared Persian data")
    from langadapt.clean.report import markdown_table

    sources = [("poems", "poems", DATA / "poems"), ("quran", "other", DATA / "quran" / "fa.makarem.txt")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="clean-bench-") as tmp:
        for w in args.workers:
            runs = [_child(["--one", str(w), "--out", tmp, "--sources", json.dumps([[n, t, str(p)] for n, t, p in sources])])
                    for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["wall_s"])
            results[w] = best
            print(f"workers={w}: {best['wall_s']} s wall ({best['stage_s']} s in the stage), "
                  f"{best['mb_s_per_worker']} MB/s per worker, {best['mb_per_cpu_s']} MB per CPU-second, "
                  f"peak RSS main {best['peak_rss_main_mb']} MB, worker {best['peak_rss_worker_mb']} MB", flush=True)
        if 1 in results and 2 in results:
            print(f"speed-up with 2 workers: {results[1]['wall_s'] / results[2]['wall_s']:.2f}x (wall)")
        first = results[args.workers[0]]["report"]
        print(markdown_table(first))
        poems = next(r for r in first["sources"] if r["source"] == "poems")
        print(f"poems: {poems['drops']['language']:,} of {poems['sentences_in']:,} sentences "
              f"({100 * poems['drops']['language'] / max(1, poems['sentences_in']):.1f}%) dropped by language id "
              f"at threshold {first['run']['lang_threshold']}")
        if args.long_line_mb:
            f = Path(tmp) / "long.txt"
            chunk = (DATA / "quran" / "fa.makarem.txt").read_bytes().replace(b"\n", b" ")
            with open(f, "wb") as out:
                left = int(args.long_line_mb * 1e6)
                while left > 0:
                    out.write(chunk[:left])
                    left -= len(chunk)
            res = _child(["--one", "1", "--out", tmp, "--sources", json.dumps([["long", "other", str(f)]])])
            print(f"one {args.long_line_mb:g} MB line: {res['wall_s']} s, peak RSS {res['peak_rss_main_mb']} MB, "
                  f"{res['report']['totals']['sentences_in']:,} sentences in, {res['report']['totals']['sentences_out']:,} out")
        if args.reader_gb:
            res = _child(["--reader", str(args.reader_gb), "--out", tmp])
            print(f"reader over a {res['gb']:g} GB single-line file: {res['records']:,} records, {res['wall_s']} s, "
                  f"peak RSS {res['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
