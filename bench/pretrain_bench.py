"""Benchmark: the pretrain stage (LoRA + embeddings/head) on real Persian with SmolLM2 on this CPU.

    python bench/pretrain_bench.py [--steps 12] [--batch 8] [--seq-len 128] [--out /tmp/langadapt-bench]

Same run folder and recipe as ``bench/align_bench.py`` (clean poems -> tokenizer -> align; stages
already finished with the same settings are reused) plus the pretrain stage: LoRA r=8, alpha=32
on every linear layer of every block and all embedding/head rows, next-token prediction on the
cleaned poems for a fixed token budget, starting from the align stage's model. Prints bits per
character on held-out Persian (Khayyam) and English before and after, tokens/s and trainable
parameters, and writes ``pretrain_results.json``.
"""

from __future__ import annotations

from align_bench import run_bench, summary


def main() -> None:
    def describe(args, recipe, marker) -> dict:
        return {
            "settings": {"steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
                         "tokens_budget": args.steps * args.batch * args.seq_len, "lr": args.lr_pre,
                         "lora": {"r": 8, "alpha": 32, "dropout": 0.05}},
            "pretrain": marker["summary"],
            "align_bpc": summary(recipe, "align")["summary"].get("bpc"),
        }

    s = run_bench(__doc__, "pretrain", pretrain=True, describe=describe)["pretrain"]
    print()
    fa, en = s["bpc"]["target"], s["bpc"]["english"]
    print("| tokens | Persian bpc before -> after | English bpc before -> after | tokens/s (wall) "
          "| tokens per CPU-second | trainable (of total) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {s['tokens']:,} | {fa['start']:.3f} -> {fa['end']:.3f} | {en['start']:.3f} -> {en['end']:.3f} | "
          f"{s['tokens_per_s']:.0f} | {s['tokens'] / s['cpu_seconds']:.0f} | {s['trainable']:,} ({s['total']:,}) |")


if __name__ == "__main__":
    main()
