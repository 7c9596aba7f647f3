"""Replay: text in the base model's own language (``data.replay``, usually English) mixed back into a
training stage's rows, the standard guard against forgetting it while the target language is learned.

A stage's ``replay: {sources, share}`` asks for ``share`` of its training tokens to be replay text.
The documents of the named sources are read in a seeded order (a shuffle buffer over the files, so
memory stays flat), each checked for its declared language (the clean stage's language id, the
target-language rules do not apply), and interleaved with the stage's own documents by token count
(`Mixer`): after each target document, replay documents are added until replay holds ``share`` of the
tokens so far. The packed blocks therefore mix both, and the share over any stretch of rows is close
to the request. When the replay sources run out first, they are read again (the log says how often).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from langadapt.errors import LangadaptError

SHUFFLE_BUFFER = 10_000  # documents held to draw a seeded order from
MIN_PROB = 0.5  # a replay document must be at least this likely in its declared language
PREFLIGHT_DOCS = 200  # documents read from each source to check it before any stage runs


def selected(recipe, settings) -> list:
    """The ``data.replay`` sources a training step's ``replay`` names (all when it names none)."""
    names = settings.replay.sources
    return [s for s in recipe.data.replay if names is None or s.name in names]


@dataclass
class ReplayStats:
    documents: int = 0
    dropped_language: int = 0
    passes: int = 0  # how many times the sources were read through
    by_source: dict = field(default_factory=dict)


def documents(recipe, sources: list, seed: int, stats: ReplayStats | None = None, *, cycle: bool = True) -> Iterator[str]:
    """Replay documents of ``sources`` in a seeded order, each in its source's language; read again from the
    start when they run out (``cycle``). Raises when the sources hold no usable text at all."""
    from langadapt.clean.langid import check_language, probability
    from langadapt.data.corpus import read_source

    stats = stats if stats is not None else ReplayStats()
    rng = random.Random(seed)
    for s in sources:
        check_language(s.language)
    while True:
        stats.passes += 1
        found = 0
        buffer: list[str] = []
        for s in sources:
            for rec in read_source(s, recipe.resolve):
                if rec.empty or rec.invalid or not rec.text.strip():
                    continue
                if probability(rec.text, s.language) < MIN_PROB:
                    stats.dropped_language += 1
                    continue
                found += 1
                stats.by_source[s.name] = stats.by_source.get(s.name, 0) + 1
                if len(buffer) < SHUFFLE_BUFFER:
                    buffer.append(rec.text)
                    continue
                i = rng.randrange(len(buffer))
                stats.documents += 1
                yield buffer[i]
                buffer[i] = rec.text
        rng.shuffle(buffer)
        for text in buffer:
            stats.documents += 1
            yield text
        if not found:
            names = ", ".join(s.name for s in sources)
            raise LangadaptError(f"data.replay: source(s) {names} hold no text in their language; check the files "
                                 "and each source's language")
        if not cycle:
            return


class Mixer:
    """Interleaves target documents with replay documents so that replay holds ``share`` of the tokens.

    ``add(n)`` records a target document of ``n`` tokens and returns how many replay tokens are owed now;
    the caller then takes replay documents (`take`) until nothing is owed.
    """

    def __init__(self, share: float):
        self.ratio = share / (1.0 - share)
        self.target = 0
        self.replay = 0

    def owed(self) -> float:
        return self.ratio * self.target - self.replay

    def wants(self, tokens: int) -> bool:
        """Whether adding a replay document of ``tokens`` tokens brings the share closer to the request."""
        return self.owed() > tokens / 2

    def add_target(self, tokens: int) -> None:
        self.target += tokens

    def add_replay(self, tokens: int) -> None:
        self.replay += tokens

    @property
    def share(self) -> float:
        total = self.target + self.replay
        return self.replay / total if total else 0.0


def mix_examples(examples: list[dict], tokenizer, texts: Iterator[str], share: float) -> tuple[list[dict], dict]:
    """``examples`` (in memory: bilingual pairs, instructions) with replay documents interleaved, loss on
    every replay token; returns (examples, counts)."""
    from langadapt.train.examples import document_examples

    mixer = Mixer(share)
    out: list[dict] = []
    added = 0
    doc = None
    for ex in examples:
        out.append(ex)
        mixer.add_target(len(ex["input_ids"]))
        while True:
            doc = doc or document_examples(tokenizer, [next(texts)])[0]
            if not mixer.wants(len(doc["input_ids"])):
                break
            out.append(doc)
            mixer.add_replay(len(doc["input_ids"]))
            added += 1
            doc = None
    return out, {"documents": added, "tokens": mixer.replay, "share": round(mixer.share, 4)}


def describe(info: dict | None) -> str:
    """A log fragment: how much replay text the training rows hold (``info`` from the store or `mix_examples`)."""
    if not info:
        return ""
    return f"; replay: {info['documents']:,} documents, {100 * info['share']:.1f}% of the tokens"


def check_sources(recipe) -> None:
    """Before any stage runs: every replay source a training step uses has text, mostly in its declared
    language and not in the target language. One-line errors naming the source."""
    from langadapt.clean.langid import check_language, probability
    from langadapt.data.corpus import read_source
    from langadapt.recipe import training_settings

    used = {s.name: s for _, settings in training_settings(recipe) if settings.replay is not None
            for s in selected(recipe, settings)}
    target = recipe.language.code
    for i, s in enumerate(recipe.data.replay):
        if s.name not in used:
            continue
        check_language(s.language)
        texts = []
        for rec in read_source(s, recipe.resolve):
            if not rec.empty and not rec.invalid and rec.text.strip():
                texts.append(rec.text)
                if len(texts) >= PREFLIGHT_DOCS:
                    break
        where = f"data.replay[{i}] ('{s.name}')"
        if not texts:
            raise LangadaptError(f"{where}: no text in {s.path}; replay needs text in {s.language}",
                                 path=str(recipe.source_path) if recipe.source_path else None)
        in_target = sum(probability(t, target) >= MIN_PROB for t in texts) / len(texts)
        in_own = sum(probability(t, s.language) >= MIN_PROB for t in texts) / len(texts)
        if s.language != target and in_target > 0.5:
            raise LangadaptError(f"{where}: {100 * in_target:.0f}% of its first {len(texts)} documents are in the "
                                 f"target language '{target}'; replay is text in the base model's language "
                                 f"(language: {s.language})", path=str(recipe.source_path) if recipe.source_path else None)
        if in_own < 0.5:
            raise LangadaptError(f"{where}: only {100 * in_own:.0f}% of its first {len(texts)} documents are in "
                                 f"'{s.language}'; set the source's language or give other text",
                                 path=str(recipe.source_path) if recipe.source_path else None)


def for_stage(recipe, settings, seed: int):
    """What a training step's ``replay`` asks for, ready for the store or the examples: (documents, share,
    a description of them for the token store's key), or None without replay."""
    import json

    from langadapt.files import fingerprint_path

    if settings.replay is None:
        return None
    sources = selected(recipe, settings)
    files = [fingerprint_path(recipe.resolve(s.path)) for s in sources if recipe.resolve(s.path).exists()]
    key = json.dumps([[s.model_dump(mode="json") for s in sources], files, seed], sort_keys=True, default=str)
    return documents(recipe, sources, seed), settings.replay.share, key
