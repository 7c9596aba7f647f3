"""Token store against the in-memory lists: time and peak memory to turn a corpus into packed rows.

    python bench/store_bench.py TOKENIZER_DIR store     # e.g. runs/demo/tokenizer/model
    python bench/store_bench.py TOKENIZER_DIR lists

Run each mode in its own process (peak RSS is per process). Corpus: ../shared/data/poems, every
line, repeated --repeat times (default 4).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

POEMS = Path(__file__).resolve().parents[2] / "shared" / "data" / "poems"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokenizer")
    ap.add_argument("mode", choices=["store", "lists"])
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    args = ap.parse_args()
    if not POEMS.is_dir():
        sys.exit(f"needs {POEMS}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    texts = [line.strip() for f in sorted(POEMS.glob("*.txt")) for line in open(f, encoding="utf-8") if line.strip()]
    texts *= args.repeat
    mb = sum(len(t.encode()) for t in texts) / 1e6
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    if args.mode == "store":
        from langadapt.train.store import build

        with tempfile.TemporaryDirectory() as d:
            rows = build(iter(texts), tok, Path(d) / "tokens").rows(args.seq_len, tok.pad_token_id)
            n, total = len(rows), rows.total
    else:
        from langadapt.train.examples import document_examples
        from langadapt.train.packing import pack

        rows = pack(document_examples(tok, texts), args.seq_len, tok.pad_token_id)
        n, total = len(rows), int(rows.tokens.sum())
    dt = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.mode}: {len(texts):,} texts, {mb:.1f} MB, {total:,} tokens, {n:,} rows; {dt:.1f} s "
          f"({mb / dt:.2f} MB/s); peak RSS {peak:.0f} MB, {peak - loaded:+.0f} MB over the loaded texts")


if __name__ == "__main__":
    main()
