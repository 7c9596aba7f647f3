"""Benchmark: records per second translating instructions with the demo model, batched vs one at a time.

Runs the real ``translate`` stage twice on the first N English demo instructions (data/demo), with
SmolLM2-135M-Instruct as the translator (translator ``stage``, stage ``base``), loaded once and
shared by both runs: once with ``batch_size`` records (and texts) per generate() call, once with 1.
Model loading is not timed; the stage's own clock covers reading, masking, generating and logging.

    python bench/translate_bench.py [--records 16] [--batch-size 8] [--max-new-tokens 64] [--threads N]

Prints a JSON summary (records/s each way, speed-up, and the cleaning report of the batched run:
how many SmolLM2 translations survive, and why the others were dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo" / "instructions" / "alpaca_en.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=16, help="records translated per run (after the wording rules)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice); 1 avoids thread thrashing on a busy machine")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from langadapt.recipe import parse_recipe
    from langadapt.run import run_stage
    from langadapt.translate.translators import CausalTranslator, build_translator

    from langadapt.translate.rules import wording_rule

    # The same N records in both runs, all past the wording rules, so both translate every one.
    records = [r for r in json.loads(DEMO.read_text(encoding="utf-8"))
               if wording_rule(r["instruction"] + "\n" + r.get("input", "")) is None][:args.records]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "alpaca_en.json"
        data.write_text(json.dumps(records), encoding="utf-8")

        def recipe_for(batch_size: int, name: str):
            return parse_recipe({
                "name": name, "base_model": "smollm2-135m-instruct", "output_dir": str(Path(tmp) / "runs"),
                "data": {"instructions": [{"name": "demo_en", "format": "alpaca", "path": str(data), "language": "en"}]},
                "translate": {"translator": "stage", "stage": "base", "batch_size": batch_size,
                              "max_new_tokens": args.max_new_tokens},
            })

        t0 = time.time()
        loaded = build_translator(recipe_for(args.batch_size, "load"), "en")
        load_s = time.time() - t0
        for label, bs in (("batched", args.batch_size), ("one_at_a_time", 1)):
            recipe = recipe_for(bs, label)
            translator = CausalTranslator(loaded.model, loaded.tokenizer, source_name="English", target_name="Persian",
                                          batch_size=bs, max_new_tokens=args.max_new_tokens, label="smollm2-135m-instruct")
            run_stage(recipe, "translate", resume=False, extra={"translator_factory": lambda r, lang, t=translator: t})
            report = json.loads((recipe.run_dir / "translate" / "report.json").read_text(encoding="utf-8"))
            src = report["sources"]["demo_en"]
            results[label] = {"batch_size": bs, "records": report["translator"]["records_translated_now"],
                              "texts": report["translator"]["texts_sent"], "seconds": report["translator"]["seconds"],
                              "records_per_s": report["translator"]["records_per_s"],
                              "kept": src["kept"], "dropped": src["dropped"]}
    b, o = results["batched"], results["one_at_a_time"]
    print(json.dumps({
        "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
        "torch_threads": torch.get_num_threads(), "model_load_s": round(load_s, 1),
        "max_new_tokens": args.max_new_tokens, **results,
        "speedup": round(b["records_per_s"] / o["records_per_s"], 2),
    }, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
