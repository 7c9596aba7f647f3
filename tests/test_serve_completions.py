"""`langadapt serve`'s legacy /v1/completions (echo, logprobs) and tokenizer endpoints (issue 20), checked
against the tiny model's own log-probabilities, with the openai client and with lm-evaluation-harness's
``local-completions`` model running a log-likelihood task defined here over a local JSONL file.
"""

from __future__ import annotations

import json
import math

import pytest
from test_serve import post, save_tiny_model, start_server

FA_EN = "سلام، حال شما چطور است؟ The weather is nice."


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("completions") / "model")


@pytest.fixture(scope="module")
def server(tiny_dir):
    from langadapt.serve.generation import ChatModel

    models = {"tiny": ChatModel.load(str(tiny_dir), name="tiny"),
              "short": ChatModel.load(str(tiny_dir), name="short", context=32)}
    srv = start_server(models)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def chat(server):
    return server.models["tiny"]


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key="unused", max_retries=0, timeout=60)


def model_logprobs(chat, ids: list[int]):
    """log p(next token) at every position, from one plain forward pass of the whole sequence."""
    import torch

    with torch.inference_mode():
        return chat.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def ids_of(chat, text: str) -> list[int]:
    return list(chat.tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------------- /v1/completions


def test_echo_without_new_tokens_returns_the_prompts_own_logprobs(client, chat):
    ids = ids_of(chat, FA_EN)
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=3)
    choice = r.choices[0]
    lp = choice.logprobs
    direct = model_logprobs(chat, ids)
    assert len(lp.token_logprobs) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(float(direct[i - 1, ids[i]]), abs=1e-5)
        assert max(lp.top_logprobs[i].values()) == pytest.approx(float(direct[i - 1].max()), abs=1e-5)
        assert lp.token_logprobs[i] in lp.top_logprobs[i].values()  # the prompt's own token is listed too
        assert 3 <= len(lp.top_logprobs[i]) <= 4
    # Tokens that are only part of a letter add no text; as keys they read as their bytes.
    assert any(k.startswith("bytes:\\x") for t in lp.top_logprobs[1:] for k in t)
    # Token texts are decoded in context: a Persian letter split over byte tokens lands on the token completing it.
    assert "".join(lp.tokens) == choice.text == chat.tokenizer.decode(ids) == FA_EN
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(ids))]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 0)
    assert r.object == "text_completion" and choice.finish_reason == "length"


def test_one_greedy_token_with_echo_is_lm_evals_request(client, chat):
    text = "The weather is"
    r = client.completions.create(model="tiny", prompt=text, max_tokens=1, temperature=0, echo=True, logprobs=1)
    ids = ids_of(chat, text)
    direct = model_logprobs(chat, ids)
    best = int(direct[-1].argmax())
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1
    assert lp.token_logprobs[-1] == pytest.approx(float(direct[-1, best]), abs=1e-5)
    assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values())  # exactly: lm-eval's is_greedy compares so
    assert r.choices[0].text == text + chat.tokenizer.decode([best], skip_special_tokens=True).rstrip("\ufffd")
    assert r.usage.completion_tokens == 1


def test_generated_tokens_are_the_models_greedy_answer_with_their_logprobs(client, chat):
    from langadapt.serve.generation import Prepared, Sampling

    ids = ids_of(chat, "Tell me a short story about a cat.")
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0, logprobs=2)
    greedy = Sampling(temperature=0, repetition_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=6)
    gen = chat.generate(Prepared([], ids, 0, 6), greedy, template_stops=False)
    assert r.choices[0].text == "".join(gen)
    lp = r.choices[0].logprobs
    new = gen.token_ids
    assert len(lp.token_logprobs) == len(new) == r.usage.completion_tokens
    direct = model_logprobs(chat, ids + new)
    for k, tid in enumerate(new):
        assert lp.token_logprobs[k] == pytest.approx(float(direct[len(ids) + k - 1, tid]), abs=1e-5)
        assert lp.token_logprobs[k] == pytest.approx(max(lp.top_logprobs[k].values()), abs=1e-6)  # greedy
    assert lp.text_offset[0] == 0  # without echo, offsets index the answer alone


def test_several_prompts_in_one_request_and_long_prompts_scored_in_chunks(client, chat, monkeypatch):
    from langadapt.serve import completions

    a, b = ids_of(chat, FA_EN), ids_of(chat, "Hello, how are you today? " * 3)
    single = [client.completions.create(model="tiny", prompt=p, max_tokens=0, echo=True, logprobs=0) for p in (a, b)]
    monkeypatch.setattr(completions, "_CHUNK", 5)  # several forward passes with the KV cache in between
    r = client.completions.create(model="tiny", prompt=[a, b], max_tokens=0, echo=True, logprobs=0)
    assert [c.index for c in r.choices] == [0, 1]
    for got, one in zip(r.choices, single):
        assert got.text == one.choices[0].text
        assert got.logprobs.token_logprobs[1:] == pytest.approx(one.choices[0].logprobs.token_logprobs[1:], abs=1e-5)
        # logprobs=0: no alternatives, only the prompt's own token
        assert [list(t.values()) for t in got.logprobs.top_logprobs[1:]] == [[v] for v in got.logprobs.token_logprobs[1:]]
    texts = client.completions.create(model="tiny", prompt=["Hello", "سلام"], max_tokens=0, echo=True)
    assert [c.text for c in texts.choices] == ["Hello", "سلام"] and texts.choices[0].logprobs is None


@pytest.mark.parametrize("body, status, words", [
    ({"model": "tiny", "prompt": "hi", "stream": True}, 400, "streaming"),
    ({"model": "tiny", "prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ({"model": "tiny", "prompt": ""}, 400, "empty"),
    ({"model": "tiny", "prompt": [1, 2, 10**6]}, 400, "token ids"),
    ({"model": "tiny", "prompt": [[1, 2], "x", 3]}, 400, "prompt 2"),
    ({"model": "tiny", "prompt": ["x"] * 129}, 400, "at most 128"),
    ({"model": "tiny", "prompt": "hi", "suffix": "!"}, 400, "suffix"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "short", "prompt": "The weather is nice and the sun is out. " * 3}, 400, "context window"),
    ({"model": "short", "prompt": "hi", "max_tokens": 40}, 400, "context window"),
    ({"model": "nope", "prompt": "hi"}, 404, "not served"),
])
def test_completions_refusals(server, body, status, words):
    got, payload, _ = post(server, body, path="/v1/completions")
    assert got == status, payload
    assert words in json.loads(payload)["error"]["message"]


# ---------------------------------------------------------------------------- tokenizer endpoints


def test_tokenize_detokenize_and_tokenizer_info(server, chat):
    import http.client

    status, payload, _ = post(server, {"prompt": FA_EN, "add_special_tokens": False}, path="/tokenize")
    assert status == 200
    out = json.loads(payload)
    assert out["tokens"] == ids_of(chat, FA_EN) and out["count"] == len(out["tokens"]) and out["max_model_len"] == 512
    status, payload, _ = post(server, {"tokens": out["tokens"]}, path="/detokenize")
    assert json.loads(payload)["prompt"] == FA_EN
    status, payload, _ = post(server, {"prompt": "hi", "model": "short"}, path="/tokenize")
    assert json.loads(payload)["max_model_len"] == 32
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    conn.request("GET", "/tokenizer_info")
    info = json.loads(conn.getresponse().read())
    assert (info["eos_token"], info["bos_token"], info["model_max_length"]) == ("<|im_end|>", "<s>", 512)
    assert "im_start" in info["chat_template"]
    conn.request("GET", "/tokenizer_info?model=short")
    assert json.loads(conn.getresponse().read())["model_max_length"] == 32


# ---------------------------------------------------------------------------- lm-evaluation-harness


DOCS = [
    {"question": "The weather is", "choices": ["nice", "a cat", "سلام"], "answer": 0},
    {"question": "Tell me a short story about a", "choices": ["cat.", "weather", "today"], "answer": 0},
    {"question": "سلام، حال شما", "choices": ["چطور است؟", "cat", "خوب"], "answer": 2},
    {"question": "امروز هوا خوب است و", "choices": ["آفتاب می‌تابد.", "out.", "گربه"], "answer": 0},
    {"question": "Hello, how are", "choices": ["you today?", "the sun", "است"], "answer": 1},
]


def lm_eval_loglikelihood(chat, context: str, continuation: str) -> tuple[float, bool]:
    """What lm-eval's loglikelihood means, computed with the model directly: (sum log p, all greedy)."""
    spaces = len(context) - len(context.rstrip())  # lm-eval moves trailing context spaces to the continuation
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = ids_of(chat, context + continuation)
    ctx = ids_of(chat, context)
    direct = model_logprobs(chat, whole)
    total, greedy = 0.0, True
    for i in range(len(ctx), len(whole)):
        total += float(direct[i - 1, whole[i]])
        greedy &= int(direct[i - 1].argmax()) == whole[i]
    return total, greedy


@pytest.mark.parametrize("backend", ["remote", "huggingface"])
def test_lm_eval_local_completions_runs_a_loglikelihood_task(tmp_path, tiny_dir, monkeypatch, backend):
    """A multiple-choice task over a local JSONL file, scored by lm-eval through the server: the same
    log-likelihoods (and accuracy) as the model gives directly. ``remote``: lm-eval finds the server's
    /tokenize (its default when available; here with an API key); ``huggingface``: the tokenizer folder,
    three prompts per request."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from test_eval_harness import task_yaml

    from langadapt.serve.generation import ChatModel

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(task_yaml("langadapt_tiny_mc", data), encoding="utf-8")
    chat = ChatModel.load(str(tiny_dir), name="tiny")
    key = "lm-eval-key" if backend == "remote" else None
    server = start_server({"tiny": chat}, api_key=key)
    url = f"http://127.0.0.1:{server.server_port}/v1/completions"
    if backend == "remote":
        monkeypatch.setenv("OPENAI_API_KEY", key)  # local-completions sends it as the Bearer token
        args = f"base_url={url},model=tiny,auth_token={key}"
    else:
        args = f"base_url={url},model=tiny,tokenizer_backend=huggingface,tokenizer={tiny_dir},batch_size=3"
    try:
        out = lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=["langadapt_tiny_mc"],
                                      task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                      log_samples=True)
    finally:
        server.shutdown()
        server.server_close()
    samples = out["samples"]["langadapt_tiny_mc"]
    assert len(samples) == len(DOCS)
    correct = 0
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        doc = DOCS[s["doc_id"]]
        got = [r[0] for r in s["resps"]]
        expected = [lm_eval_loglikelihood(chat, doc["question"], " " + c) for c in doc["choices"]]
        assert [a for a, _ in got] == pytest.approx([e for e, _ in expected], abs=1e-4)
        assert [g for _, g in got] == [g for _, g in expected]
        correct += max(range(len(expected)), key=lambda i: expected[i][0]) == doc["answer"]
    assert out["results"]["langadapt_tiny_mc"]["acc,none"] == pytest.approx(correct / len(DOCS))
    assert all(math.isfinite(r[0][0]) for s in samples for r in s["resps"])
