"""The merge on real vocabularies of the families people adapt (issue 13).

The Hugging Face hub cannot be reached here, but several PyPI packages carry the real vocabularies:
``llama-models`` (Llama-3's 128,000-token tiktoken BPE), ``dashscope`` (Qwen's 151,643-token BPE,
the one Qwen2/2.5 use), ``openai-whisper`` (GPT-2's 50,256-token BPE), ``mistral-common`` (Mistral's
SentencePiece models: v1 is the Llama-2 layout with 32,000 pieces, v3 adds control tokens to 32,768).
This script downloads those wheels with ``pip download --no-deps`` into a cache folder, lays each
vocabulary out as its hub ``tokenizer.json`` is laid out (Llama-3 and Qwen2: specials only in
``added_tokens`` after the vocabulary; Qwen2: 151,936 model rows for 151,665 tokens; GPT-2: the
end-of-text token as the last vocabulary entry), adds SmolLM2 (bundled), and merges 20,000
Persian pieces trained on ../shared/data (poems + Persian Quran) into each, with the recipe's
default normalizer. It reports per base:

- special/added tokens whose id changed, ids shared by two tokens or not mapping back,
- English Quran lines (6,236, with special tokens) whose ids changed,
- held-out Persian lines (ParsiNLU reviews + entailment sentences, never trained on) that do not
  round-trip or decode differently when special tokens are skipped,
- whether a chat conversation renders to the same ids,
- fertility (tokens per word) on the reviews as written, and with Persian yeh/kaf written as Arabic
  yeh/kaf (how much scraped and typed text looks), before and after the merge,
- with ``--tf4-python`` (a Python with transformers 4.x), whether the merged folder loads there with
  the same ids.

    python bench/tokenizer_real_bases.py [--pieces 20000] [--cache DIR] [--tf4-python PY] [--json out.json]

Run it with ``PYTHONPATH`` pointing at another checkout's ``src`` to measure that version.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
import zipfile
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenizer_bench import DATA, corpus_files, entailment, reviews  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                   + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 11)])
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                  "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                  "<|repo_name|>", "<|file_sep|>"]
LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] | trim }}<|eot_id|>{% endfor %}")
CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
MISTRAL_CHAT = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
PACKAGES = {"llama-models": "llama_models/llama3/tokenizer.model", "dashscope": "dashscope/resources/qwen.tiktoken",
            "openai-whisper": "whisper/assets/gpt2.tiktoken",
            "mistral-common": ["mistral_common/data/tokenizer.model.v1",
                               "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3"]}


def fetch(cache: Path) -> dict[str, Path]:
    """The vocabulary files, from the PyPI packages that ship them (downloaded once into ``cache``)."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for package, members in PACKAGES.items():
        members = [members] if isinstance(members, str) else members
        want = [cache / Path(m).name for m in members]
        if not all(w.is_file() for w in want):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", str(cache)],
                           check=True)
            archive = max(cache.glob(package.replace("-", "_") + "-*"), key=lambda p: p.stat().st_mtime)
            for member, dest in zip(members, want):
                if archive.suffix == ".whl":
                    with zipfile.ZipFile(archive) as z:
                        dest.write_bytes(z.read(member))
                else:
                    with tarfile.open(archive) as t:
                        name = next(n for n in t.getnames() if n.endswith(member))
                        dest.write_bytes(t.extractfile(name).read())
        out.update({Path(m).name: w for m, w in zip(members, want)})
    return out


def tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken BPE file: one ``base64(token) rank`` per line."""
    ranks = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def from_tiktoken(path: Path, pattern: str) -> dict:
    """A byte-level tokenizer.json of a tiktoken vocabulary (transformers' converter, our file reader)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(url):
            return tiktoken_ranks(Path(url))

    return json.loads(Converter(vocab_file=str(path), pattern=pattern).converted().to_str())


def added(content: str, i: int) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def wrap(tj: dict, **kw):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tj)), **kw)


def bases(files: dict[str, Path], tmp: Path) -> dict:
    """name -> (HF tokenizer, model rows) laid out as on the hub."""
    from transformers import AutoTokenizer

    from langadapt.models import load_tokenizer

    out = {}
    tj = from_tiktoken(files["tokenizer.model"], LLAMA3_PATTERN)
    n = len(tj["model"]["vocab"])
    tj["added_tokens"] = [added(s, n + i) for i, s in enumerate(LLAMA3_SPECIALS)]
    tj["post_processor"] = {"type": "TemplateProcessing",
                            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                     {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [n],
                                                                     "tokens": ["<|begin_of_text|>"]}}}
    tok = wrap(tj, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", chat_template=LLAMA3_CHAT)
    out["Llama-3 (128,256)"] = (tok, 128_256)

    tj = from_tiktoken(files["qwen.tiktoken"], QWEN2_PATTERN)
    n = len(tj["model"]["vocab"])
    tj["added_tokens"] = [added(s, n + i) for i, s in enumerate(QWEN2_SPECIALS)]
    tj["normalizer"] = {"type": "NFC"}
    tok = wrap(tj, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML)
    out["Qwen2.5 (151,665 tokens, 151,936 rows)"] = (tok, 151_936)

    tj = from_tiktoken(files["gpt2.tiktoken"], LLAMA3_PATTERN)
    tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tj["model"]["vocab"]["<|endoftext|>"] = len(tj["model"]["vocab"])
    tj["added_tokens"] = [added("<|endoftext|>", tj["model"]["vocab"]["<|endoftext|>"])]
    tok = wrap(tj, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    out["GPT-2 (50,257)"] = (tok, 50_257)

    for name, file in (("Mistral v0.1 / Llama-2 layout (32,000)", "tokenizer.model.v1"),
                       ("Mistral v0.3 (32,768)", "mistral_instruct_tokenizer_240323.model.v3")):
        folder = tmp / file
        folder.mkdir()
        (folder / "tokenizer.model").write_bytes(files[file].read_bytes())
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": True, "legacy": False, "chat_template": MISTRAL_CHAT}), encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(folder)
        out[name] = (tok, len(tok))
    tok = load_tokenizer("smollm2-135m-instruct")
    out["SmolLM2 (49,152, from GGUF)"] = (tok, 49_152)
    return out


def arabic_letters(text: str) -> str:
    """Persian yeh and kaf written as Arabic yeh and kaf, as much typed and scraped Persian is."""
    return text.replace("ی", "ي").replace("ک", "ك")


def fertility(tok, lines) -> float:
    return round(sum(len(x) for x in tok(lines, add_special_tokens=False)["input_ids"]) /
                 sum(len(x.split()) for x in lines), 3)


def check(name, base, rows, pieces, english_lines, persian_lines, tmp: Path, tf4: str | None) -> dict:
    from transformers import AutoTokenizer

    from langadapt.clean import normalize
    from langadapt.tokenizer import merge as m
    from langadapt.tokenizer.stage import save_tokenizer

    t0 = time.perf_counter()
    merged = m.merge_pieces(json.loads(base.backend_tokenizer.to_str()), pieces, base_rows=rows)
    rewrites = {}
    if hasattr(m, "add_normalizer"):  # absent before issue 13
        rewrites = m.add_normalizer(merged.tokenizer_json, normalize.char_map("fa"), m.target_characters(pieces)[0])
    seconds = time.perf_counter() - t0
    out = tmp / ("merged-" + "".join(c for c in name if c.isalnum()))
    out.mkdir()
    save_tokenizer(base, merged.tokenizer_json, out, pad_token=None, pad_id=None)
    tok = AutoTokenizer.from_pretrained(out)
    r: dict = {"base_tokens": len(base), "base_rows": rows, "merged_tokens": len(tok), "merge_seconds": round(seconds, 1),
               "new_ids_from": merged.first_new_id}
    before = {i: t.content for i, t in base.backend_tokenizer.get_added_tokens_decoder().items()}
    after = {t.content: i for i, t in tok.backend_tokenizer.get_added_tokens_decoder().items()}
    r["added_tokens"] = len(before)
    r["added_tokens_moved"] = sum(after.get(c) != i for i, c in before.items())
    vocab = tok.get_vocab()
    strings = tok.convert_ids_to_tokens(list(range(len(tok))))
    back = [tok.convert_tokens_to_ids(t) if t is not None else None for t in strings]
    r["ids_shared_or_not_mapping_back"] = (len(tok) - len(set(vocab.values())) + sum(i != j for i, j in enumerate(back)))
    r["base_tokens_moved"] = sum(vocab.get(t) != i for t, i in base.get_vocab().items())
    r["english_lines_changed"] = sum(a != b for a, b in zip(base(english_lines)["input_ids"],
                                                            tok(english_lines)["input_ids"]))
    ids = tok(persian_lines, add_special_tokens=False)["input_ids"]
    decoded = tok.batch_decode(ids)
    normalized = [x.translate(str.maketrans(rewrites)) for x in persian_lines]  # what decoding gives back
    expect = base.batch_decode(base(normalized, add_special_tokens=False)["input_ids"])
    r["persian_roundtrip_failures"] = sum(a != b for a, b in zip(decoded, expect))
    r["persian_decoded_as_special"] = sum(a != b for a, b in zip(decoded, tok.batch_decode(ids, skip_special_tokens=True)))
    if base.chat_template:
        chat = [{"role": "user", "content": "What is the capital of Iran?"}, {"role": "assistant", "content": "Tehran."}]
        text = base.apply_chat_template(chat, tokenize=False)
        r["chat_same_ids"] = (tok.apply_chat_template(chat, tokenize=False) == text and
                              tok(text, add_special_tokens=False)["input_ids"] ==
                              base(text, add_special_tokens=False)["input_ids"])
    revs = reviews()
    raw = [arabic_letters(x) for x in revs]
    r["fertility"] = {"reviews": [fertility(base, revs), fertility(tok, revs)],
                      "reviews_arabic_yeh_kaf": [fertility(base, raw), fertility(tok, raw)]}
    if tf4:
        sample = english_lines[:300] + persian_lines[:300]
        (tmp / "case.json").write_text(json.dumps({"folder": str(out), "texts": sample}), encoding="utf-8")
        code = ("import json,sys;from transformers import AutoTokenizer;c=json.load(open(sys.argv[1]));"
                "t=AutoTokenizer.from_pretrained(c['folder']);print(json.dumps([t(x)['input_ids'] for x in c['texts']]))")
        run = subprocess.run([tf4, "-c", code, str(tmp / "case.json")], capture_output=True, text=True)
        r["transformers4"] = ("fails to load: " + run.stderr.strip().splitlines()[-1] if run.returncode
                              else sum(a == b for a, b in zip(json.loads(run.stdout), tok(sample)["input_ids"]))
                              == len(sample))
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pieces", type=int, default=20_000)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "langadapt-bench" / "vocabularies"))
    parser.add_argument("--tf4-python", help="a Python with transformers 4.x, to check the merged folders load there")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is not here; this benchmark needs the shared data")

    from langadapt.tokenizer.merge import read_sentencepiece
    from langadapt.tokenizer.train import reservoir_sample, train_sentencepiece

    files = fetch(Path(args.cache))
    english_lines = [x.strip() for x in (DATA / "quran" / "en.yusufali.txt").read_text(encoding="utf-8").splitlines()
                     if x.strip()]
    persian_lines = list(dict.fromkeys(reviews() + entailment()))
    results = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sample = reservoir_sample(corpus_files(tmp), 10_000_000, tmp / "sample.txt", seed=0)
        trained = train_sentencepiece(sample.path, tmp / "sp.model", vocab_size=args.pieces, model_type="bpe",
                                      character_coverage=0.9995, seed=0)
        pieces = read_sentencepiece(trained.model_path)
        for name, (base, rows) in bases(files, tmp).items():
            print(f"{name} ...", file=sys.stderr, flush=True)
            results[name] = check(name, base, rows, pieces, english_lines, persian_lines, tmp, args.tf4_python)
    results["_lines"] = {"english": len(english_lines), "persian_heldout": len(persian_lines)}
    text = json.dumps(results, ensure_ascii=False, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
