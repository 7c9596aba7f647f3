"""Evaluation benchmarks (issue 7), on the bundled SmolLM2-135M-Instruct.

  python bench/eval_bench.py speed     # examples/s per demo task: batch N vs batch 1 (and per-request scoring)
  python bench/eval_bench.py parsinlu  # `langadapt eval` of the base model on the ParsiNLU dev files (Persian block)

``speed`` times the same examples of each demo task under several settings:
  classification (log-likelihood): one model call per prompt+option (what lm-evaluation-harness does with
  --batch_size 1), batch 1 with the options sharing their prompt, and batch N with and without sharing;
  generation: batch 1 vs batch N (greedy, left padding).
``parsinlu`` writes a recipe into --out and runs the real command on it, then prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def speed(args) -> None:
    import torch

    from langadapt.eval.backends import LocalBackend
    from langadapt.eval.evaluate import EvalSettings, evaluate_task, selected_examples
    from langadapt.eval.tasks import load_tasks
    from langadapt.models import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    tasks = load_tasks(["demo"], target_language="fa", paths={"demo": str(ROOT / "data" / "demo")})
    if args.tasks:
        tasks = [t for t in tasks if t.id in args.tasks or t.name in args.tasks]
    rows = []
    for task in tasks:
        s = EvalSettings(batch_size=1, max_examples=args.n, max_new_tokens=args.max_new_tokens, seed=0)
        examples = selected_examples(task, s)
        if task.kind == "choice":
            configs = [("per request", 1, False), ("batch 1", 1, True), (f"batch {args.batch}", args.batch, True),
                       (f"batch {args.batch}, no sharing", args.batch, False)]
        else:
            configs = [("batch 1", 1, True), (f"batch {args.batch}", args.batch, True)]
        result = {"task": task.id, "kind": task.kind, "n": len(examples)}
        for label, bs, share in configs:
            backend = LocalBackend(model, tok, name="smollm2", share_prefix=share)
            s.batch_size = bs
            t0 = time.perf_counter()
            out = evaluate_task(backend, task, examples, s, model="smollm2", stage="base")
            dt = time.perf_counter() - t0
            metric = next(r for r in out if r["metric"] in ("accuracy", "bleu"))
            result[label] = {"seconds": round(dt, 2), "examples_per_s": round(len(examples) / dt, 2),
                             metric["metric"]: round(metric["value"], 4)}
            print(f"{task.id:22s} {label:24s} {dt:7.2f} s  {len(examples) / dt:6.2f} ex/s  "
                  f"{metric['metric']}={metric['value']:.4f}", flush=True)
        rows.append(result)
    info = {"machine": args.machine, "threads": args.threads, "load_average": os.getloadavg(), "n": args.n,
            "batch": args.batch, "max_new_tokens": args.max_new_tokens, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2), encoding="utf-8")
    print(json.dumps(info["load_average"]))


def parsinlu(args) -> None:
    data = Path(args.data)
    if not (data / "parsinlu").is_dir():
        sys.exit(f"{data}/parsinlu not found (the ParsiNLU dev files); pass --data")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = {
        "name": "parsinlu-base", "base_model": "smollm2-135m-instruct", "output_dir": str(out / "runs"),
        "language": {"code": "fa", "name": "Persian"}, "seed": 0,
        "eval": {"tasks": ["parsinlu"], "stages": ["base"], "mode": args.mode, "batch_size": args.batch,
                 "max_examples_per_task": {"translation": args.translation_n, **({"multiple_choice": args.n,
                                           "sentiment": args.n, "entailment": args.n} if args.n else {})},
                 "max_new_tokens": args.max_new_tokens,
                 "paths": {"parsinlu": str(data / "parsinlu"), "parallel_fa": str(data / "quran" / "fa.makarem.txt"),
                           "parallel_en": str(data / "quran" / "en.yusufali.txt")}},
    }
    path = out / "parsinlu.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    t0 = time.time()
    cmd = [sys.executable, "-m", "langadapt", "eval", str(path), "--force"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    print(f"wall {time.time() - t0:.0f} s; results in {out / 'runs' / 'parsinlu-base' / 'eval'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--n", type=int, default=24, help="examples per task")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--max-new-tokens", type=int, default=32)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--tasks", nargs="*", help="task names or ids (default: all ten demo tasks)")
    s.add_argument("--machine", default="2-core CPU, 24 GiB (dev VM)")
    s.add_argument("--json", help="also write the numbers here")
    s.set_defaults(func=speed)
    q = sub.add_parser("parsinlu")
    q.add_argument("--data", default=str(SHARED), help="folder holding parsinlu/ and quran/")
    q.add_argument("--out", default="/tmp/eval-bench-parsinlu")
    q.add_argument("--n", type=int, default=None, help="cap on examples per classification task (default: all)")
    q.add_argument("--translation-n", type=int, default=100)
    q.add_argument("--batch", type=int, default=8)
    q.add_argument("--mode", choices=["loglik", "generate"], default="loglik")
    q.add_argument("--max-new-tokens", type=int, default=64)
    q.set_defaults(func=parsinlu)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
