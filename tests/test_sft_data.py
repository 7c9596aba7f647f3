"""sft data side: loss mask on assistant tokens only, translation share, protocols, held-out tasks."""

from __future__ import annotations

import pytest

from langadapt.data.instructions import Conversation
from langadapt.recipe import SftConfig
from langadapt.sft.mix import build_mix, held_out_by
from langadapt.sft.template import IGNORE, DEFAULT_TEMPLATE, encode, ensure_chat_template, prompt_ids
from langadapt.sft.translation import PHRASINGS, load_phrasings, translation_conversations

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "پایتخت ایران کجاست؟"},
    {"role": "assistant", "content": "تهران است."},
]


def tiny_tokenizer(chat_template: str | None = CHATML):
    """A byte-level BPE trained in the test, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["What is two plus two? Four. Be brief.", "پایتخت ایران کجاست؟ تهران است.", "user assistant system"] * 20
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>" if chat_template else "</s>",
                                   bos_token="<s>", pad_token="<|im_end|>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def label_runs(enc) -> list[tuple[int, int]]:
    """Contiguous spans of positions that carry a label."""
    runs, start = [], None
    for i, lab in enumerate(enc.labels + [IGNORE]):
        if lab != IGNORE and start is None:
            start = i
        elif lab == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


def check_mask(tok, messages, end: str):
    enc = encode(tok, messages)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = label_runs(enc)
    # Labelled tokens are exactly each answer followed by the end-of-turn token, nothing else.
    assert [tok.decode(enc.input_ids[a:b]) for a, b in runs] == [a + end for a in answers]
    assert all(enc.labels[i] == enc.input_ids[i] for a, b in runs for i in range(a, b))
    # The whole rendering is there, and generation starts exactly where the first answer's labels start.
    assert tok.decode(enc.input_ids) == tok.apply_chat_template(messages, tokenize=False)
    first = CONVERSATION.index(next(m for m in messages if m["role"] == "assistant"))
    assert enc.input_ids[: runs[0][0]] == prompt_ids(tok, messages[:first])
    return enc


def test_loss_mask_covers_exactly_the_assistant_tokens_chatml():
    tok = tiny_tokenizer()
    assert ensure_chat_template(tok) == "model"
    check_mask(tok, CONVERSATION, "<|im_end|>")


def test_default_template_used_when_the_tokenizer_has_none():
    tok = tiny_tokenizer(chat_template=None)
    assert ensure_chat_template(tok) == "default" and tok.chat_template == DEFAULT_TEMPLATE
    enc = check_mask(tok, CONVERSATION, "</s>")
    text = tok.decode(enc.input_ids)
    assert text.startswith("<s>Be brief.\n\n### Instruction:\nWhat is two plus two?\n\n### Response:\nFour.</s>")


def test_loss_mask_on_smollm2_chat_template(smollm2):
    tok = smollm2[1]  # the session's SmolLM2 (other tests load it anyway); its template is left untouched
    assert ensure_chat_template(tok) == "model"
    check_mask(tok, CONVERSATION, "<|im_end|>")
    # Without a system message SmolLM2's template adds its own; it gets no labels either.
    enc = encode(tok, CONVERSATION[1:3])
    assert [tok.decode(enc.input_ids[a:b]) for a, b in label_runs(enc)] == ["Four.<|im_end|>"]


def test_truncation_keeps_the_start():
    tok = tiny_tokenizer()
    full = encode(tok, CONVERSATION)
    cut = encode(tok, CONVERSATION, max_len=10)
    assert cut.truncated and cut.input_ids == full.input_ids[:10] and cut.trained_tokens == 0


# --------------------------------------------------------------------------- translation


def test_each_direction_has_many_phrasings_in_both_languages():
    for lang in ("en", "fa"):
        for direction in ("to_target", "to_english"):
            items = PHRASINGS[lang][direction]
            assert len(items) >= 10 and len(set(items)) == len(items)
            assert all("{text}" in p for p in items)


def test_translation_instructions_go_both_ways_with_varied_wording():
    pairs = [(f"جمله {i}", f"sentence {i}") for i in range(200)]
    convs = translation_conversations(pairs, 200, target="fa", target_name="Persian", seed=1)
    to_fa = [c for c in convs if c.id.endswith("en-fa")]
    to_en = [c for c in convs if c.id.endswith("fa-en")]
    assert len(to_fa) == len(to_en) == 100
    assert all(c.response.startswith("جمله") and "sentence" in c.prompt[0]["content"] for c in to_fa)
    assert all(c.response.startswith("sentence") and "جمله" in c.prompt[0]["content"] for c in to_en)
    assert {c.language for c in convs} == {"en", "fa"}
    assert len({c.prompt[0]["content"].replace(c.id.split(":")[1], "#") for c in convs}) >= 30
    assert all("{lang}" not in c.prompt[0]["content"] and "Persian" in c.prompt[0]["content"]
               for c in to_fa if c.language == "en" and "English:" not in c.prompt[0]["content"])
    # Each pair is used once per direction, at most.
    assert len(translation_conversations(pairs[:5], 50, target="fa", target_name="Persian")) == 10


def test_translation_prompts_file_adds_a_language(tmp_path):
    f = tmp_path / "de.json"
    f.write_text('{"de": {"to_target": ["Übersetze ins Deutsche: {text}"], "to_english": ["Ins Englische: {text}"]}}')
    table = load_phrasings("de", f)
    assert set(table) == {"en", "de"} and table["de"]["to_target"] == ("Übersetze ins Deutsche: {text}",)


# --------------------------------------------------------------------------- the mix

TASKS = ["open_qa", "closed_qa", "brainstorming", "rewrite", "summarization", "classification",
         "creative_writing", "translation", "sentiment", "multiple_choice", "entailment", "general"]


def instructions(n_per_lang: int = 150) -> list[Conversation]:
    out = []
    for lang in ("en", "fa"):
        for i in range(n_per_lang):
            task = TASKS[i % len(TASKS)]
            out.append(Conversation(messages=[{"role": "user", "content": f"{lang} q{i}"},
                                              {"role": "assistant", "content": f"a{i}"}],
                                    language=lang, source=f"alpaca_{lang}", task=task, id=f"{lang}:{i}"))
    # An SNI-style record whose sentiment label lives only in its categories.
    out.append(Conversation(messages=[{"role": "user", "content": "review"}, {"role": "assistant", "content": "positive"}],
                            language="en", source="sni", task="task1312_amazonreview_polarity_classification",
                            categories=("sentiment_analysis",), id="sni:1"))
    return out


PAIRS = [("par", f"فارسی {i}", f"english {i}") for i in range(1000)]


@pytest.mark.parametrize("share", [0.1, 0.24, 0.5])
def test_translation_share_within_one_point_of_requested(share):
    mix, report = build_mix(instructions(), PAIRS, SftConfig(translation_share=share), target="fa", target_name="Persian")
    n_tr = sum(1 for c in mix if c.source.startswith("translation:"))
    assert abs(n_tr / len(mix) - share) <= 0.01
    assert report["translation"]["count"] == n_tr and abs(report["translation"]["share"] - share) <= 0.01
    assert abs(report["translation"]["to_target"] - report["translation"]["to_english"]) <= 1


def test_share_kept_when_parallel_data_is_short():
    mix, report = build_mix(instructions(), PAIRS[:20], SftConfig(translation_share=0.24), target="fa", target_name="Persian")
    n_tr = sum(1 for c in mix if c.task == "translation" and c.source.startswith("translation:"))
    assert n_tr == 40 and abs(n_tr / len(mix) - 0.24) <= 0.01 and "sampled down" in report["translation_note"]


def test_held_out_tasks_are_absent_from_the_training_mix():
    convs = instructions()
    mix, report = build_mix(convs, PAIRS, SftConfig(), target="fa", target_name="Persian")
    assert not [c for c in mix if c.task in ("sentiment", "multiple_choice")]
    assert "sni:1" not in {c.id for c in mix}  # held out through its SNI category "Sentiment Analysis"
    per_task = {t: sum(1 for c in convs if c.task == t) for t in ("multiple_choice", "sentiment")}
    assert report["held_out"] == {"multiple_choice": per_task["multiple_choice"], "sentiment": per_task["sentiment"] + 1}
    # Every other instruction is kept.
    kept = [c for c in mix if not c.source.startswith("translation:")]
    assert len(kept) == len(convs) - sum(per_task.values()) - 1


def test_holdout_patterns_and_task_map():
    c = Conversation(messages=[], language="en", source="s", task="task999_arc_answer_generation", id="x")
    assert held_out_by(c, ["multiple_choice"]) is None
    assert held_out_by(c, ["multiple_choice"], {"task999_arc_answer_generation": "multiple_choice"}) == "multiple_choice"
    assert held_out_by(c, ["*arc*"]) == "*arc*"
    assert held_out_by(Conversation([], "en", "s", task="Multiple Choice"), ["multiple_choice"]) == "multiple_choice"


def test_english_plus_translation_only_protocol_has_no_target_language_instructions():
    mix, report = build_mix(instructions(), PAIRS, SftConfig(target_instructions=False), target="fa", target_name="Persian")
    own = [c for c in mix if not c.source.startswith("translation:")]
    assert own and all(c.language == "en" for c in own)
    assert report["dropped_target_language"] == 150 - 24  # all Persian ones not already held out
    assert any(c.source.startswith("translation:") and c.language == "fa" for c in mix)  # translations stay


def test_limit_target_keeps_exactly_n_target_language_instructions():
    mix, report = build_mix(instructions(), PAIRS, SftConfig(limit_target=100, translation_share=0.0, holdout_tasks=[]),
                            target="fa", target_name="Persian")
    assert sum(1 for c in mix if c.language == "fa") == 100
    assert sum(1 for c in mix if c.language == "en") == 151  # nothing held out, English untouched


def test_max_examples_caps_the_whole_mix_and_fits_filters():
    mix, report = build_mix(instructions(), PAIRS, SftConfig(max_examples=100), target="fa", target_name="Persian",
                            fits=lambda c: not c.id.endswith(":3"))
    assert len(mix) == 100 and report["too_long"] > 0
    assert not [c for c in mix if c.id.endswith(":3")]
    assert sum(1 for c in mix if c.source.startswith("translation:")) == 24


def test_mix_is_deterministic_for_a_seed():
    a, _ = build_mix(instructions(), PAIRS, SftConfig(), target="fa", target_name="Persian", seed=3)
    b, _ = build_mix(instructions(), PAIRS, SftConfig(), target="fa", target_name="Persian", seed=3)
    c, _ = build_mix(instructions(), PAIRS, SftConfig(), target="fa", target_name="Persian", seed=4)
    assert [x.id for x in a] == [x.id for x in b] != [x.id for x in c]
