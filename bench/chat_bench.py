"""Chat generation: do the default sampling settings avoid the paper's repetition loops, and what
does the streaming path cost compared with a plain ``model.generate``?

    python bench/chat_bench.py                       # SmolLM2, English prompts (about 5-10 minutes on 2 cores)
    python bench/chat_bench.py --model runs/demo/sft --lang fa

Repetition: the paper's appendix (Figures 6 and 10) shows list items and poem lines repeated until
the token limit. For each prompt we generate with greedy decoding (no penalties) and with the
defaults of ``langadapt.serve.generation.Sampling`` (seeded), and count answers with a repeated
line, the share of lines that repeat an earlier one, and distinct 4-grams of tokens.

Speed: tokens per second of ``ChatModel.generate`` (worker thread + streamer + stop checks)
against ``model.generate`` with the same settings, and the time to the first streamed piece.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

PROMPTS = {
    "en": ["List ten recreational places in Iran, one per line, with one sentence about each.",
           "Write a short sad poem about standing among dark trees.",
           "Give me a numbered list of 12 tips for learning a new language.",
           "Describe a walk through an old garden, line by line, in short lines."],
    "fa": ["مکان‌های تفریحی در ایران را معرفی کن.",
           "یک شعر غم‌انگیز بگو.",
           "ده نکته برای یادگیری یک زبان تازه را فهرست کن.",
           "یک شعر کوتاه و زیبا بنویس."],
}


def repeated_lines(text: str) -> tuple[int, int]:
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) >= 8]
    seen, rep = set(), 0
    for ln in lines:
        key = ln.split(" ", 1)[-1] if ln[:1].isdigit() else ln  # "6. Qasr Garden ..." repeats "5. Qasr Garden ..."
        if key in seen:
            rep += 1
        seen.add(key)
    return rep, len(lines)


def distinct4(ids: list[int]) -> float:
    grams = [tuple(ids[i:i + 4]) for i in range(len(ids) - 3)]
    return len(set(grams)) / len(grams) if grams else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--lang", choices=sorted(PROMPTS), default="en")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from langadapt.serve.generation import ChatModel, Sampling

    t0 = time.time()
    chat = ChatModel.load(args.model)
    print(f"loaded {chat.name} in {time.time() - t0:.1f} s; torch threads {torch.get_num_threads()}", flush=True)
    configs = {
        "greedy, no penalties": Sampling(temperature=0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                                         max_new_tokens=args.max_new_tokens),
        "langadapt defaults": Sampling(max_new_tokens=args.max_new_tokens, seed=0),
    }
    rows = []
    for label, sampling in configs.items():
        loops = rep_total = line_total = 0
        d4 = []
        for prompt in PROMPTS[args.lang]:
            prepared = chat.prepare([{"role": "user", "content": prompt}], sampling.max_new_tokens)
            text = "".join(chat.generate(prepared, sampling))
            rep, n = repeated_lines(text)
            loops += rep > 0
            rep_total += rep
            line_total += n
            d4.append(distinct4(chat.tokenizer(text, add_special_tokens=False)["input_ids"]))
            print(f"--- {label}: {prompt}\n{text}\n", flush=True)
        rows.append((label, loops, len(PROMPTS[args.lang]), rep_total, line_total, statistics.mean(d4)))

    # Speed: the same prompt and settings through both paths, alternating, 3 rounds.
    sampling = Sampling(temperature=0, max_new_tokens=64)
    prepared = chat.prepare([{"role": "user", "content": PROMPTS[args.lang][0]}], 64)
    ids = torch.tensor([prepared.input_ids])
    plain, streamed, first = [], [], []
    for _ in range(3):
        t = time.perf_counter()
        with torch.inference_mode():
            out = chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), eos_token_id=None,
                                      pad_token_id=chat.eos_ids[0], **sampling.generate_kwargs())
        plain.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - t))
        gen = chat.generate(prepared, sampling)
        t = time.perf_counter()
        for i, _piece in enumerate(gen):
            if i == 0:
                first.append(time.perf_counter() - t)
        streamed.append(gen.completion_tokens / (time.perf_counter() - t))

    print("\n| settings | answers with a repeated line | repeated lines / lines | distinct 4-grams |")
    print("| --- | ---: | ---: | ---: |")
    for label, loops, n, rep, lines, d4 in rows:
        print(f"| {label} | {loops} of {n} | {rep} / {lines} | {d4:.2f} |")
    print(f"\nplain model.generate: {statistics.median(plain):.1f} tokens/s; streamed ChatModel.generate: "
          f"{statistics.median(streamed):.1f} tokens/s; first piece after {statistics.median(first) * 1000:.0f} ms "
          "(medians of 3, greedy, 64 tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
