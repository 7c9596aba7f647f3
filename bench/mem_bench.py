"""Benchmark: peak resident memory and bytes written by the demo, per stage and in all (issue 16).

    python bench/mem_bench.py [--output-dir /tmp/mem-runs] [--src SRC] [--recipe configs/demo.yaml]
                              [--stages clean,tokenizer] [--json out.json] [--no-reset]

Runs ``/usr/bin/time -v python -m langadapt run RECIPE --output-dir DIR`` (or one ``langadapt STAGE``
command per stage with ``--stages``) with ``PYTHONPATH=SRC`` (default: this checkout's ``src``; point it
at an older tree to measure that), and watches the langadapt process from outside, so it measures code
that records nothing itself: every 0.2 s it reads the process's ``VmHWM``/``VmRSS`` and ``write_bytes``
(``/proc/PID/io``, which includes reaped children such as the clean stage's workers) and which stage
is running (``STARTED.json`` without ``COMPLETE.json``). At each stage boundary it records the peak
since the last one and resets the peak (``/proc/PID/clear_refs``: 5), so each stage gets its own exact
peak; the whole run's peak is then the largest of them (the reset also resets what ``/usr/bin/time``
reports). ``--no-reset`` leaves the kernel's peak alone, for a ``/usr/bin/time`` figure of the whole run
(code that records per-stage peaks in its stage summaries, issue 16, is read from those, printed beside).
Prints a table and ``du`` of the run folder (hard links counted once); ``--json`` keeps all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("clean", "tokenizer", "align", "pretrain", "translate", "sft", "eval")  # the order runs write them


def _status(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", text, re.M)}


def _written(pid: int) -> int | None:
    try:
        m = re.search(r"^write_bytes: (\d+)", Path(f"/proc/{pid}/io").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}/task").is_dir() else []:
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                kids = []
            out += kids
            todo += kids
    return out


def _current(run_dir: Path) -> str | None:
    running = [s for s in STAGES if (run_dir / s / "STARTED.json").is_file() and not (run_dir / s / "COMPLETE.json").is_file()]
    return running[-1] if running else None


def _find_python(time_pid: int, timeout: float = 30.0) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        kids = _descendants(time_pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise RuntimeError("the langadapt process did not start")


def _parse_time(text: str) -> dict:
    keys = {"Maximum resident set size (kbytes)": "max_rss_kb", "File system outputs": "fs_outputs_blocks",
            "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall", "User time (seconds)": "user_s",
            "System time (seconds)": "sys_s", "Exit status": "exit_status"}
    out = {}
    for line in text.splitlines():
        line = line.strip()
        for k, name in keys.items():
            if line.startswith(k + ":"):
                out[name] = line.rsplit(": ", 1)[1].strip() if name == "wall" else float(line.rsplit(":", 1)[1])
    return out


def watch(cmd: list[str], run_dir: Path, env: dict, *, reset: bool, log_path: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time -v and watch its langadapt process; per-stage peaks and bytes."""
    time_out = log_path.with_suffix(".time")
    load_before = os.getloadavg()
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", str(time_out), *cmd], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO)
        pid = _find_python(proc.pid)
        segments: dict[str, dict] = {}
        seg, seg_written = "start-up", _written(pid) or 0
        rss_max, workers, loads = 0, 0, []
        last_load, last_status, last_written = 0.0, {}, None
        while proc.poll() is None:
            st = _status(pid)
            if not st:
                time.sleep(0.2)
                continue
            rss_max = max(rss_max, st.get("VmRSS", 0))
            for kid in _descendants(pid):
                workers = max(workers, _status(kid).get("VmHWM", 0))
            now = _current(run_dir) or ("between stages" if segments else "start-up")
            if time.time() - last_load > 30:
                loads.append(round(os.getloadavg()[0], 2))
                last_load = time.time()
            if now != seg:
                w = _written(pid) or seg_written
                entry = segments.setdefault(seg, {"peak_rss_mb": 0.0, "written_mb": 0.0, "workers_peak_rss_mb": 0.0})
                entry["peak_rss_mb"] = max(entry["peak_rss_mb"], st.get("VmHWM", 0) / 1024)
                entry["written_mb"] += (w - seg_written) / 2**20
                entry["workers_peak_rss_mb"] = max(entry["workers_peak_rss_mb"], workers / 1024)
                seg, seg_written, workers = now, w, 0
                if reset:
                    try:
                        Path(f"/proc/{pid}/clear_refs").write_text("5")
                    except OSError:
                        pass
            last_status, last_written = st, _written(pid)
            time.sleep(0.2)
        entry = segments.setdefault(seg, {"peak_rss_mb": 0.0, "written_mb": 0.0, "workers_peak_rss_mb": 0.0})
        entry["peak_rss_mb"] = max(entry["peak_rss_mb"], last_status.get("VmHWM", 0) / 1024)
        if last_written is not None:
            entry["written_mb"] += (last_written - seg_written) / 2**20
        entry["workers_peak_rss_mb"] = max(entry["workers_peak_rss_mb"], workers / 1024)
    timing = _parse_time(time_out.read_text())
    return {"command": cmd, "seconds": round(time.time() - t0, 1), "time": timing, "segments": segments,
            "sampled_max_rss_mb": round(rss_max / 1024, 1), "load_before": [round(x, 2) for x in load_before],
            "load_samples": loads}


def summaries(run_dir: Path) -> dict:
    out = {}
    for s in STAGES:
        f = run_dir / s / "COMPLETE.json"
        if f.is_file():
            m = json.loads(f.read_text())
            summ = m.get("summary") or {}
            out[s] = {"seconds": m.get("seconds"), **{k: summ.get(k) for k in ("peak_rss_mb", "written_mb",
                                                                               "workers_peak_rss_mb") if k in summ}}
    return out


def du(path: Path) -> dict[str, int]:
    sizes = {}
    for child in sorted(path.iterdir()) if path.is_dir() else []:
        sizes[child.name] = int(subprocess.run(["du", "-sb", str(child)], capture_output=True, text=True).stdout.split()[0])
    sizes["total"] = int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="/tmp/mem-runs")
    p.add_argument("--src", default=str(REPO / "src"), help="the langadapt tree to run (PYTHONPATH)")
    p.add_argument("--recipe", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--stages", default=None, help="one process per stage, in this order (comma-separated)")
    p.add_argument("--json", default=None, help="write everything measured here")
    p.add_argument("--no-reset", action="store_true", help="do not reset the process's peak at stage boundaries")
    p.add_argument("--keep", action="store_true", help="keep an existing output folder (default: start fresh)")
    args = p.parse_args(argv)

    out = Path(args.output_dir)
    name = re.search(r"^name:\s*(\S+)", Path(args.recipe).read_text(), re.M).group(1)
    run_dir = out / name
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": args.src, "HF_HUB_OFFLINE": "1"}
    try:  # on a shared machine, if memory runs out, the kernel ends this run before anyone else's
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    py = sys.executable
    runs = []
    if args.stages:
        for stage in args.stages.split(","):
            cmd = [py, "-m", "langadapt", stage, args.recipe, "--output-dir", str(out)]
            runs.append(watch(cmd, run_dir, env, reset=not args.no_reset, log_path=out / f"{stage}.log"))
    else:
        cmd = [py, "-m", "langadapt", "run", args.recipe, "--output-dir", str(out)]
        runs.append(watch(cmd, run_dir, env, reset=not args.no_reset, log_path=out / "run.log"))
    result = {"src": args.src, "runs": runs, "summaries": summaries(run_dir), "du": du(run_dir),
              "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'segment':<16} {'peak RSS MB':>12} {'written MB':>11} {'workers MB':>11}   (summary: peak, written)")
    for r in runs:
        for seg, v in r["segments"].items():
            s = result["summaries"].get(seg, {})
            print(f"{seg:<16} {v['peak_rss_mb']:>12.0f} {v['written_mb']:>11.1f} {v['workers_peak_rss_mb']:>11.0f}   "
                  f"({s.get('peak_rss_mb', '-')}, {s.get('written_mb', '-')})")
        t = r["time"]
        print(f"  /usr/bin/time: max RSS {t.get('max_rss_kb', 0) / 1024:.0f} MB, written "
              f"{t.get('fs_outputs_blocks', 0) * 512 / 1e6:.0f} MB ({t.get('fs_outputs_blocks', 0):.0f} blocks), "
              f"wall {t.get('wall')}, user {t.get('user_s')} s, exit {t.get('exit_status')}; load {r['load_before']} "
              f"then {r['load_samples'][:1]}..{r['load_samples'][-1:]}")
    print("du:", {k: f"{v / 1e6:.1f} MB" for k, v in result["du"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
