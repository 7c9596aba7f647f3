"""Scoring: log-likelihood picks the label a tiny model was trained to prefer; batching, prefix sharing and
left padding change no score; generated answers are parsed and non-following answers counted."""

from __future__ import annotations

import pytest

from conftest import tiny_llama
from langadapt.eval import scoring
from langadapt.eval.backends import LocalBackend

GOOD = ["good film", "great food", "lovely day", "nice shoes", "good tea", "great show"]
BAD = ["bad film", "awful food", "sad day", "ugly shoes", "bad tea", "awful show"]


def _prompt(text: str) -> list[dict]:
    return [{"role": "user", "content": f"Review: {text}"}]


def _tokenizer(texts: list[str]):
    """A byte-level BPE trained here with a tiny vocabulary, so label words span several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=270, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def trained():
    """A 2-layer Llama trained for a few seconds to answer ' positive' after good reviews, ' negative' after bad."""
    import torch

    lines = [f"Review: {t}\nAnswer: positive" for t in GOOD] + [f"Review: {t}\nAnswer: negative" for t in BAD]
    tok = _tokenizer(lines * 4)
    model = tiny_llama(vocab_size=len(tok), hidden=32, seed=1)
    model.config.pad_token_id = tok.pad_token_id
    batch = tok(lines, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(100):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.3
    return model, tok


def test_label_words_span_several_tokens(trained):
    _, tok = trained
    assert len(tok(" positive", add_special_tokens=False)["input_ids"]) > 1


def test_loglik_scoring_picks_the_label_the_tiny_model_was_trained_to_prefer(trained):
    model, tok = trained
    backend = LocalBackend(model, tok, name="tiny", prompt_format="plain")
    convs = [_prompt(t) for t in GOOD + BAD]
    scores = backend.loglik(convs, [["positive", "negative"]] * len(convs), lang="en", batch_size=4)
    picked = ["positive" if s[0] > s[1] else "negative" for s in scores]
    assert picked == ["positive"] * len(GOOD) + ["negative"] * len(BAD)


def test_batching_prefix_sharing_and_padding_change_no_score(trained):
    model, tok = trained
    instruction = "Say whether the review is positive or negative.\n\n"
    convs = [[{"role": "user", "content": instruction + f"Review: {t}"}]
             for t in ["good film", "a rather long and awful review of bad food", "sad day"]]
    texts = [LocalBackend(model, tok, name="t", prompt_format="plain").render(c, "en") for c in convs]
    encoded = scoring.encode_requests(tok, texts, [[" positive"]] * 3, add_special_tokens=True, max_length=512)
    assert scoring._common_prefix(model, encoded, "cpu")[0] >= scoring.MIN_COMMON_PREFIX  # the cached-prefix path runs
    options = [["positive", "negative", "so so"]] * 3
    ref = LocalBackend(model, tok, name="t", prompt_format="plain", share_prefix=False).loglik(
        convs, options, lang="en", batch_size=1)
    for share in (True, False):
        for bs in (1, 2, 3):
            got = LocalBackend(model, tok, name="t", prompt_format="plain", share_prefix=share).loglik(
                convs, options, lang="en", batch_size=bs)
            for a, b in zip(got, ref):
                assert a == pytest.approx(b, abs=1e-4), (share, bs)
    # and equal to a direct sum of log-probabilities of the option's tokens
    import torch

    text = LocalBackend(model, tok, name="t", prompt_format="plain").render(convs[0], "en")
    ctx = tok(text)["input_ids"]
    whole = tok(text + " negative")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
    direct = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
    assert ref[0][1] == pytest.approx(direct, abs=1e-4)


def test_batched_generation_with_left_padding_matches_one_at_a_time(trained):
    model, tok = trained
    backend = LocalBackend(model, tok, name="t", prompt_format="plain")
    convs = [_prompt(t) for t in ["good film", "a much longer review of awful food", "sad day"]]
    kw = dict(lang="en", max_new_tokens=8, repetition_penalty=1.0)
    batched = backend.generate(convs, batch_size=3, **kw)
    single = [backend.generate([c], batch_size=1, **kw)[0] for c in convs]
    assert batched == single
    assert batched[0].startswith("positive")


@pytest.mark.parametrize("output,label,reason", [
    ("positive", "positive", None),
    ("Answer: Negative.", "negative", None),
    ("The sentiment is positive, not negative.", "positive", None),
    ("مثبت", "positive", None),
    ("", None, "empty"),
    ("I cannot tell.", None, "names no label"),
    ("Review: the food was great and the service was bad", None, "repeats the input"),
])
def test_parse_choice_names_the_label_or_the_reason(output, label, reason):
    options = [("positive", ["positive", "مثبت"]), ("negative", ["negative", "منفی"])]
    src = "Is it positive or negative?\n\nReview: the food was great and the service was bad"
    assert scoring.parse_choice(output, options, source=src) == (label, reason)


def test_parse_multiple_choice_numbers_in_any_digits_and_option_text():
    options = [(str(i), [str(i), c]) for i, c in enumerate(["تهران", "شیراز", "12", "۳۰"], 1)]
    assert scoring.parse_choice("۲", options)[0] == "2"
    assert scoring.parse_choice("گزینه 3 درست است", options)[0] == "3"
    assert scoring.parse_choice("شیراز", options)[0] == "2"
    assert scoring.parse_choice("پاسخ: 130", options) == (None, "names no label")


def test_generation_that_does_not_translate_is_not_following():
    assert scoring.check_generation("سلام دنیا", source="سلام دنیا", output_lang="en") == "wrong language"
    assert scoring.check_generation("Hello world", source="سلام دنیا", output_lang="en") is None
    article = "the city will collect recycling twice a week from next month in the centre"
    assert scoring.check_generation(article, source=article, output_lang="en") == "repeats the input"
    assert scoring.check_generation("Recycling twice a week.", source=article, output_lang="en") is None
    assert scoring.check_generation("  ", source=article, output_lang="en") == "empty"
