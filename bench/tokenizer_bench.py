"""Benchmark of the tokenizer stage (issue 4): 20,000 Persian pieces merged into SmolLM2's tokenizer.

Trains SentencePiece (BPE, 20,000 pieces) on ../shared/data/poems plus the Persian Quran, merges the
pieces into the bundled SmolLM2-135M-Instruct tokenizer, and reports:

- fertility (tokens per word and per character) of base, merged, and SentencePiece alone on the
  ParsiNLU sentiment reviews (out of domain; each review once), on the ParsiNLU entailment sentences
  (out of domain, more formal) and on English text (the English Quran),
- whether every English line keeps its ids,
- SentencePiece training time, merge time, save time,
- throughput (MB/s, one line at a time, one thread, fresh tokenizer each pass) of base vs merged,
- ablations: merges appended after the base's instead of in front; the base pre-tokenizer kept.

    python bench/tokenizer_bench.py [--pieces 20000] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def reviews() -> list[str]:
    seen: dict[str, None] = {}
    for name in ("food", "movie"):
        with open(DATA / "parsinlu" / f"sentiment_{name}_dev.jsonl", encoding="utf-8") as f:
            for line in f:
                seen.setdefault(json.loads(line)["review"].strip(), None)
    return [r for r in seen if r]


def entailment() -> list[str]:
    import csv

    seen: dict[str, None] = {}
    with open(DATA / "parsinlu" / "entailment_dev.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            for key in ("sent1", "sent2"):
                seen.setdefault(row[key].strip(), None)
    return [r for r in seen if r]


def english(n: int = 2000) -> list[str]:
    lines = (DATA / "quran" / "en.yusufali.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip()][:n]


def corpus_files(tmp: Path) -> list[Path]:
    """The training text as the clean stage would hand it over: JSONL sentences."""
    out = tmp / "sentences.jsonl"
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for path in sorted((DATA / "poems").glob("*.txt")) + [DATA / "quran" / "fa.makarem.txt"]:
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    f.write(json.dumps({"text": line.strip()}, ensure_ascii=False) + "\n")
                    n += 1
    print(f"training text: {n:,} lines", file=sys.stderr)
    return [out]


def throughput(base_json: str, merged_json: str, lines: list[str], repeats: int = 5) -> dict:
    """Median MB/s of each, the two measured alternately so that load from other work hits both alike."""
    from tokenizers import Tokenizer

    from langadapt.tokenizer.fertility import throughput as one_pass

    runs: dict[str, list[float]] = {"base": [], "merged": []}
    for _ in range(repeats):
        for name, tj in (("base", base_json), ("merged", merged_json)):
            runs[name].append(one_pass(Tokenizer.from_str(tj), lines))
    return {name: round(statistics.median(v), 3) for name, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pieces", type=int, default=20_000)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is not here; this benchmark needs the shared data")

    import sentencepiece as spm
    from tokenizers import Tokenizer

    from langadapt.models import load_tokenizer
    from langadapt.tokenizer.fertility import fertility
    from langadapt.tokenizer.merge import merge_pieces, read_sentencepiece
    from langadapt.tokenizer.stage import save_tokenizer
    from langadapt.tokenizer.train import reservoir_sample, train_sentencepiece

    results: dict = {"pieces_requested": args.pieces}
    revs, ent, eng = reviews(), entailment(), english()
    persian_big = [ln.strip() for ln in (DATA / "quran" / "fa.makarem.txt").read_text(encoding="utf-8").splitlines()
                   if ln.strip()]
    english_big = english(10_000)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        sample = reservoir_sample(corpus_files(tmp), 10_000_000, tmp / "sample.txt", seed=0)
        trained = train_sentencepiece(sample.path, tmp / "sp.model", vocab_size=args.pieces, model_type="bpe",
                                      character_coverage=0.9995, seed=0)
        results["sentencepiece_seconds"] = round(time.perf_counter() - t0, 2)
        results["pieces_learned"] = trained.learned
        sp = spm.SentencePieceProcessor(model_file=str(trained.model_path))
        pieces = read_sentencepiece(trained.model_path)

        base = load_tokenizer("smollm2-135m-instruct")
        base_json = json.loads(base.backend_tokenizer.to_str())
        t0 = time.perf_counter()
        merged = merge_pieces(base_json, pieces, base_rows=len(base))
        results["merge_seconds"] = round(time.perf_counter() - t0, 2)
        out = tmp / "merged"
        out.mkdir()
        t0 = time.perf_counter()
        tok = save_tokenizer(base, merged.tokenizer_json, out, pad_token=None, pad_id=None)
        results["save_and_load_seconds"] = round(time.perf_counter() - t0, 2)
        results["merge"] = merged.stats
        results["vocabulary"] = {"base": len(base), "merged": len(tok)}

        sp_tokens = sum(len(sp.encode(r)) for r in revs)
        words = sum(len(r.split()) for r in revs)
        results["fertility"] = {
            "reviews": {"base": fertility(base, revs), "merged": fertility(tok, revs),
                        "sentencepiece_alone": {"tokens_per_word": round(sp_tokens / words, 4)}},
            "entailment": {"base": fertility(base, ent), "merged": fertility(tok, ent)},
            "english": {"base": fertility(base, eng), "merged": fertility(tok, eng)},
        }
        results["english_lines_identical"] = sum(
            a == b for a, b in zip(base(english_big)["input_ids"], tok(english_big)["input_ids"]))
        results["english_lines_checked"] = len(english_big)
        results["reviews_roundtrip_failures"] = sum(tok.decode(tok(r)["input_ids"]) != r for r in revs)

        base_str, merged_str = base.backend_tokenizer.to_str(), tok.backend_tokenizer.to_str()
        results["throughput_mb_s"] = {"persian": throughput(base_str, merged_str, persian_big),
                                      "english": throughput(base_str, merged_str, english_big)}
        results["text_mb"] = {"persian": round(sum(len(x.encode()) for x in persian_big) / 1e6, 2),
                              "english": round(sum(len(x.encode()) for x in english_big) / 1e6, 2)}

        zwnj = [x for x in persian_big[-1500:] if "\u200c" in x]  # seen in training: for the ZWNJ ablation only
        sets = {"reviews": revs, "entailment": ent, "quran_zwnj_verses_seen_in_training": zwnj}
        ablations = {"as built": {k: fertility(tok, v)["tokens_per_word"] for k, v in sets.items()}}
        for name, kwargs in {"merges appended after the base's": {"merges_first": False},
                             "base pre-tokenizer kept (no target-word pattern)": {"extend_pre_tokenizer": False},
                             "both": {"merges_first": False, "extend_pre_tokenizer": False}}.items():
            variant = Tokenizer.from_str(json.dumps(merge_pieces(base_json, pieces, base_rows=len(base), **kwargs)
                                                    .tokenizer_json))
            ablations[name] = {k: fertility(variant, v)["tokens_per_word"] for k, v in sets.items()}
        results["ablations_tokens_per_word"] = ablations

    text = json.dumps(results, ensure_ascii=False, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
