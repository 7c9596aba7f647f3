"""lm-evaluation-harness tasks inside `langadapt eval` (issue 20) on real Persian data, SmolLM2-135M-Instruct.

  python bench/harness_bench.py            # needs ../shared/data/parsinlu; about 5 minutes on 1 thread

The ParsiNLU multiple-choice dev items become an lm-eval task defined here (a YAML file over a JSONL
file, lm-eval's usual "question / answer" prompt, no chat template), and the same items are scored by
langadapt's own multiple-choice task (the `parsinlu` suite: instruction, chat template, options
scored by log-likelihood). Two `langadapt eval` runs of the base model, one per harness, each in a
fresh process with one torch thread: wall and CPU seconds (model loading included in both), the
accuracies, and the language the stage identified for the lm-eval task.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LANGADAPT_SHARED_DATA") or ROOT.parent / "shared" / "data")

TASK = """task: parsinlu_mc_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "پرسش: {{{{question}}}}\\nپاسخ:"
doc_to_choice: "{{{{candidates | select | list}}}}"
doc_to_target: "{{{{answer | int - 1}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def run_eval(recipe: dict, path: Path) -> dict:
    import yaml

    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "langadapt", "eval", str(path), "--force"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results = json.loads((Path(recipe["output_dir"]) / recipe["name"] / "eval" / "results.json").read_text("utf-8"))
    return {"wall_s": round(time.time() - t0, 1), "cpu_s": round(cpu, 1), "results": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--out", default="/tmp/harness-bench")
    p.add_argument("--n", type=int, default=60, help="items (a seeded sample, the same for both harnesses)")
    args = p.parse_args()
    src = Path(args.data) / "parsinlu" / "multiple_choice_valid.jsonl"
    if not src.is_file():
        sys.exit(f"{src} not found (the ParsiNLU dev files); pass --data")
    from langadapt.eval.tasks import subset

    out = Path(args.out)
    (out / "lm_tasks").mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    picked = subset(rows, args.n, 0)  # the items langadapt's own task samples with seed 0
    data = out / "parsinlu_mc.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    (out / "lm_tasks" / "parsinlu_mc_local.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    base = {"base_model": "smollm2-135m-instruct", "output_dir": str(out / "runs"), "seed": 0,
            "language": {"code": "fa", "name": "Persian"}}
    common = {"stages": ["base"], "batch_size": 8, "report": False}
    native = run_eval({**base, "name": "native", "eval": {
        **common, "tasks": ["parsinlu"], "select": ["multiple_choice"], "max_examples": args.n,
        "paths": {"parsinlu": str(src.parent), "parallel_fa": str(Path(args.data) / "quran" / "fa.makarem.txt"),
                  "parallel_en": str(Path(args.data) / "quran" / "en.yusufali.txt")}}}, out / "native.yaml")
    harness = run_eval({**base, "name": "harness", "eval": {
        **common, "tasks": ["lm_eval:parsinlu_mc_local"], "lm_eval_include": [str(out / "lm_tasks")]}},
        out / "harness.yaml")
    summary = {"items": len(picked), "load_average": os.getloadavg()}
    for name, r in (("langadapt multiple_choice", native), ("lm-eval parsinlu_mc_local", harness)):
        got = {(x["task"], x["metric"]): (x["value"], x["n"], x["language"], (x.get("settings") or {}).get("stderr"))
               for x in r["results"]["rows"] if x["model"] == "base"}
        summary[name] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "scores": {f"{t} {m}": v for (t, m), v in got.items()}}
        print(f"{name:28s} wall {r['wall_s']:6.1f} s  cpu {r['cpu_s']:6.1f} s  " +
              "  ".join(f"{t} {m}={v[0]:.4f} (n={v[1]}, {v[2]})" for (t, m), v in got.items()), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
