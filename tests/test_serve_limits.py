"""`langadapt serve` under long conversations (issue 17 item 12): trimming a long history takes a few
encodes of about one context window, not one per dropped turn, runs outside any server-wide lock,
and a request is bounded in tokens.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from test_serve import post, save_tiny_model, start_server

TURN = "The weather is nice and the sun is out. امروز هوا خوب است و آفتاب می‌تابد."


def history(turns: int, *, system: bool = True) -> list[dict]:
    msgs = [{"role": "system", "content": "Be brief."}] if system else []
    for i in range(turns):
        msgs += [{"role": "user", "content": f"{i} {TURN}"}, {"role": "assistant", "content": TURN}]
    return msgs + [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("limits") / "model")


@pytest.fixture
def chat(tiny_dir):
    from langadapt.serve.generation import ChatModel

    return ChatModel.load(str(tiny_dir), name="tiny", context=256)


def counting(chat) -> list[int]:
    """Record the length (in messages) of every conversation ``chat`` encodes."""
    calls: list[int] = []
    real = chat.encode

    def encode(messages):
        calls.append(len(messages))
        return real(messages)

    chat.encode = encode
    return calls


def test_trimming_3001_messages_encodes_a_few_times_and_keeps_the_most_that_fit(chat):
    from langadapt.serve.generation import _turns

    msgs = history(1500)
    assert len(msgs) == 3002  # the system prompt, 1,500 turns, the new question
    calls = counting(chat)
    prepared = chat.prepare(msgs, 32, trim=True)
    assert len(calls) <= 25, f"{len(calls)} encodes: trimming should not encode once per dropped turn"
    assert max(calls[1:]) < 100, "after the first, only about a window's worth of messages is encoded at a time"
    # The kept conversation is the system prompt and the newest turns, the most that leave room for 32 tokens.
    system, turns = _turns(msgs)
    kept_turns = len(turns) - prepared.dropped_turns
    assert prepared.messages == system + [m for t in turns[-kept_turns:] for m in t]
    assert prepared.input_ids == chat.encode(prepared.messages)
    assert chat.context - len(prepared.input_ids) >= 32
    one_more = system + [m for t in turns[-(kept_turns + 1):] for m in t]
    assert chat.context - len(chat.encode(one_more)) < 32
    assert prepared.max_new_tokens == 32


@pytest.mark.parametrize("turns, system, max_new", [(2, True, 32), (7, False, 8), (40, True, 200), (40, True, 240)])
def test_trimming_agrees_with_dropping_one_turn_at_a_time(chat, turns, system, max_new):
    """The old way (drop the oldest turn, encode, repeat) is the reference, on histories small enough for it."""
    from langadapt.serve.generation import PromptTooLong, _turns

    msgs = history(turns, system=system)
    sys_msgs, ts = _turns(msgs)
    dropped = 0
    while True:
        ids = chat.encode(sys_msgs + [m for t in ts[dropped:] for m in t])
        if chat.context - len(ids) >= max_new or dropped == len(ts) - 1:
            break
        dropped += 1
    if chat.context - len(ids) < 1:
        with pytest.raises(PromptTooLong):
            chat.prepare(msgs, max_new, trim=True)
        return
    prepared = chat.prepare(msgs, max_new, trim=True)
    assert (prepared.dropped_turns, prepared.input_ids) == (dropped, ids)
    assert prepared.max_new_tokens == min(max_new, chat.context - len(ids))


def test_a_long_trim_does_not_hold_up_another_request(chat):
    """While one request's history is being trimmed, a short request to the same model is answered."""
    from langadapt.serve.generation import Sampling

    real = chat.encode
    in_trim, release = threading.Event(), threading.Event()

    def slow_encode(messages):
        if len(messages) > 50:  # the long conversation: stall it here, as a slow trim would
            in_trim.set()
            release.wait(30)
        return real(messages)

    chat.encode = slow_encode
    server = start_server({"tiny": chat}, sampling=Sampling(max_new_tokens=2, temperature=0))
    results = {}
    long_body = {"model": "tiny", "messages": history(200), "max_tokens": 2, "trim_history": True}
    try:
        t = threading.Thread(target=lambda: results.__setitem__("long", post(server, long_body)))
        t.start()
        assert in_trim.wait(20)
        t0 = time.time()
        status, payload, _ = post(server, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                           "max_tokens": 2})
        assert status == 200, payload
        assert time.time() - t0 < 15 and not release.is_set()
        release.set()
        t.join(30)
        status, payload, _ = results["long"]
        assert status == 200
        assert json.loads(payload)["langadapt"]["dropped_turns"] > 150
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_request_beyond_the_token_bound_gets_413(chat):
    import openai
    from langadapt.serve.generation import Sampling

    server = start_server({"tiny": chat}, sampling=Sampling(max_new_tokens=2), max_request_tokens=1000)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key="unused", max_retries=0)
    try:
        small, large = history(6), history(60)
        assert len(chat.encode(small)) <= 1000 < len(chat.encode(large))
        r = client.chat.completions.create(model="tiny", messages=small, max_tokens=2, extra_body={"trim_history": True})
        assert r.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="tiny", messages=large, max_tokens=2, extra_body={"trim_history": True})
        assert e.value.status_code == 413
        assert e.value.body["code"] == "request_too_large" and "1,000 tokens" in e.value.body["message"]
        # Without trimming, a conversation beyond the window is refused for that, the more telling reason.
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=large, max_tokens=2)
        assert e.value.code == "context_length_exceeded"
        # The default bound follows the model: never less than four context windows.
        assert server.request_tokens(chat) == 1000
        server.max_request_tokens = None
        assert server.request_tokens(chat) >= 4 * chat.context
    finally:
        server.shutdown()
        server.server_close()
