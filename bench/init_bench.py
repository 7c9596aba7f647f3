"""Benchmark of issue 18: how new embedding rows are initialised, and how many new pieces to add.

    python bench/init_bench.py step0  [--pieces 20000] [--methods mean,plain,...]
    python bench/init_bench.py train  [--methods mean,...] [--align-steps 20] [--pretrain-steps 10]
    python bench/init_bench.py sweep  [--sweep 2000,5000,10000,20000] [--method ...]

Runs the pipeline's own stages on ``../shared/data`` into ``--out`` (default /tmp/langadapt-init-bench).
A held-out part no stage trains on: suras 18-20 of the Quran (verses 2,141-2,483, Persian and English,
343 verse pairs) are cut out of the corpus, the SentencePiece sample and the parallel pairs, and
Khayyam's quatrains are kept out of the poems. The corpus is the other seven poets plus the rest of
the Persian Quran; the parallel pairs are the rest of the Quran.

- ``step0``: the tokenizer stage with each ``init`` method (SmolLM2-135M-Instruct, ``--pieces`` new
  pieces), bits per character on the held-out Persian (Quran suras, Khayyam) and English (Quran
  suras) of the base and of the resized model before any training, and the stage's wall time.
- ``train``: for the given methods, align (monolingual then bilingual) and pretrain at equal steps;
  bits per character after each; wall time.
- ``sweep``: for each ``new_pieces``, fertility and bits per character at step 0 and after align's
  monolingual step at equal training tokens.
- ``table``: the Markdown tables of bench/README.md from the saved results.

Results go to ``<out>/<command>.json``; Markdown table rows are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the clone (a worktree one level deeper finds it too)
DATA = next((p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()),
            REPO.parent / "shared" / "data")
HELD_OUT_VERSES = (2140, 2483)  # 0-based line range: suras 18 (al-Kahf), 19 (Maryam), 20 (Ta-Ha)
HELD_OUT_POET = "khayyam"
MACHINE = "2-core CPU VM, 24 GiB"


def prepare_data(out: Path) -> dict[str, Path]:
    """Split ``../shared/data`` into training text and held-out text under ``out/data``."""
    if not DATA.is_dir():
        sys.exit(f"{DATA} is not present; this benchmark needs ../shared/data")
    d = out / "data"
    d.mkdir(parents=True, exist_ok=True)
    a, b = HELD_OUT_VERSES
    paths = {}
    for lang, name in (("fa", "fa.makarem.txt"), ("en", "en.yusufali.txt")):
        lines = (DATA / "quran" / name).read_text(encoding="utf-8").split("\n")[:6236]
        paths[f"train_{lang}"] = _write(d / f"quran_train.{lang}.txt", lines[:a] + lines[b:])
        paths[f"heldout_{lang}"] = _write(d / f"quran_heldout.{lang}.txt", [x.strip() for x in lines[a:b]])
    poems = [x.strip() for x in (DATA / "poems" / f"{HELD_OUT_POET}.txt").read_text(encoding="utf-8").split("\n")]
    paths["heldout_poems"] = _write(d / f"{HELD_OUT_POET}.txt", [x for x in poems if x])
    return paths


def _write(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def recipe_dict(out: Path, paths: dict[str, Path], name: str, *, pieces: int, init: str, args,
                align: bool, pretrain: bool, bilingual: bool = True) -> dict:
    poems = sorted(p for p in (DATA / "poems").glob("*.txt") if p.stem != HELD_OUT_POET)
    step = {"batch_size": args.batch, "seq_len": args.seq_len, "warmup_ratio": 0.1, "log_every": 1}
    return {
        "name": name,
        "base_model": "smollm2-135m-instruct",
        "output_dir": str(out / "runs"),
        "seed": 0,
        "data": {
            "corpus": [{"name": p.stem, "type": "poems", "format": "text", "path": str(p)} for p in poems]
                      + [{"name": "quran", "type": "other", "format": "text", "path": str(paths["train_fa"])}],
            "parallel": [{"name": "quran", "format": "pair", "target": str(paths["train_fa"]),
                          "english": str(paths["train_en"])}],
            "heldout": {"target": str(paths["heldout_fa"]), "english": str(paths["heldout_en"]),
                        "max_chars": args.max_chars},
        },
        "clean": {},
        "tokenizer": {"new_pieces": pieces, "init": init},
        "align": {"enabled": align,
                  "monolingual": {**step, "max_steps": args.align_steps, "lr": args.lr_mono},
                  "bilingual": {**step, "enabled": bilingual, "max_steps": args.bilingual_steps, "lr": args.lr_bil}},
        "pretrain": {"enabled": pretrain, **step, "max_steps": args.pretrain_steps, "lr": args.lr_pre,
                     "lora": {"r": 8, "alpha": 32, "dropout": 0.05}},
        "translate": {"enabled": False},
        "sft": {"enabled": False},
        "eval": {"enabled": False},
    }


def run(out: Path, name: str, **kw):
    """Write the recipe ``name``, link the shared clean output into its run folder, run it; return the recipe."""
    import yaml

    import shutil

    from langadapt.recipe import load_recipe
    from langadapt.run import run_recipe, stage_hash

    paths = prepare_data(out)
    d = recipe_dict(out, paths, name, **kw)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, allow_unicode=True, sort_keys=False), encoding="utf-8")
    recipe = load_recipe(path)
    shared = out / "runs" / "_shared" / "clean"
    own = recipe.run_dir / "clean"
    done = shared / "COMPLETE.json"
    if shared.is_dir() and (not done.is_file() or json.loads(done.read_text())["hash"] != stage_hash(recipe, "clean")):
        shutil.rmtree(shared)  # the data changed (a fingerprint is names, sizes, mtimes) or clean was cut off
    if own.is_symlink() and not own.exists():
        own.unlink()
    if shared.is_dir() and not own.exists():  # every recipe cleans the same corpus the same way: once
        own.parent.mkdir(parents=True, exist_ok=True)
        own.symlink_to(shared, target_is_directory=True)
    run_recipe(recipe)
    if not shared.is_dir() and own.is_dir() and not own.is_symlink():
        shared.parent.mkdir(parents=True, exist_ok=True)
        own.rename(shared)
        own.symlink_to(shared, target_is_directory=True)
    return recipe


def marker(recipe, stage: str) -> dict:
    from langadapt.files import read_json

    return read_json(recipe.run_dir / stage / "COMPLETE.json")


_KHAYYAM: dict = {}


def khayyam_bpc(model_path: str, max_chars: int) -> float:
    """Bits per character of the held-out Khayyam quatrains under a model folder (or adapter, or the base)."""
    from langadapt.models import load_model_and_tokenizer
    from langadapt.train.bpc import bits_per_char, read_text_prefix

    if "text" not in _KHAYYAM:
        _KHAYYAM["text"] = read_text_prefix(DATA / "poems" / f"{HELD_OUT_POET}.txt", max_chars)
    model, tok = load_model_and_tokenizer(model_path)
    return round(bits_per_char(model, tok, _KHAYYAM["text"]), 4)


def hewitt_bpc(tokenizer_model: str, heldout: dict[str, str], khayyam_chars: int) -> dict:
    """The literature's reference init (Hewitt 2021): every new row the mean of all base rows. Built from a
    tokenizer-stage model by overwriting its new rows; not offered in the recipe (it gives new tokens
    almost no probability, and here the merged tokenizer always writes them)."""
    import torch

    from langadapt.models import load_model_and_tokenizer
    from langadapt.train.bpc import bits_per_char, read_text_prefix

    model, tok = load_model_and_tokenizer(tokenizer_model)
    base = model.config.langadapt_base_vocab_size
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[base:] = emb[:base].mean(0)
        head = model.get_output_embeddings().weight
        if head.data_ptr() != emb.data_ptr():
            head[base:] = head[:base].mean(0)
    res = {k: round(bits_per_char(model, tok, v), 4) for k, v in heldout.items() if isinstance(v, str)}
    res["khayyam"] = round(bits_per_char(model, tok, read_text_prefix(DATA / "poems" / f"{HELD_OUT_POET}.txt",
                                                                      khayyam_chars)), 4)
    return res


def save(out: Path, command: str, results: dict) -> None:
    path = out / f"{command}.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    old.update(results)
    path.write_text(json.dumps(old, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def pct(x: float, base: float) -> str:
    return f"{x:.3f} ({x / base - 1:+.1%})"


def base_numbers(out: Path, recipe, args) -> dict:
    """SmolLM2 as shipped on the held-out texts (cached in ``base.json``)."""
    path = out / "base.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    step0 = marker(recipe, "tokenizer")["summary"]["bpc"]
    res = {"target": step0["target"]["base"], "english": step0["english"]["base"],
           "khayyam": khayyam_bpc(recipe.base_model, args.khayyam_chars)}
    path.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return res


def cmd_step0(args) -> None:
    out = Path(args.out)
    results, rows = {}, []
    base = None
    for method in args.methods.split(","):
        name = f"p{args.pieces}-{method}"
        t0 = time.time()
        if method == "hewitt":
            recipe = run(out, f"p{args.pieces}-mean", pieces=args.pieces, init="mean", args=args, align=False,
                         pretrain=False)
            from langadapt.train.bpc import read_heldout

            r = hewitt_bpc(str(recipe.run_dir / "tokenizer" / "model"), read_heldout(recipe), args.khayyam_chars)
            res = {"bpc": r, "seconds": None}
        else:
            recipe = run(out, name, pieces=args.pieces, init=method, args=args, align=False, pretrain=False)
            m = marker(recipe, "tokenizer")
            s = m["summary"]
            res = {"bpc": {k: v["init"] for k, v in s["bpc"].items()},
                   "seconds": m["seconds"], "stage_seconds": s["seconds"],
                   "tokens_per_word": s["fertility"]["target"]["merged"]["tokens_per_word"]}
            res["bpc"]["khayyam"] = khayyam_bpc(str(recipe.run_dir / "tokenizer" / "model"), args.khayyam_chars)
        res["wall_this_call"] = round(time.time() - t0, 1)
        base = base or base_numbers(out, recipe, args)
        results[method] = res
        save(out, "step0", {"machine": MACHINE, "date": time.strftime("%Y-%m-%d"), "pieces": args.pieces,
                            "base": base, method: res})
        print(f"step0 {method}: {res}", flush=True)
        b = res["bpc"]
        rows.append(f"| {method} | {pct(b['target'], base['target'])} | {pct(b['khayyam'], base['khayyam'])} | "
                    f"{pct(b['english'], base['english'])} | {res['seconds'] or ''} |")
    print(f"\n| init | Persian bpc, Quran suras 18-20 | Persian bpc, Khayyam | English bpc, Quran suras 18-20 | "
          f"tokenizer stage s |\n| --- | ---: | ---: | ---: | ---: |\n"
          f"| SmolLM2 as shipped | {base['target']:.3f} | {base['khayyam']:.3f} | {base['english']:.3f} | |")
    print("\n".join(rows))


def trained_numbers(recipe, args, *, khayyam: bool = True) -> dict:
    """Bits per character after align (and after its monolingual step) and after pretrain (their bpc.json,
    plus Khayyam), stage seconds and training tokens."""
    from langadapt.files import read_json

    res = {}
    for stage in ("align", "pretrain"):
        d = recipe.run_dir / stage
        if not (d / "COMPLETE.json").is_file():
            continue
        bpc = read_json(d / "bpc.json")
        m = marker(recipe, stage)
        res[stage] = {"target": bpc["target"]["end"], "english": bpc["english"]["end"], "seconds": m["seconds"]}
        if khayyam:
            res[stage]["khayyam"] = khayyam_bpc(recipe.model_path(stage), args.khayyam_chars)
        if stage == "align":
            res[stage]["monolingual"] = {k: v["monolingual"]["end"] for k, v in bpc.items() if "monolingual" in v}
        for part in ("monolingual", "bilingual"):
            if part in m["summary"]:
                res[stage].setdefault("tokens", {})[part] = m["summary"][part].get("tokens")
        if "tokens" in m["summary"]:
            res[stage]["tokens"] = m["summary"]["tokens"]
    return res


def cmd_train(args) -> None:
    out = Path(args.out)
    for method in args.methods.split(","):
        t0 = time.time()
        recipe = run(out, f"p{args.pieces}-{method}", pieces=args.pieces, init=method, args=args, align=True,
                     pretrain=not args.no_pretrain)
        res = trained_numbers(recipe, args, khayyam=not args.no_khayyam)
        res["wall_this_call"] = round(time.time() - t0, 1)
        res["settings"] = settings(args)
        save(out, "train", {"machine": MACHINE, "date": time.strftime("%Y-%m-%d"), method: res})
        print(f"train {method}: {json.dumps(res)}", flush=True)


def cmd_sweep(args) -> None:
    """Per ``new_pieces``: the tokenizer stage and align's monolingual step (no bilingual step, no pretrain,
    the same steps for every size). The ``--pieces`` size reuses the ``train`` run of ``--method`` when there
    is one: its monolingual step is the same run, seeded."""
    out = Path(args.out)
    for pieces in [int(x) for x in args.sweep.split(",")]:
        t0 = time.time()
        reuse = out / "runs" / f"p{pieces}-{args.method}" / "align" / "COMPLETE.json"
        done = out / "runs" / f"p{pieces}-{args.method}" / "tokenizer" / "COMPLETE.json"
        if args.no_train and done.is_file():  # the step0 run of this size: read it, run nothing
            from langadapt.recipe import load_recipe

            recipe = load_recipe(out / f"p{pieces}-{args.method}.yaml")
        elif pieces == args.pieces and reuse.is_file():
            recipe = run(out, f"p{pieces}-{args.method}", pieces=pieces, init=args.method, args=args, align=True,
                         pretrain=True)
        else:
            recipe = run(out, f"p{pieces}-{args.method}-mono", pieces=pieces, init=args.method, args=args,
                         align=not args.no_train, pretrain=False, bilingual=False)
        tk = marker(recipe, "tokenizer")["summary"]
        trained = trained_numbers(recipe, args, khayyam=False)
        if "align" not in trained:  # step 0 only
            trained["align"] = {"monolingual": None, "tokens": {"monolingual": None}, "seconds": None}
        res = {"new_tokens": tk["new_tokens"], "vocabulary": tk["merged_vocab_size"],
               "tokens_per_word": tk["fertility"]["target"]["merged"]["tokens_per_word"],
               "base_tokens_per_word": tk["fertility"]["target"]["base"]["tokens_per_word"],
               "step0": {k: v["init"] for k, v in tk["bpc"].items()},
               "tokenizer_seconds": marker(recipe, "tokenizer")["seconds"],
               "after_monolingual": trained["align"]["monolingual"],
               "monolingual_tokens": trained["align"]["tokens"]["monolingual"],
               "align_seconds_this_run": trained["align"]["seconds"]}
        res["wall_this_call"] = round(time.time() - t0, 1)
        res["settings"] = settings(args)
        save(out, "sweep", {"machine": MACHINE, "date": time.strftime("%Y-%m-%d"), str(pieces): res})
        print(f"sweep {pieces}: {json.dumps(res)}", flush=True)


def cmd_table(args) -> None:
    """The Markdown tables of bench/README.md from the saved results."""
    out = Path(args.out)
    load = lambda name: json.loads((out / f"{name}.json").read_text(encoding="utf-8")) if (out / f"{name}.json").is_file() else {}
    base = load("base")
    step0, train, sweep = load("step0"), load("train"), load("sweep")
    if step0:
        print("| init | Persian, Quran suras 18-20 | Persian, Khayyam | English, Quran suras 18-20 | tokenizer stage s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        print(f"| SmolLM2 as shipped | {base['target']:.3f} | {base['khayyam']:.3f} | {base['english']:.3f} | |")
        for m in ("plain", "hewitt", "mean", "calibrated"):
            if m in step0:
                b = step0[m]["bpc"]
                print(f"| {m} | {pct(b['target'], base['target'])} | {pct(b['khayyam'], base['khayyam'])} | "
                      f"{pct(b['english'], base['english'])} | {step0[m]['seconds'] or ''} |")
        print()
    if train:
        print("| init | after | Persian, Quran | Persian, Khayyam | English, Quran | stage s |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for m, r in train.items():
            if not isinstance(r, dict) or "align" not in r:
                continue
            s0 = step0.get(m, {}).get("bpc")
            if s0:
                print(f"| {m} | step 0 | {pct(s0['target'], base['target'])} | {pct(s0['khayyam'], base['khayyam'])} | "
                      f"{pct(s0['english'], base['english'])} | {step0[m]['seconds']} |")
            mono = r["align"]["monolingual"]
            print(f"| {m} | align, monolingual | {pct(mono['target'], base['target'])} | | "
                  f"{pct(mono['english'], base['english'])} | |")
            for stage in ("align", "pretrain"):
                if stage in r:
                    x = r[stage]
                    kh = pct(x["khayyam"], base["khayyam"]) if "khayyam" in x else ""
                    print(f"| {m} | {stage} | {pct(x['target'], base['target'])} | {kh} | "
                          f"{pct(x['english'], base['english'])} | {x['seconds']} |")
        print()
    if sweep:
        print("| new_pieces | new tokens | rows | Persian tokens/word (base) | Persian step 0 | English step 0 | "
              "Persian after monolingual | English after monolingual |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for k in sorted((k for k in sweep if k.isdigit()), key=int):
            r = sweep[k]
            print(f"| {int(k):,} | {r['new_tokens']:,} | {r['vocabulary']:,} | {r['tokens_per_word']} "
                  f"({r['base_tokens_per_word']}) | {pct(r['step0']['target'], base['target'])} | "
                  f"{pct(r['step0']['english'], base['english'])} | "
                  f"{pct(r['after_monolingual']['target'], base['target']) if r['after_monolingual'] else ''} | "
                  f"{pct(r['after_monolingual']['english'], base['english']) if r['after_monolingual'] else ''} |")


def settings(args) -> dict:
    return {"batch": args.batch, "seq_len": args.seq_len, "align_steps": args.align_steps,
            "bilingual_steps": args.bilingual_steps, "pretrain_steps": args.pretrain_steps,
            "lr": {"monolingual": args.lr_mono, "bilingual": args.lr_bil, "pretrain": args.lr_pre},
            "heldout_max_chars": args.max_chars, "khayyam_chars": args.khayyam_chars}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("step0", "train", "sweep", "table"))
    p.add_argument("--out", default="/tmp/langadapt-init-bench")
    p.add_argument("--pieces", type=int, default=20000)
    p.add_argument("--methods", default="plain,mean,calibrated,hewitt")
    p.add_argument("--method", default="mean", help="sweep: the init method")
    p.add_argument("--sweep", default="2000,5000,10000,20000")
    p.add_argument("--max-chars", type=int, default=6000, help="held-out characters per language (Quran suras)")
    p.add_argument("--khayyam-chars", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--align-steps", type=int, default=20)
    p.add_argument("--bilingual-steps", type=int, default=6)
    p.add_argument("--pretrain-steps", type=int, default=10)
    p.add_argument("--no-pretrain", action="store_true", help="train: align only")
    p.add_argument("--no-train", action="store_true", help="sweep: step 0 only (the tokenizer stage)")
    p.add_argument("--no-khayyam", action="store_true", help="train: no Khayyam bits per character")
    p.add_argument("--lr-mono", type=float, default=2e-3)
    p.add_argument("--lr-bil", type=float, default=1e-3)
    p.add_argument("--lr-pre", type=float, default=3e-4)
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    {"step0": cmd_step0, "train": cmd_train, "sweep": cmd_sweep, "table": cmd_table}[args.command](args)


if __name__ == "__main__":
    main()
