"""The instruction-tuning mix and the paper's protocols, each one recipe switch.

In order:

1. **Held-out tasks** (``holdout_tasks``, paper: multiple_choice and sentiment): a conversation
   is dropped when any of its task labels matches an entry (shell-style patterns allowed, e.g.
   ``"*sentiment*"``). Its labels are, normalised to lower_snake_case: the record's task (Alpaca/
   Dolly ``category``, the SNI task name taken from the file name, a ``messages`` record's
   ``category``/``task``, or the source's ``task``), the SNI task's ``Categories``, the built-in
   aliases in :data:`TASK_ALIASES` (SNI's "Sentiment Analysis" is ``sentiment``), and whatever
   ``task_map`` maps any of these to.
2. **English + translation only** (``target_instructions: false``, Table 6): target-language
   instructions are dropped; English ones and the translation instructions stay.
3. Conversations with no answer token left inside ``seq_len`` are dropped (``fits``).
4. **N target-language instructions** (``limit_target``, Table 8: 100): a seeded sample of N.
5. ``max_examples`` caps the whole mix, translation instructions included.
6. **Translation instructions** (``translation_share``, paper ~24%): ``T = round(s·N/(1-s))`` are
   added to the N instructions, so they are the requested share of the final mix (within
   ``1/(2(N+T))``). If the parallel data cannot give T, instructions are sampled down so the
   share still holds (and the report says so). Instructions that are already translations in a
   source (category ``translation``) are ordinary instructions and do not count toward the share.
"""

from __future__ import annotations

import fnmatch
import random
from collections import Counter
from collections.abc import Callable, Sequence

from langadapt.data.instructions import Conversation, normalize_label
from langadapt.sft.translation import translation_conversations

TASK_ALIASES = {
    "sentiment_analysis": "sentiment",
    "sentiment_classification": "sentiment",
    "multiple_choice_question_answering": "multiple_choice",
    "multiple_choice_qa": "multiple_choice",
    "textual_entailment": "entailment",
    "summarisation": "summarization",
}


def task_labels(conv: Conversation, task_map: dict[str, str] | None = None) -> set[str]:
    """Every name the conversation's task goes by (see the module docstring)."""
    raw = [conv.task] if conv.task else []
    labels = {normalize_label(x) for x in [*raw, *conv.categories] if x}
    labels |= {TASK_ALIASES[x] for x in labels if x in TASK_ALIASES}
    if task_map:
        norm = {normalize_label(k): normalize_label(v) for k, v in task_map.items()}
        labels |= {norm[x] for x in labels if x in norm}
    return labels


def held_out_by(conv: Conversation, patterns: Sequence[str], task_map: dict[str, str] | None = None) -> str | None:
    """The hold-out entry that matches ``conv``, or None."""
    labels = task_labels(conv, task_map)
    for p in patterns:
        pat = normalize_label(p) if not any(c in p for c in "*?[") else p.lower()
        if any(fnmatch.fnmatchcase(label, pat) for label in labels):
            return p
    return None


def build_mix(
    conversations: Sequence[Conversation],
    pairs: Sequence[tuple[str, str, str]],
    sft,
    *,
    target: str,
    target_name: str,
    seed: int = 0,
    phrasings: dict | None = None,
    fits: Callable[[Conversation], bool] | None = None,
) -> tuple[list[Conversation], dict]:
    """The training conversations for a recipe ``SftConfig`` and a report of every choice made.

    ``pairs`` are (parallel source name, target-language text, English text). ``fits`` says
    whether a conversation keeps answer tokens within the sequence length.
    """
    rng = random.Random(seed)
    report: dict = {"read": len(conversations)}
    pool = list(conversations)

    held: Counter = Counter()
    if sft.holdout_tasks:
        kept = []
        for c in pool:
            p = held_out_by(c, sft.holdout_tasks, sft.task_map)
            if p is None:
                kept.append(c)
            else:
                held[p] += 1
        pool = kept
    report["held_out"] = {p: held.get(p, 0) for p in sft.holdout_tasks}

    if not sft.target_instructions:
        report["dropped_target_language"] = sum(1 for c in pool if c.language == target)
        pool = [c for c in pool if c.language != target]

    if fits is not None:
        before = len(pool)
        pool = [c for c in pool if fits(c)]
        report["too_long"] = before - len(pool)

    if sft.limit_target is not None:
        tgt = [c for c in pool if c.language == target]
        keep = set(map(id, rng.sample(tgt, min(sft.limit_target, len(tgt)))))
        report["limit_target"] = {"requested": sft.limit_target, "available": len(tgt), "kept": len(keep)}
        pool = [c for c in pool if c.language != target or id(c) in keep]

    share = sft.translation_share
    translation_held = share > 0 and held_out_by(
        Conversation(messages=[], language="", source="", task="translation"), sft.holdout_tasks, sft.task_map)
    if translation_held:
        report["translation_note"] = f"translation is held out by '{translation_held}'; no translation instructions added"
        share = 0.0

    if sft.max_examples is not None and len(pool) > sft.max_examples - round(share * sft.max_examples):
        cap = sft.max_examples - round(share * sft.max_examples)
        pool = _sample(pool, cap, rng)
        report["capped_by_max_examples"] = cap

    translations: list[Conversation] = []
    if share > 0 and pairs:
        wanted = round(share * len(pool) / (1 - share))
        by_source: dict[str, list[tuple[str, str]]] = {}
        for name, tgt_text, en_text in pairs:
            by_source.setdefault(name, []).append((tgt_text, en_text))
        candidates = _translation_candidates(by_source, wanted, fits, target=target, target_name=target_name,
                                             seed=seed, phrasings=phrasings, rng=rng)
        if len(candidates) < wanted:
            fit_n = int(len(candidates) * (1 - share) / share)
            report["translation_note"] = (
                f"the parallel data gives {len(candidates):,} translation instructions but {wanted:,} were needed for "
                f"share {share:.2f}; instructions sampled down from {len(pool):,} to {fit_n:,} to keep the share "
                "(add parallel data or lower sft.translation_share to use them all)")
            pool = _sample(pool, fit_n, rng)
            wanted = min(len(candidates), round(share * len(pool) / (1 - share)))
        translations = candidates[:wanted]
    elif share > 0:
        report["translation_note"] = "no parallel pairs: no translation instructions added"

    mix = pool + translations
    rng.shuffle(mix)
    total = len(mix)
    report["total"] = total
    report["instructions"] = len(pool)
    report["translation"] = {
        "requested_share": sft.translation_share,
        "share": round(len(translations) / total, 4) if total else 0.0,
        "count": len(translations),
        "to_target": sum(1 for c in translations if c.id.endswith(f"en-{target}")),
        "to_english": sum(1 for c in translations if c.id.endswith(f"{target}-en")),
        "phrasing_language": dict(Counter(c.language for c in translations)),
    }
    report["by_source"] = dict(Counter(c.source for c in mix))
    report["by_language"] = dict(Counter(c.language for c in mix))  # translations by their phrasing's language
    report["instructions_by_language"] = dict(Counter(c.language for c in pool))
    report["by_task"] = dict(Counter(c.task or "(none)" for c in mix))
    return mix, report


def _translation_candidates(by_source, wanted, fits, *, target, target_name, seed, phrasings, rng
                            ) -> list[Conversation]:
    """At least ``wanted`` fitting translation instructions if the pairs allow, drawn from every
    source in proportion to its size. Only a little more than needed is generated (a parallel
    corpus can hold millions of pairs); if too many do not fit, everything is tried."""
    total = sum(len(p) for p in by_source.values())
    for attempt in ("proportional", "all"):
        out: list[Conversation] = []
        for name, src_pairs in sorted(by_source.items()):
            n = 2 * len(src_pairs)
            if attempt == "proportional":
                n = min(n, int(wanted * 1.1 * len(src_pairs) / total) + 16)
            made = translation_conversations(src_pairs, n, target=target, target_name=target_name,
                                             source=f"translation:{name}", seed=seed, phrasings=phrasings)
            out.extend(c for c in made if fits is None or fits(c))
        if len(out) >= wanted or attempt == "all" or all(
                int(wanted * 1.1 * len(p) / total) + 16 >= 2 * len(p) for p in by_source.values()):
            break
    rng.shuffle(out)
    # Alternate directions so any prefix of the list is balanced between them.
    ways = [[c for c in out if c.id.endswith(f"en-{target}")], [c for c in out if not c.id.endswith(f"en-{target}")]]
    mixed = [c for pair in zip(*ways) for c in pair]
    short = min(len(w) for w in ways)
    return mixed + ways[0][short:] + ways[1][short:]


def _sample(pool: list[Conversation], n: int, rng: random.Random) -> list[Conversation]:
    if n >= len(pool):
        return pool
    keep = set(map(id, rng.sample(pool, n)))
    return [c for c in pool if id(c) in keep]
