"""Benchmark: the align stage on real Persian with SmolLM2-135M-Instruct on this CPU.

    python bench/align_bench.py [--steps 12] [--batch 8] [--seq-len 128] [--out /tmp/langadapt-bench]

Runs the pipeline's own stages on ``../shared/data`` into ``--out``: clean (the poems, with
Khayyam's quatrains kept out as held-out text) -> tokenizer (SentencePiece pieces merged into
SmolLM2's vocabulary) -> align, step 1 on the cleaned poems and step 2 on the Quran's
Persian/English verse pairs, each for a fixed token budget (steps x batch x seq_len).
Prints bits per character on held-out Persian (Khayyam) and English (the team's
``data/demo/heldout/en.txt``) before and after each step, tokens/s and trainable parameters,
and writes ``align_results.json``. Finished stages are reused when the settings are unchanged
(``bench/pretrain_bench.py`` continues from the same folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
HELD_OUT_POET = "khayyam"


def recipe_dict(out: Path, *, steps: int, batch: int, seq_len: int, new_pieces: int, pretrain: bool,
                lr_mono: float, lr_bil: float, lr_pre: float) -> dict:
    poems = sorted(p for p in (DATA / "poems").glob("*.txt") if p.stem != HELD_OUT_POET)
    step = {"max_steps": steps, "batch_size": batch, "seq_len": seq_len, "warmup_ratio": 0.1, "log_every": 1}
    recipe = {
        "name": "bench",
        "base_model": "smollm2-135m-instruct",
        "output_dir": str(out),
        "seed": 0,
        "data": {
            "corpus": [{"name": p.stem, "type": "poems", "format": "text", "path": str(p)} for p in poems],
            "parallel": [{"name": "quran", "format": "pair", "target": str(DATA / "quran" / "fa.makarem.txt"),
                          "english": str(DATA / "quran" / "en.yusufali.txt")}],
            "heldout": {"target": str(DATA / "poems" / f"{HELD_OUT_POET}.txt"),
                        "english": str(REPO / "data" / "demo" / "heldout" / "en.txt"), "max_chars": 4000},
        },
        "clean": {},
        "tokenizer": {"new_pieces": new_pieces},
        "align": {"monolingual": {**step, "lr": lr_mono}, "bilingual": {**step, "lr": lr_bil}},
    }
    if pretrain:
        recipe["pretrain"] = {**step, "lr": lr_pre, "lora": {"r": 8, "alpha": 32, "dropout": 0.05}}
    return recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per training step (default 12)")
    p.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--new-pieces", type=int, default=20000, help="tokenizer stage pieces (default 20,000, the paper's)")
    p.add_argument("--lr-mono", type=float, default=2e-3)
    p.add_argument("--lr-bil", type=float, default=1e-3)
    p.add_argument("--lr-pre", type=float, default=1e-3)
    p.add_argument("--out", default="/tmp/langadapt-bench", help="run folder (reused between the two benchmarks)")
    p.add_argument("--no-base", action="store_true", help="skip measuring the unmerged base model")


def prepare(args, *, pretrain: bool):
    """Write the recipe and load it (validated like any user recipe)."""
    import yaml

    from langadapt.recipe import load_recipe

    if not DATA.is_dir():
        sys.exit(f"{DATA} is not present; this benchmark needs ../shared/data")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = recipe_dict(out, steps=args.steps, batch=args.batch, seq_len=args.seq_len, new_pieces=args.new_pieces,
                    pretrain=pretrain, lr_mono=args.lr_mono, lr_bil=args.lr_bil, lr_pre=args.lr_pre)
    path = out / ("pretrain.yaml" if pretrain else "align.yaml")
    path.write_text(yaml.safe_dump(d, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return load_recipe(path)


def base_bpc(recipe) -> dict[str, float]:
    """Bits per character of SmolLM2 itself (its own 49,152-token vocabulary), for reference."""
    from langadapt.models import load_model_and_tokenizer
    from langadapt.train.bpc import bits_per_char, read_heldout

    model, tok = load_model_and_tokenizer(recipe.base_model)
    return {k: bits_per_char(model, tok, text) for k, text in read_heldout(recipe).items()}


def summary(recipe, stage: str) -> dict:
    from langadapt.files import read_json

    return read_json(recipe.run_dir / stage / "COMPLETE.json")


def run_bench(doc: str, stage: str, *, pretrain: bool, describe) -> dict:
    """The frame both benchmarks share: the options, the recipe run (timed), then the figures
    ``describe(args, recipe, marker)`` picks from the finished stage, with the machine, the date and
    the base model's bits per character, written to ``<stage>_results.json`` and printed."""
    from langadapt.run import run_recipe

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args()
    recipe = prepare(args, pretrain=pretrain)
    t0 = time.time()
    run_recipe(recipe)
    wall = time.time() - t0
    marker = summary(recipe, stage)
    results = {
        "machine": "2-core CPU, 24 GiB (dev VM)",
        "date": time.strftime("%Y-%m-%d"),
        **describe(args, recipe, marker),
        f"{stage}_seconds": marker["seconds"],
        "wall_seconds_this_call": round(wall, 1),
    }
    if not args.no_base:
        results["base_model_bpc"] = base_bpc(recipe)
    (Path(args.out) / f"{stage}_results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                                                          encoding="utf-8")
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return results


def main() -> None:
    from langadapt.train.examples import iter_documents

    def describe(args, recipe, marker) -> dict:
        vocab = json.loads((recipe.run_dir / "tokenizer" / "model" / "config.json").read_text(encoding="utf-8"))
        bpc = json.loads((recipe.run_dir / "align" / "bpc.json").read_text(encoding="utf-8"))
        return {
            "settings": {"steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
                         "tokens_per_step_budget": args.steps * args.batch * args.seq_len,
                         "lr": {"monolingual": args.lr_mono, "bilingual": args.lr_bil}, "new_pieces": args.new_pieces},
            "vocabulary": vocab["vocab_size"],
            "clean_sentences": sum(1 for _ in iter_documents(recipe.layout.clean_shards())),
            "align": marker["summary"],
            "bpc": {lang: {"start": v["start"], "end": v["end"],
                           **{n: v[n] for n in ("monolingual", "bilingual") if n in v}} for lang, v in bpc.items()},
        }

    results = run_bench(__doc__, "align", pretrain=False, describe=describe)
    s, bpc = results["align"], results["bpc"]
    print()
    print("| step | tokens | Persian bpc before -> after | English bpc before -> after | tokens/s (wall) "
          "| tokens per CPU-second | trainable |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for step in ("monolingual", "bilingual"):
        st = s[step]
        fa, en = bpc["target"][step], bpc["english"][step]
        print(f"| {step} | {st['tokens']:,} | {fa['start']:.3f} -> {fa['end']:.3f} | {en['start']:.3f} -> "
              f"{en['end']:.3f} | {st['tokens_per_s']:.0f} | {st['tokens'] / st['cpu_seconds']:.0f} | {st['trainable']:,} |")


if __name__ == "__main__":
    main()
