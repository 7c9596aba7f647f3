"""Benchmark (issue 15): continued pre-training on whole documents, English replay, the embeddings' own
learning rate; SmolLM2-135M-Instruct on ../shared/data on this CPU.

    python bench/documents_bench.py [--steps 20] [--batch 8] [--seq-len 256] [--pieces 8000] [--out DIR]

Data: the eight poets' poems and the Persian Quran (Makarem), each file's last 15% held out (never
cleaned, tokenized or trained on). The held-out part is measured two ways: line by line (every
verse alone) and as documents (runs of consecutive verses up to 1,000 characters, each scored whole,
later windows seeing the earlier verses). English: the Yusuf Ali Quran, whose first 85% is the replay
source and whose last 15% (the verses parallel to the held-out Persian) is held-out English.

Runs (the same tokenizer and align model for all; pretrain at the same token budget each:
``steps x batch x seq_len``; LoRA r=8, alpha=32, lr 3e-4 as in the demo):

- ``sentences``: the corpus cleaned one line (verse) per document, as before issue 15;
- ``documents``: the same text as documents of consecutive lines (``doc_per: lines``);
- ``replay 0.1`` / ``replay 0.25``: documents plus that share of English replay tokens;
- ``embedding_lr 0.1x``: documents, embeddings and head at a tenth of lr.

Writes ``documents_results.json`` in ``--out`` and prints the bench/README.md table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
HOLD = 0.15


def split_sources(work: Path) -> dict:
    """Training files (first 85% of each) and held-out files (the rest) for every source."""
    train, held = work / "train", work / "held"
    train.mkdir(parents=True, exist_ok=True)
    held.mkdir(parents=True, exist_ok=True)
    files = sorted((DATA / "poems").glob("*.txt")) + [DATA / "quran" / "fa.makarem.txt"]
    for f in files:
        lines = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines()]
        cut = int(len(lines) * (1 - HOLD))
        (train / f.name).write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
        (held / f.name).write_text("\n".join(lines[cut:]) + "\n", encoding="utf-8")
    en = [ln.strip() for ln in (DATA / "quran" / "en.yusufali.txt").read_text(encoding="utf-8").splitlines()]
    cut = int(len(en) * (1 - HOLD))
    (work / "en_replay.txt").write_text("\n".join(en[:cut]) + "\n", encoding="utf-8")
    (work / "en_held.txt").write_text("\n".join(x for x in en[cut:] if x) + "\n", encoding="utf-8")
    # held-out Persian: lines (every source's held-out verses, interleaved so max_chars samples them all)
    # and documents (runs of consecutive verses, as doc_per: lines would make them)
    per = [[x for x in (held / f.name).read_text(encoding="utf-8").splitlines()] for f in files]
    lines, docs = [], []
    for rows in per:
        run: list[str] = []
        for x in rows:
            if x and (not run or sum(map(len, run)) + len(x) <= 1000):
                run.append(x)
                continue
            if run:
                docs.append("\n".join(run))
            run = [x] if x else []
        if run:
            docs.append("\n".join(run))
    for k in range(max(map(len, per))):
        lines += [rows[k] for rows in per if k < len(rows) and rows[k]]
    order = sorted(range(len(docs)), key=lambda i: (i * 7919) % len(docs))  # sources mixed, reproducibly
    (work / "fa_held_lines.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "fa_held_docs.jsonl").write_text("".join(json.dumps({"text": docs[i]}, ensure_ascii=False) + "\n"
                                                     for i in order), encoding="utf-8")
    return {"train": sorted(train.glob("*.txt")), "work": work}


def recipe(work: Path, name: str, doc_per: str, args, pretrain: dict) -> dict:
    step = {"batch_size": args.batch, "seq_len": args.seq_len, "warmup_ratio": 0.1, "log_every": 1}
    return {
        "name": name, "base_model": "smollm2-135m-instruct", "output_dir": str(work / "runs"), "seed": 0,
        "data": {
            "corpus": [{"name": f.stem.replace(".", "_"), "type": "poems" if "makarem" not in f.name else "books",
                        "path": str(f), "doc_per": doc_per, "doc_chars": 1000} for f in sorted((work / "train").glob("*.txt"))],
            "replay": [{"name": "en_quran", "path": str(work / "en_replay.txt"), "language": "en"}],
            "heldout": {"target": str(work / "fa_held_lines.txt"), "english": str(work / "en_held.txt"),
                        "target_documents": str(work / "fa_held_docs.jsonl"), "max_chars": 6000},
        },
        "clean": {},
        "tokenizer": {"new_pieces": args.pieces},
        "align": {"monolingual": {**step, "max_steps": args.steps, "lr": 2e-3}, "bilingual": {"enabled": False}},
        "pretrain": {**step, "max_steps": args.steps, "lr": 3e-4, "lora": {"r": 8, "alpha": 32, "dropout": 0.05},
                     **pretrain},
    }


def load(work: Path, d: dict):
    import yaml

    from langadapt.recipe import load_recipe

    path = work / f"{d['name']}.yaml"
    path.write_text(yaml.safe_dump(d, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return load_recipe(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--pieces", type=int, default=8000)
    p.add_argument("--out", default="/tmp/langadapt-documents-bench")
    p.add_argument("--only", nargs="*", default=None, help="train only these runs (labels as in the table); "
                   "the table still shows every run already finished in --out")
    args = p.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is not present; this benchmark needs ../shared/data")

    from langadapt.pretrain.stage import run as pretrain_stage
    from langadapt.run import StageContext, run_stage

    work = Path(args.out)
    split_sources(work)
    variants = {
        "sentences": ("line", {}),
        "documents": ("lines", {}),
        "replay 0.1": ("lines", {"replay": {"share": 0.1}}),
        "replay 0.25": ("lines", {"replay": {"share": 0.25}}),
        "embedding_lr 0.1x": ("lines", {"embedding_lr": "0.1x"}),
    }
    results: dict = {"machine": "2-core CPU, 24 GiB (dev VM)", "date": time.strftime("%Y-%m-%d"),
                     "settings": vars(args), "runs": {}}
    # the shared tokenizer and align model, trained on the sentence-level run's text
    base = load(work, recipe(work, "sentences", "line", args, {}))
    t0 = time.time()
    for stage in ("clean", "tokenizer", "align"):
        if base.layout.marker(stage) is None:
            run_stage(base, stage, resume=True)
    results["align"] = base.layout.marker("align")["summary"].get("bpc")
    results["align_seconds"] = round(time.time() - t0, 1)
    for label, (doc_per, extra) in variants.items():
        name = label.replace(" ", "_").replace(".", "")
        r = load(work, recipe(work, name, doc_per, args, extra))
        done = (r.layout.stage_dir("pretrain") / "COMPLETE.json").is_file()
        if args.only is not None and label not in args.only and not done:
            continue
        if not done:
            if name != "sentences":
                run_stage(r, "clean", resume=True)  # this variant's own documents
                for stage in ("tokenizer", "align"):  # the shared ones, copied
                    shutil.rmtree(r.layout.stage_dir(stage), ignore_errors=True)
                    shutil.copytree(base.layout.stage_dir(stage), r.layout.stage_dir(stage))
            out = r.layout.stage_dir("pretrain")
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            t = time.time()
            summary = pretrain_stage(StageContext(recipe=r, stage="pretrain", out_dir=out))
            (out / "COMPLETE.json").write_text(json.dumps({"summary": summary, "seconds": round(time.time() - t, 1)}),
                                               encoding="utf-8")
        marker = json.loads((r.layout.stage_dir("pretrain") / "COMPLETE.json").read_text(encoding="utf-8"))
        s = marker["summary"]
        results["runs"][label] = {"bpc": s["bpc"], "tokens": s["tokens"], "documents": s.get("documents"),
                                  "replay": s.get("replay"), "seconds": marker.get("seconds")}
        print(label, json.dumps(results["runs"][label]), flush=True)
    (work / "documents_results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
    print("| run | tokens | replay share | Persian lines bpc | Persian documents bpc | English bpc |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, r in results["runs"].items():
        b = r["bpc"]
        share = f"{100 * r['replay']['share']:.1f}%" if r.get("replay") else "0"
        print(f"| {label} | {r['tokens']:,} | {share} | {_cell(b, 'target')} | {_cell(b, 'target_documents')} | "
              f"{_cell(b, 'english')} |")


def _cell(bpc: dict, key: str) -> str:
    return f"{bpc[key]['start']:.3f} -> {bpc[key]['end']:.3f}" if key in bpc else "n/a"


if __name__ == "__main__":
    main()
