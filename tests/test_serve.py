"""`langadapt serve`: the OpenAI-compatible endpoint (checked with the official openai client),
the bounded queue, and refusals of bad requests. A tiny Llama with a tiny tokenizer trained here.

The helpers at the top (tiny tokenizer and model folder) are shared with test_chat / test_export.
"""

from __future__ import annotations

import functools
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_llama

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXT = [
    "Hello, how are you today?", "The weather is nice and the sun is out.", "Tell me a short story about a cat.",
    "سلام، حال شما چطور است؟", "امروز هوا خوب است و آفتاب می‌تابد.", "یک داستان کوتاه درباره‌ی گربه بگو.",
]


@functools.lru_cache(maxsize=None)
def _trained_bpe(vocab: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "<|im_end|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT * 10, trainer)
    return tok.to_str()


def tiny_tokenizer(*, template: str | None = CHATML, vocab: int = 320):
    """A byte-level BPE trained on a few English and Persian lines; eos is <|im_end|> (id 2)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_bpe(vocab)), unk_token="<unk>",
                                   bos_token="<s>", eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = template
    return fast


def save_tiny_model(folder: Path, *, template: str | None = CHATML, tied: bool = True, seed: int = 0,
                    max_positions: int = 512) -> Path:
    """A tiny Llama and its tokenizer saved as a plain save_pretrained folder."""
    tok = tiny_tokenizer(template=template)
    model = tiny_llama(len(tok), tied=tied, seed=seed)
    model.config.max_position_embeddings = max_positions
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def start_server(models: dict, **kw):
    """A ChatServer on 127.0.0.1, any free port, serving in a background thread."""
    from langadapt.serve.server import make_server

    server = make_server(models, host="127.0.0.1", port=0, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def post(server, body, *, raw: bytes | None = None, path: str = "/v1/chat/completions", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    res = conn.getresponse()
    payload = res.read()
    conn.close()
    return res.status, payload, res


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def server(tiny_dir):
    from langadapt.serve.generation import ChatModel, Sampling

    models = {"tiny": ChatModel.load(str(tiny_dir), name="tiny"),
              "tiny-b": ChatModel.load(str(tiny_dir), name="tiny-b", context=64)}
    srv = start_server(models, sampling=Sampling(max_new_tokens=16), max_queue=2)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key="unused", max_retries=0, timeout=30)


# ---------------------------------------------------------------------------- the OpenAI API


def test_openai_client_lists_the_served_models(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny", "tiny-b"]


def test_openai_client_gets_a_non_streaming_answer(client, server):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "سلام، حال شما چطور است؟"}],
                                       max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == "tiny"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 8
    # Same prompt, greedy: the server's answer is what the model itself generates.
    chat = server.models["tiny"]
    from langadapt.serve.generation import Sampling

    assert choice.message.content == chat.reply([{"role": "user", "content": "سلام، حال شما چطور است؟"}],
                                                Sampling(temperature=0, max_new_tokens=8))
    assert r.usage.prompt_tokens == len(chat.encode([{"role": "user", "content": "سلام، حال شما چطور است؟"}]))


def test_openai_client_streams_an_answer_in_pieces(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a short story."}]
    kw = dict(model="tiny", messages=messages, max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2, "the answer should arrive in several chunks, not at once"
    assert "".join(pieces) == whole
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_stop_sequence_ends_the_answer_before_it(client):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    assert len(whole) > 4
    stop = whole[2:4]
    cut = client.chat.completions.create(stop=[stop], **kw).choices[0]
    assert cut.message.content == whole[: whole.index(stop)]
    assert cut.finish_reason == "stop"


# ---------------------------------------------------------------------------- refusals


def test_malformed_json_gets_400_with_a_message(server):
    status, payload, _ = post(server, None, raw=b'{"model": "tiny", "messages": [')
    assert status == 400
    assert "malformed JSON" in json.loads(payload)["error"]["message"]


@pytest.mark.parametrize("body, status, words", [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "not served here"),
    ({"model": "tiny"}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400, "content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n=1"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "tools"),
    (["not", "an", "object"], 400, "JSON object"),
])
def test_bad_requests_get_a_4xx_with_a_message(server, body, status, words):
    got, payload, _ = post(server, body)
    assert got == status
    err = json.loads(payload)["error"]
    assert words in err["message"]


def test_too_long_prompt_gets_400_context_length_exceeded(server, client):
    import openai

    long = " ".join(["The weather is nice and the sun is out."] * 40)  # far beyond tiny-b's 64-token window
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-b", messages=[{"role": "user", "content": long}], max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    # The server is still there afterwards.
    assert client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_trim_history_drops_oldest_turns_instead_of_refusing(server):
    turn = "The weather is nice and the sun is out."
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"{i} {turn}"}, {"role": "assistant", "content": turn}]
    history.append({"role": "user", "content": "hi"})
    status, _, _ = post(server, {"model": "tiny-b", "messages": history, "max_tokens": 4})
    assert status == 400
    status, payload, _ = post(server, {"model": "tiny-b", "messages": history, "max_tokens": 4, "trim_history": True})
    assert status == 200
    assert json.loads(payload)["langadapt"]["dropped_turns"] >= 1


def test_unknown_path_and_wrong_method(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    conn.request("GET", "/v1/nothing")
    assert conn.getresponse().status == 404
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
    conn.request("GET", "/v1/chat/completions")
    assert conn.getresponse().status == 405
    conn.close()


def test_oversized_body_gets_413(server):
    from langadapt.serve import server as srv

    status, _, _ = post(server, None, raw=b"{}", headers={"Content-Length": str(srv.MAX_BODY + 1)})
    assert status == 413


# ---------------------------------------------------------------------------- the queue


def test_one_generation_at_a_time_queue_then_503_when_full(tiny_dir):
    """While one request generates, `max_queue` more wait and the next is refused with 503 at once."""
    from langadapt.serve.generation import ChatModel, Sampling

    chat = ChatModel.load(str(tiny_dir), name="gated")
    gate = threading.Event()
    in_forward = threading.Event()

    def hold(module, args):  # every forward pass waits for the gate: the generation stays "in progress"
        in_forward.set()
        gate.wait(20)

    handle = chat.model.register_forward_pre_hook(hold)
    server = start_server({"gated": chat}, sampling=Sampling(max_new_tokens=3), max_queue=1)
    body = {"model": "gated", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    results: dict[str, int] = {}
    try:
        first = threading.Thread(target=lambda: results.__setitem__("first", post(server, body)[0]))
        first.start()
        assert in_forward.wait(10)
        second = threading.Thread(target=lambda: results.__setitem__("second", post(server, body)[0]))
        second.start()
        deadline = time.time() + 10
        while server.queue.waiting < 1 and time.time() < deadline:
            time.sleep(0.01)
        assert (server.queue.active, server.queue.waiting) == (1, 1)
        t0 = time.time()
        status, payload, res = post(server, body)
        assert status == 503 and time.time() - t0 < 5
        assert json.loads(payload)["error"]["code"] == "queue_full"
        assert res.getheader("Retry-After")
        gate.set()
        first.join(20)
        second.join(20)
        assert results == {"first": 200, "second": 200}
        # the handler frees its slot after the response is sent, so the client may read first: wait for it
        deadline = time.time() + 10
        while (server.queue.active, server.queue.waiting) != (0, 0) and time.time() < deadline:
            time.sleep(0.01)
        assert (server.queue.active, server.queue.waiting) == (0, 0)
    finally:
        gate.set()
        handle.remove()
        server.shutdown()
        server.server_close()


def test_client_that_disconnects_mid_stream_frees_the_model(tiny_dir):
    from langadapt.serve.generation import ChatModel, Sampling

    chat = ChatModel.load(str(tiny_dir), name="t")
    calls = []

    def slow(module, args):  # returns None: a pre-hook's return value would replace the arguments
        calls.append(1)
        time.sleep(0.02)

    handle = chat.model.register_forward_pre_hook(slow)
    server = start_server({"t": chat}, sampling=Sampling(max_new_tokens=400, no_repeat_ngram_size=0), max_queue=0)
    try:
        body = json.dumps({"model": "t", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                           "temperature": 1.0, "seed": 0}).encode()
        sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = b""
        while b"data: " not in head:  # the first event: generation has started
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.0 200")
        sock.close()
        deadline = time.time() + 10
        while server.queue.active and time.time() < deadline:
            time.sleep(0.05)
        assert server.queue.active == 0
        assert len(calls) < 300, "generation should stop soon after the client left"
    finally:
        handle.remove()
        server.shutdown()
        server.server_close()
