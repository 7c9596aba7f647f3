"""GGUF export checked by llama.cpp itself (issue 20): tokenizer ids, logits, greedy generations.

llama.cpp runs through ``llama-cpp-python``, built from its source package into a separate virtual
environment (a native build of several minutes; it is not a langadapt dependency):

    python3 -m venv /tmp/llamacpp && /tmp/llamacpp/bin/pip install llama-cpp-python
    langadapt run configs/demo.yaml --output-dir /tmp/gguf-runs        # or only clean + tokenizer
    python bench/gguf_check.py --run /tmp/gguf-runs/demo --llama-python /tmp/llamacpp/bin/python

This script runs in langadapt's environment and sends llama.cpp's part to the other interpreter
(``--worker``, which needs only llama_cpp and numpy). What it measures:

1. Tokenizers, on 405 real lines (200 Persian: 100 verses of the Persian Quran and 100 ParsiNLU
   reviews; 200 English verses; the Persian lines with an Arabic yeh or kaf), ids from transformers
   vs ids from llama.cpp reading our GGUF, for the run's merged tokenizer and for a 20,000-piece
   tokenizer trained as bench/tokenizer_bench.py does (``--pieces 0`` skips it), each with the
   target-word pre-tokenizer or the base's (``merge_pieces(..., extend_pre_tokenizer=False)``) and
   with or without the stage's normalizer (``tokenizer.normalize``), and SmolLM2 itself; also
   whether ``serve.gguf.llama_cpp_tokenizer`` predicts llama.cpp's ids, and tokens per word.
2. The sft stage's model (when the run has one) exported in f32, f16 and q8_0: logits of llama.cpp
   and of transformers' own GGUF reader against the merged source model, and greedy generations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHAT_PROMPTS = [
    "سلام! حالت چطور است؟", "پایتخت ایران کدام شهر است؟", "یک جمله درباره‌ی باران بنویس.",
    "سه رنگ را نام ببر.", "What is the capital of France?", "Write one sentence about the rain.",
    "Name three colours.", "Translate into Persian: good morning",
]
GEN_STEPS = 16


# ---------------------------------------------------------------------------- llama.cpp's side


def worker(job_path: str) -> None:
    """Runs under the llama-cpp-python interpreter: tokenize, score and generate as a job file asks."""
    import llama_cpp
    import numpy as np

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    out: dict = {}
    if job.get("texts") is not None:
        llm = llama_cpp.Llama(job["gguf"], vocab_only=True, verbose=False)
        out["ids"] = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in job["texts"]]
        out["ids_with_specials"] = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)
                                    for t in job.get("special_texts", [])]
        del llm
    if job.get("prompts") is not None:
        llm = llama_cpp.Llama(job["gguf"], n_ctx=512, logits_all=True, n_threads=2, verbose=False, seed=0)
        logits = []
        for ids in job["prompts"]:
            llm.reset()
            llm.eval(ids)
            logits.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        np.savez(job["logits_out"], *logits)
        gens = []
        for ids in job["gen_prompts"]:
            llm.reset()
            llm.eval(ids)
            new: list[int] = []
            for _ in range(job["gen_steps"]):
                nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                new.append(nxt)
                llm.eval([nxt])
            gens.append(new)
        out["generations"] = gens
        # The chat path a user takes: llama-cpp-python renders the GGUF's own chat template.
        out["chat"] = [llm.create_chat_completion([{"role": "user", "content": p}], max_tokens=job["gen_steps"],
                                                  temperature=0.0, top_k=1, repeat_penalty=1.0, seed=0)
                       ["choices"][0]["message"]["content"] for p in job.get("chat_prompts", [])]
    Path(job["out"]).write_text(json.dumps(out), encoding="utf-8")


def llama_cpp(python: str, job: dict, tmp: Path) -> dict:
    job_file, out_file = tmp / "job.json", tmp / "out.json"
    job = {**job, "out": str(out_file)}
    job_file.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
    subprocess.run([python, __file__, "--worker", str(job_file)], check=True)
    return json.loads(out_file.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------- the lines


def every_kth(lines: list[str], n: int) -> list[str]:
    step = max(1, len(lines) // n)
    return lines[::step][:n]


ARABIC_FORMS = "\u064a\u0649\u0643\u0629\u0640"  # Arabic yeh, alef maksura, kaf, teh marbuta; tatweel


def test_lines(data: Path) -> dict[str, list[str]]:
    """100 Persian verses, 100 reviews (each once), 200 English verses, spread over the files; and
    every Persian verse or review that holds a letter the tokenizer stage's normalizer rewrites."""
    fa = [x for x in (data / "quran" / "fa.makarem.txt").read_text(encoding="utf-8").split("\n") if x.strip()]
    en = [x for x in (data / "quran" / "en.yusufali.txt").read_text(encoding="utf-8").split("\n") if x.strip()]
    reviews: dict[str, None] = {}
    for name in ("food", "movie"):
        with open(data / "parsinlu" / f"sentiment_{name}_dev.jsonl", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)["review"]
                if r.strip():
                    reviews.setdefault(r, None)
    arabic = [x for x in fa + list(reviews) if any(c in x for c in ARABIC_FORMS)]
    return {"quran_fa": every_kth(fa, 100), "reviews_fa": every_kth(list(reviews), 100), "quran_en": every_kth(en, 200),
            "arabic_letters_fa": arabic, "all_quran_fa": fa, "all_reviews_fa": list(reviews)}


# ---------------------------------------------------------------------------- tokenizer variants


def vocab_gguf(tok, path: Path) -> None:
    """A GGUF holding ``tok`` and a 1-layer random model: only the vocabulary is read."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from langadapt.serve.gguf import write_gguf

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    write_gguf(model, tok, path, quant="f32", name=path.stem, log=lambda m: None)


def variant(tok, folder: Path, *, base_tj: dict | None = None, normalizer: bool = True):
    """The run's merged tokenizer with the base pre-tokenizer (``base_tj`` given: what
    ``merge_pieces(extend_pre_tokenizer=False)`` makes) and/or without the tokenizer stage's
    normalizer (``tokenizer.normalize: false``)."""
    from transformers import AutoTokenizer

    tj = json.loads(tok.backend_tokenizer.to_str())
    if base_tj is not None:
        tj["pre_tokenizer"] = base_tj["pre_tokenizer"]
    if not normalizer:
        tj["normalizer"] = base_tj["normalizer"] if base_tj is not None else None
    folder.mkdir()
    tok.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    return AutoTokenizer.from_pretrained(folder)


def tokenizer_rows(name: str, tok, python: str, lines: dict, tmp: Path, *, gguf_file: Path | None = None,
                   whole: dict | None = None) -> dict:
    from langadapt.serve.gguf import llama_cpp_tokenizer
    from langadapt.tokenizer.fertility import fertility

    path = gguf_file or tmp / f"{name}.gguf"
    if gguf_file is None:
        vocab_gguf(tok, path)
    texts = [t for group in lines.values() for t in group]
    english = lines["quran_en"][:5]  # bos/eos: the same ids either way
    got = llama_cpp(python, {"gguf": str(path), "texts": texts, "special_texts": english}, tmp)
    emulated = llama_cpp_tokenizer(json.loads(tok.backend_tokenizer.to_str()))
    row: dict = {"tokenizer": name, "vocabulary": len(tok)}
    i = 0
    for group, group_lines in lines.items():
        hf = [tok(t, add_special_tokens=False)["input_ids"] for t in group_lines]
        lc = got["ids"][i: i + len(group_lines)]
        em = [emulated.encode(t, add_special_tokens=False).ids for t in group_lines]
        i += len(group_lines)
        words = sum(len(t.split()) for t in group_lines)
        row[group] = {"lines": len(group_lines), "differ": sum(a != b for a, b in zip(hf, lc)),
                      "predicted_exactly": sum(a == b for a, b in zip(em, lc)),
                      "tokens_per_word_transformers": round(sum(map(len, hf)) / words, 3),
                      "tokens_per_word_llama_cpp": round(sum(map(len, lc)) / words, 3)}
    row["bos_eos_as_transformers"] = [tok(t)["input_ids"] for t in english] == got["ids_with_specials"]
    for group, group_lines in (whole or {}).items():  # larger sets: llama.cpp's side from the emulation
        row[group] = {"lines": len(group_lines),
                      "differ_predicted": sum(tok(t, add_special_tokens=False)["input_ids"] !=
                                              emulated.encode(t, add_special_tokens=False).ids for t in group_lines),
                      "tokens_per_word_transformers": fertility(tok, group_lines)["tokens_per_word"],
                      "tokens_per_word_llama_cpp": fertility(emulated, group_lines)["tokens_per_word"]}
    return row


def big_tokenizer(base, pieces: int, data: Path, tmp: Path):
    """The 20,000-piece merge of bench/tokenizer_bench.py (poems + Persian Quran), both pre-tokenizers."""
    sys.path.insert(0, str(Path(__file__).parent))
    import tokenizer_bench

    from langadapt.clean.normalize import char_map
    from langadapt.tokenizer.merge import add_normalizer, merge_pieces, read_sentencepiece, target_characters
    from langadapt.tokenizer.stage import save_tokenizer
    from langadapt.tokenizer.train import reservoir_sample, train_sentencepiece

    tokenizer_bench.DATA = data
    sample = reservoir_sample(tokenizer_bench.corpus_files(tmp), 10_000_000, tmp / "sample.txt", seed=0)
    trained = train_sentencepiece(sample.path, tmp / "sp.model", vocab_size=pieces, model_type="bpe",
                                  character_coverage=0.9995, seed=0)
    sp = read_sentencepiece(trained.model_path)
    base_tj = json.loads(base.backend_tokenizer.to_str())
    out = {}
    for name, extend in (("extend", True), ("keep", False)):
        merged = merge_pieces(base_tj, sp, base_rows=len(base), extend_pre_tokenizer=extend)
        add_normalizer(merged.tokenizer_json, char_map("fa"), target_characters(sp)[0])  # as the stage's default
        folder = tmp / f"big-{name}"
        folder.mkdir()
        out[name] = save_tokenizer(base, merged.tokenizer_json, folder, pad_token=None, pad_id=None)
    return out


# ---------------------------------------------------------------------------- the model


def model_rows(run: Path, stage: str, python: str, lines: dict, tmp: Path, quants=("f32", "f16", "q8_0")) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from langadapt.models import load_model, load_tokenizer, resolve_model
    from langadapt.serve.export import export_model, merge
    from langadapt.serve.source import resolve_ref

    ref = resolve_ref(str(run), stage)
    src = resolve_model(ref.path)
    model = merge(load_model(src, dtype=torch.float32)).eval()
    tok = load_tokenizer(src)
    prompts = [tok(t, add_special_tokens=False)["input_ids"][:48]
               for t in lines["quran_fa"][:3] + lines["reviews_fa"][:3] + lines["quran_en"][:2]]
    gen_prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"] for p in CHAT_PROMPTS]
    with torch.no_grad():
        ref_logits = [model(torch.tensor([ids])).logits[0].numpy() for ids in prompts]
        ref_gens = []
        for ids in gen_prompts:  # greedy by hand: no generation_config (penalties, early stop) in the way
            out = model(torch.tensor([ids]), use_cache=True)
            new = [int(out.logits[0, -1].argmax())]
            for _ in range(GEN_STEPS - 1):
                out = model(torch.tensor([new[-1:]]), past_key_values=out.past_key_values, use_cache=True)
                new.append(int(out.logits[0, -1].argmax()))
            ref_gens.append(new)
    eos = tok.eos_token_id
    ref_texts = [tok.decode(g[: g.index(eos)] if eos in g else g, skip_special_tokens=True) for g in ref_gens]
    scale = max(float(np.abs(x).max()) for x in ref_logits)
    rows = {"logit_scale": round(scale, 2), "quants": {}}
    for quant in quants:
        out = tmp / f"export-{quant}"
        t0 = time.perf_counter()
        export_model(str(run), stage=stage, out=out, fmt="gguf", quant=quant, force=True, log=lambda m: None)
        seconds = time.perf_counter() - t0
        gguf_file = next(out.glob("*.gguf"))
        got = llama_cpp(python, {"gguf": str(gguf_file), "prompts": prompts, "gen_prompts": gen_prompts,
                                 "gen_steps": GEN_STEPS, "logits_out": str(tmp / "logits.npz"),
                                 "chat_prompts": CHAT_PROMPTS}, tmp)
        lc = np.load(tmp / "logits.npz")
        lc_logits = [lc[f"arr_{i}"] for i in range(len(prompts))]
        diffs = [float(np.abs(a - b).max()) for a, b in zip(ref_logits, lc_logits)]
        top1 = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref_logits, lc_logits))
        positions = sum(len(p) for p in prompts)
        prefix = [next((k for k, (a, b) in enumerate(zip(r, g)) if a != b), GEN_STEPS)
                  for r, g in zip(ref_gens, got["generations"])]
        row = {"file_mib": round(gguf_file.stat().st_size / 2**20, 1), "export_seconds": round(seconds, 1),
               "llama_cpp_max_abs_logit_diff": round(max(diffs), 4),
               "llama_cpp_top1_agreement": f"{top1}/{positions}",
               "greedy_identical": f"{sum(p == GEN_STEPS for p in prefix)}/{len(prefix)}",
               "greedy_first_tokens_equal": prefix,
               "chat_completion_same_text": f"{sum(a == b for a, b in zip(ref_texts, got['chat']))}/{len(ref_texts)}",
               "chat_completion_texts": got["chat"]}
        if quant != "f32":  # transformers' reader de-quantizes: the weights' rounding alone, without llama.cpp's
            reader = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf_file.name, dtype=torch.float32).eval()
            with torch.no_grad():
                tr = [reader(torch.tensor([ids])).logits[0].numpy() for ids in prompts]
            row["transformers_reader_max_abs_logit_diff"] = round(max(float(np.abs(a - b).max())
                                                                  for a, b in zip(ref_logits, tr)), 4)
            same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref_logits, tr))
            row["transformers_reader_top1_agreement"] = f"{same}/{positions}"
            row["llama_cpp_vs_transformers_reader_max_abs_logit_diff"] = round(max(float(np.abs(a - b).max())
                                                                               for a, b in zip(tr, lc_logits)), 4)
            del reader
        rows["quants"][quant] = row
        print(json.dumps({quant: row}, ensure_ascii=False), file=sys.stderr)
    rows["transformers_greedy_texts"] = ref_texts
    return rows


def architecture_rows(python: str, tmp: Path) -> dict:
    """Tiny random models of each architecture the export writes: llama.cpp's logits against transformers'."""
    import numpy as np
    import torch
    from transformers import (GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    from langadapt.models import load_tokenizer
    from langadapt.serve.gguf import write_gguf

    tok = load_tokenizer("smollm2-135m-instruct")
    kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512)
    models = {
        "llama, tied": LlamaForCausalLM(LlamaConfig(**kw, tie_word_embeddings=True)),
        "llama, untied, llama3 rope": LlamaForCausalLM(LlamaConfig(**kw, tie_word_embeddings=False, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
        "mistral": MistralForCausalLM(MistralConfig(**kw, tie_word_embeddings=False)),
        "qwen2, tied": Qwen2ForCausalLM(Qwen2Config(**kw, tie_word_embeddings=True)),
        "gemma": GemmaForCausalLM(GemmaConfig(**kw, head_dim=16, tie_word_embeddings=True)),
    }
    ids = tok("The quick brown fox jumps over the lazy dog. سلام، حال شما چطور است؟ " * 6,
              add_special_tokens=False)["input_ids"][:120]
    rows = {}
    for name, model in models.items():
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.2)
        model.eval()
        path = tmp / "arch.gguf"
        write_gguf(model, tok, path, quant="f32", name="tiny", log=lambda m: None)
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0].numpy()
        llama_cpp(python, {"gguf": str(path), "prompts": [ids], "gen_prompts": [], "gen_steps": 0,
                           "logits_out": str(tmp / "arch.npz")}, tmp)
        got = np.load(tmp / "arch.npz")["arr_0"]
        rows[name] = {"max_abs_logit_diff": round(float(np.abs(got - expected).max()), 5),
                      "logit_scale": round(float(np.abs(expected).max()), 2),
                      "top1_agreement": f"{int((got.argmax(-1) == expected.argmax(-1)).sum())}/{len(ids)}"}
        print(json.dumps({name: rows[name]}), file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a demo run folder (tokenizer stage at least; sft for part 2)")
    parser.add_argument("--llama-python", required=True, help="the interpreter that has llama_cpp installed")
    parser.add_argument("--data", default=str(DATA), help="the shared data folder (default ../shared/data)")
    parser.add_argument("--pieces", type=int, default=20_000, help="the larger tokenizer's pieces (0: skip it)")
    parser.add_argument("--stage", default="sft", help="the stage whose model part 2 exports (default sft)")
    parser.add_argument("--skip-tokenizers", action="store_true", help="part 2 only")
    parser.add_argument("--quants", default="f32,f16,q8_0", help="part 2's GGUF types, comma-separated")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    data, run = Path(args.data), Path(args.run)
    if not data.is_dir():
        sys.exit(f"{data} is not here; this benchmark needs the shared data")

    from transformers import AutoTokenizer

    from langadapt.models import load_tokenizer, smollm2_path
    from langadapt.tokenizer.fertility import read_lines

    lines = test_lines(data)
    whole = {k: lines.pop(k) for k in ("all_quran_fa", "all_reviews_fa")}
    whole["demo_heldout_fa"] = read_lines(Path(__file__).resolve().parents[1] / "data" / "demo" / "heldout" / "fa.txt")
    results: dict = {"lines": {k: len(v) for k, v in {**lines, **whole}.items()}, "tokenizers": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_tokenizers:
            base = load_tokenizer("smollm2-135m-instruct")
            base_tj = json.loads(base.backend_tokenizer.to_str())
            variants = [("SmolLM2 base", base)]
            demo = AutoTokenizer.from_pretrained(run / "tokenizer" / "model")
            toks = [("demo", demo)]
            if args.pieces:
                big = big_tokenizer(base, args.pieces, data, tmp)
                toks.append((f"{args.pieces:,} pieces", big["extend"]))
            for name, tok in toks:  # pre-tokenizer extend/keep x the stage's normalizer on/off
                stem = tmp / name.replace(",", "").replace(" ", "-")
                variants += [(f"{name}: extend, normalizer", tok),
                             (f"{name}: keep, normalizer", variant(tok, Path(f"{stem}-k"), base_tj=base_tj)),
                             (f"{name}: extend, no normalizer", variant(tok, Path(f"{stem}-n"), normalizer=False)),
                             (f"{name}: keep, no normalizer", variant(tok, Path(f"{stem}-kn"), base_tj=base_tj,
                                                                      normalizer=False))]
            own = tokenizer_rows("smollm2-own", base, args.llama_python, lines, tmp, gguf_file=smollm2_path())
            own["tokenizer"] = "SmolLM2's own GGUF file (pre 'smollm') vs transformers' reading of it"
            results["tokenizers"].append(own)
            print(json.dumps(own, ensure_ascii=False), file=sys.stderr)
            for name, tok in variants:
                row = tokenizer_rows(f"variant{len(results['tokenizers'])}", tok, args.llama_python, lines, tmp,
                                     whole=whole)
                row["tokenizer"] = name
                results["tokenizers"].append(row)
                print(json.dumps(row, ensure_ascii=False), file=sys.stderr)
            results["architectures"] = architecture_rows(args.llama_python, tmp)
        if (run / args.stage / "COMPLETE.json").is_file():
            results["model"] = model_rows(run, args.stage, args.llama_python, lines, tmp,
                                          quants=tuple(args.quants.split(",")))
    text = json.dumps(results, ensure_ascii=False, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
