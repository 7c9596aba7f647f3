"""The OpenAI-compatible API backend against a minimal server on 127.0.0.1, and the count of answers
that do not follow the instruction (the paper's dashes)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from langadapt.errors import LangadaptError
from langadapt.eval.backends import ApiBackend
from langadapt.eval.evaluate import EvalSettings, evaluate_model, task_info
from langadapt.eval.results import main_table, markdown_tables
from langadapt.eval.tasks import load_tasks

REVIEWS = {  # review -> what the fake hosted model answers
    "good food": "Positive.",
    "great view": "The sentiment is positive",
    "awful service": "negative",
    "bad smell": "I am not sure what you mean",
    "dull film": "Review: dull film",
}


class FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict] = []
    fail_next = 0

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if FakeOpenAI.fail_next:
            FakeOpenAI.fail_next -= 1
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b'{"error": "busy"}')
            return
        prompt = body["messages"][-1]["content"]
        answer = next((a for r, a in REVIEWS.items() if r in prompt), "?")
        data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def server():
    FakeOpenAI.requests, FakeOpenAI.fail_next = [], 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def sentiment_task(tmp_path):
    import yaml

    data = tmp_path / "s.jsonl"
    gold = {"good food": "positive", "great view": "positive", "awful service": "negative", "bad smell": "negative",
            "dull film": "negative"}
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in gold.items()), encoding="utf-8")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"suite": "s", "tasks": [
        {"name": "sentiment", "language": "en", "data": {"format": "jsonl", "path": str(data)}}]}), encoding="utf-8")
    return load_tasks([str(suite)], target_language="fa")


def test_api_backend_answers_through_a_local_openai_compatible_server(server, sentiment_task, monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", "sekret")
    backend = ApiBackend(name="hosted", base_url=server, model="gpt-test", api_key_env="TEST_API_KEY", concurrency=3)
    rows = evaluate_model(backend, sentiment_task, EvalSettings(mode="loglik", batch_size=3), model="hosted", stage="extra")
    got = {r["metric"]: r for r in rows}
    # 2 positives parsed right, 1 negative right; "not sure" and the repeated review do not follow
    assert got["accuracy"]["value"] == pytest.approx(3 / 5)
    assert got["non_following"]["value"] == 2 and got["non_following"]["n"] == 5
    s = got["accuracy"]["settings"]
    assert s["mode"] == "generate" and s["backend"] == "api" and s["model"] == "gpt-test" and s["decoding"] == "greedy"
    assert len(FakeOpenAI.requests) == 5
    req = FakeOpenAI.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekret"
    assert req["body"]["model"] == "gpt-test" and req["body"]["temperature"] == 0 and req["body"]["max_tokens"] == 8
    assert req["body"]["messages"][-1]["content"].startswith("Is the sentiment of this review positive or negative?")


def test_mostly_non_following_answers_show_as_a_dash_counted_as_zero(server, sentiment_task, monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", "k")
    for review in ("good food", "great view", "awful service"):
        monkeypatch.setitem(REVIEWS, review, "Sorry, I can only chat.")
    backend = ApiBackend(name="hosted", base_url=server, model="m", api_key_env="TEST_API_KEY")
    settings = EvalSettings(mode="generate")
    rows = evaluate_model(backend, sentiment_task, settings, model="hosted", stage="extra")
    assert {r["metric"]: r["value"] for r in rows}["non_following"] == 5
    results = {"models": [{"name": "hosted"}], "tasks": [task_info(t, settings) for t in sentiment_task], "rows": rows}
    block = main_table(results)[0]
    sentiment, avg = block["rows"][0], block["rows"][1]
    assert sentiment["cells"][0]["dash"] and avg["title"] == "Avg. Classification" and avg["cells"][0]["value"] == 0.0
    assert "| *Sentiment | 0.50 | - |" not in markdown_tables(results)  # not held out: no star
    assert "| Sentiment | 0.50 | - |" in markdown_tables(results)


def test_api_retries_busy_server_and_needs_its_key(server, monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", "k")
    FakeOpenAI.fail_next = 2
    backend = ApiBackend(name="h", base_url=server, model="m", api_key_env="TEST_API_KEY", retries=3, backoff=0.01)
    assert backend.generate([[{"role": "user", "content": "good food"}]], lang="en", batch_size=1, max_new_tokens=4,
                            repetition_penalty=1.0) == ["Positive."]
    assert len(FakeOpenAI.requests) == 3
    monkeypatch.delenv("TEST_API_KEY")
    with pytest.raises(LangadaptError, match="TEST_API_KEY"):
        ApiBackend(name="h", base_url=server, model="m", api_key_env="TEST_API_KEY")
    FakeOpenAI.fail_next = 10
    with pytest.raises(LangadaptError, match="HTTP 503"):
        ApiBackend(name="h", base_url=server, model="m", api_key_env=None, retries=1, backoff=0.01).generate(
            [[{"role": "user", "content": "x"}]], lang="en", batch_size=1, max_new_tokens=4, repetition_penalty=1.0)
