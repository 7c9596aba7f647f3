"""Experiment trackers (issue 20): what logging a step costs, and what each tracker stores, read back.

  python bench/trackers_bench.py                 # TensorBoard; W&B and MLflow too when installed

1. Cost: ``Trackers.log`` of one logged step's figures (the 6 train/ scalars), 500 times, per tracker
   (TensorBoard flushes its event file on every call, as accelerate's tracker does).
2. Round trip: a 6-step training call of a tiny Llama with ``report_to`` = every installed tracker among
   tensorboard, wandb (WANDB_MODE=offline) and mlflow (a file store), then each tracker's own data read
   back (TensorBoard's EventAccumulator, the records of W&B's offline .wandb file, MLflow's client) and
   compared with metrics.jsonl.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def cost(names: list[str], work: Path, n: int) -> dict:
    from langadapt.train.core import _make_accelerator
    from langadapt.train.tracking import Trackers

    out = {}
    for name in names:
        trackers = Trackers([name], out_dir=work / f"cost-{name}", name="bench", project="bench")
        acc = _make_accelerator("fp32", 1, trackers.log_with)
        trackers.start(acc, {"lr": 1e-4})
        values = {"train/loss": 3.2, "train/lr": 1e-4, "train/grad_norm": 1.0, "train/tokens_per_s": 900.0,
                  "train/memory_mb": 512.0, "train/lr_embeddings": 1e-5}
        t0 = time.perf_counter()
        for step in range(1, n + 1):
            trackers.log(values, step)
        out[name] = round(1000 * (time.perf_counter() - t0) / n, 3)
        trackers.finish()
        print(f"{name:12s} {out[name]:8.3f} ms per logged step ({n} steps)", flush=True)
    return out


def wandb_history(run_dir: Path) -> tuple[str, str, list[tuple[int, dict]]]:
    """(project, run name, [(step, values)]) from an offline run's .wandb file: LevelDB-style log blocks of
    W&B ``Record`` protobufs (wandb 0.31 has no Python reader of its own)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            records.append(buf + chunk)
    project = name = ""
    history = []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            project, name = rec.run.project, rec.run.display_name
        elif kind == "history":
            items = {(i.nested_key[0] if i.nested_key else i.key): json.loads(i.value_json) for i in rec.history.item}
            history.append((items["_step"], {k: v for k, v in items.items() if not k.startswith("_")}))
    return project, name, history


def round_trip(names: list[str], work: Path) -> dict:
    from conftest import tiny_llama
    from test_train_core import documents, settings, tiny_tokenizer

    from langadapt.train.core import train_model

    os.environ["MLFLOW_TRACKING_URI"] = f"file:{work / 'mlruns'}"  # apart from the cost runs
    tok = tiny_tokenizer()
    out = work / "run"
    train_model(tiny_llama(vocab_size=len(tok)), tok, documents(tok), settings(max_steps=6, eval_every=3), out,
                heldout={"target": "the cat sat on the mat"}, name="pretrain", report_to=names, project="bench",
                log=lambda m: None)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    want = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    held = [(r["step"], r["bpc_target"]) for r in rows if "bpc_target" in r]
    print(f"metrics.jsonl  loss {want}  bpc {held}")
    got = {}
    if "tensorboard" in names:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ea = EventAccumulator(str(out / "tensorboard" / "pretrain"))
        ea.Reload()
        got["tensorboard"] = {"loss": [(e.step, round(e.value, 5)) for e in ea.Scalars("train/loss")],
                              "bpc": [(e.step, round(e.value, 5)) for e in ea.Scalars("heldout/bpc_target")]}
    if "wandb" in names:
        # wandb keeps its first WANDB_DIR for the process: find the call's run by its name
        project, run, history = next(r for r in map(wandb_history, sorted(work.rglob("offline-run-*")))
                                     if r[1] == "pretrain")
        got["wandb"] = {"project": project, "run": run,
                        "loss": [(s, round(v["train/loss"], 5)) for s, v in history if "train/loss" in v],
                        "bpc": [(s, round(v["heldout/bpc_target"], 5)) for s, v in history if "heldout/bpc_target" in v]}
    if "mlflow" in names:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("bench")
        run = client.search_runs([exp.experiment_id])[0]
        hist = {k: [(m.step, round(m.value, 5)) for m in client.get_metric_history(run.info.run_id, k)]
                for k in ("train/loss", "heldout/bpc_target")}
        got["mlflow"] = {"experiment": exp.name, "run": run.info.run_name, "loss": hist["train/loss"],
                         "bpc": hist["heldout/bpc_target"], "param lr": run.data.params.get("lr")}
    for name, g in got.items():
        same = g["loss"] == want and [(s, round(v, 5)) for s, v in held] == g["bpc"]
        print(f"{name:12s} same steps and values as metrics.jsonl: {same}  "
              + "  ".join(f"{k}={v}" for k, v in g.items() if k not in ("loss", "bpc")), flush=True)
        g["same_as_metrics_jsonl"] = same
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()
    names = [n for n, mod in (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow"))
             if importlib.util.find_spec(mod) is not None]
    print("installed trackers:", ", ".join(names) or "none", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ["WANDB_DIR"] = str(work)
        os.environ["WANDB_SILENT"] = "true"
        os.environ["MLFLOW_TRACKING_URI"] = f"file:{work / 'mlruns-cost'}"
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        result = {"ms_per_logged_step": cost(names, work, args.steps), "round_trip": round_trip(names, work)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
