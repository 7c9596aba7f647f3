"""`langadapt serve` against a hostile client (issue 17 item 13): API key, Host checks against DNS
rebinding, cross-site browser POSTs, stalled uploads, too many connections, a non-streaming client
that leaves, JSON nested too deep. Raw sockets for the hostile cases, the openai client for the rest.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from test_serve import post, save_tiny_model, start_server

HI = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    from langadapt.serve.generation import ChatModel

    return ChatModel.load(str(save_tiny_model(tmp_path_factory.mktemp("guard") / "model")), name="tiny")


@pytest.fixture
def serve(chat):
    """Start servers for the test with the given settings; all are stopped afterwards."""
    from langadapt.serve.generation import Sampling

    started = []

    def make(**kw):
        kw.setdefault("sampling", Sampling(max_new_tokens=2))
        server = start_server({"tiny": chat}, **kw)
        started.append(server)
        return server

    yield make
    for server in started:
        server.shutdown()
        server.server_close()


def http(server, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
    """One request over a raw socket, exactly as given (no header added): (status, headers, body)."""
    head = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        head.append(f"Content-Length: {len(body)}")
    sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=timeout)
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    top, _, payload = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}, payload


def host(server) -> str:
    return f"127.0.0.1:{server.server_port}"


# ---------------------------------------------------------------------------- API key


def test_api_key_is_required_when_set_and_the_page_itself_is_public(serve):
    import openai

    server = serve(api_key="s3cret-key")
    base = f"http://127.0.0.1:{server.server_port}/v1"
    for key in ("unused", "s3cret-key-but-longer", "s3cret-ke"):
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=base, api_key=key, max_retries=0).models.list()
        assert e.value.code == "invalid_api_key"
    client = openai.OpenAI(base_url=base, api_key="s3cret-key", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.chat.completions.create(**HI).choices[0].message.role == "assistant"
    # Every API route wants the key; the page and /health do not (the page asks for the key itself).
    h = {"Host": host(server)}
    for path in ("/api/config", "/v1/models", "/v1/models/tiny", "/tokenizer_info"):
        status, headers, _ = http(server, "GET", path, headers=h)
        assert status == 401 and headers["www-authenticate"] == "Bearer", path
    for path in ("/", "/health"):
        assert http(server, "GET", path, headers=h)[0] == 200, path
    body = json.dumps(HI).encode()
    assert http(server, "POST", "/v1/chat/completions", body, {**h, "Content-Type": "application/json"})[0] == 401
    assert http(server, "POST", "/v1/chat/completions", body, {**h, "Content-Type": "application/json",
                                                               "Authorization": "Bearer s3cret-key"})[0] == 200


def test_serving_beyond_loopback_needs_a_key(monkeypatch, capsys):
    from langadapt.cli import main

    monkeypatch.delenv("LANGADAPT_API_KEY", raising=False)
    for where in ("0.0.0.0", "::", "192.168.1.5"):
        assert main(["serve", "smollm2-135m-instruct", "--host", where]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--api-key" in err and "LANGADAPT_API_KEY" in err
    # With the key in the environment the server goes on to load its model (here: one that does not exist).
    monkeypatch.setenv("LANGADAPT_API_KEY", "k")
    assert main(["serve", "/nonexistent/model", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "api-key" not in err


# ---------------------------------------------------------------------------- Host (DNS rebinding)


def test_a_foreign_host_header_is_refused_unless_allowed(serve):
    server = serve()
    port = server.server_port
    body = json.dumps(HI).encode()
    for name in ("evil.example", "evil.example.", "127.0.0.1.nip.io", "10.0.0.1"):
        h = {"Host": f"{name}:{port}"}
        status, _, payload = http(server, "GET", "/", headers=h)
        assert status == 403 and "not served here" in json.loads(payload)["error"]["message"], name
        assert http(server, "GET", "/v1/models", headers=h)[0] == 403
        assert http(server, "POST", "/v1/chat/completions", body, {**h, "Content-Type": "application/json"})[0] == 403
    for name in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", f"app.localhost:{port}"):
        assert http(server, "GET", "/v1/models", headers={"Host": name})[0] == 200, name
    allowed = serve(allow_hosts=["chat.example.org"])
    assert http(allowed, "GET", "/v1/models", headers={"Host": f"chat.example.org:{allowed.server_port}"})[0] == 200
    assert http(allowed, "GET", "/v1/models", headers={"Host": "evil.example"})[0] == 403


def test_host_rules_for_a_wildcard_bind():
    from langadapt.serve.guard import Access

    wide = Access("0.0.0.0", api_key="k")
    assert wide.host_error("192.168.1.5:8000") is None  # an address cannot be rebound
    assert wide.host_error("[fe80::1]:8000") is None
    assert wide.host_error(socket.gethostname()) is None
    assert wide.host_error("evil.example:8000")
    assert Access("0.0.0.0", allow_hosts=["*"]).host_error("anything.example") is None
    narrow = Access("192.168.1.5")
    assert narrow.host_error("192.168.1.5:8000") is None and narrow.host_error("192.168.1.6:8000")


# ---------------------------------------------------------------------------- cross-site browser requests


def test_cross_site_browser_posts_are_refused(serve):
    server = serve()
    h = {"Host": host(server)}
    body = json.dumps(HI).encode()
    # What a page elsewhere can send without a preflight: a text/plain "simple request".
    status, _, _ = http(server, "POST", "/v1/chat/completions", body,
                        {**h, "Content-Type": "text/plain", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _, payload = http(server, "POST", "/v1/chat/completions", body, {**h, "Content-Type": "text/plain"})
    assert status == 415 and "application/json" in json.loads(payload)["error"]["message"]
    for extra in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                  {"Sec-Fetch-Site": "same-site"}, {"Origin": f"http://127.0.0.1:{server.server_port + 1}"}):
        status, _, payload = http(server, "POST", "/v1/chat/completions", body,
                                  {**h, "Content-Type": "application/json", **extra})
        assert status == 403 and "refused" in json.loads(payload)["error"]["message"], extra
    # A CORS preflight gets no approval.
    status, headers, _ = http(server, "OPTIONS", "/v1/chat/completions",
                              headers={**h, "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert status >= 400 and "access-control-allow-origin" not in headers
    # The page's own requests (same origin) and non-browser clients (no Origin) are served.
    same = {"Origin": f"http://127.0.0.1:{server.server_port}", "Sec-Fetch-Site": "same-origin"}
    assert http(server, "POST", "/v1/chat/completions", body, {**h, "Content-Type": "application/json", **same})[0] == 200
    assert post(server, HI)[0] == 200


# ---------------------------------------------------------------------------- slow and many connections


def test_stalled_and_trickling_uploads_are_cut_off_by_the_read_deadline(serve):
    server = serve(read_timeout=1.0)
    body = json.dumps(HI).encode()
    socks = []
    for _ in range(5):  # headers and a part of the body, then nothing
        s = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host(server)}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        socks.append(s)
    slow = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
    t0 = time.time()
    deadline = t0 + 8
    while server.connections < 6 and time.time() < deadline:
        time.sleep(0.01)
    assert server.connections == 6
    # One byte of the request line every 0.2 s: each read is quick, the request never completes.
    cut = None
    for byte in b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 100:
        if _readable(slow):  # the server closed the connection
            cut = time.time() - t0
            break
        try:
            slow.send(bytes([byte]))
        except OSError:
            cut = time.time() - t0
            break
        time.sleep(0.2)
    assert cut is not None and cut < 4, "a trickled request should be cut at the deadline, not kept alive"
    for s in socks:
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.0 408") and b"request_timeout" in data
        s.close()
    slow.close()
    assert time.time() - t0 < 6
    while server.connections and time.time() < deadline:
        time.sleep(0.01)
    assert server.connections == 0
    assert post(server, HI)[0] == 200


def _readable(sock) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_connections_beyond_the_cap_get_503_at_once(serve):
    server = serve(max_connections=3, read_timeout=20)
    held = [socket.create_connection(("127.0.0.1", server.server_port), timeout=10) for _ in range(3)]
    deadline = time.time() + 8
    while server.connections < 3 and time.time() < deadline:
        time.sleep(0.01)
    t0 = time.time()
    extra = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
    data = b""
    while chunk := extra.recv(4096):
        data += chunk
    extra.close()
    assert time.time() - t0 < 3
    assert data.startswith(b"HTTP/1.0 503") and b"too_many_connections" in data and b"Retry-After" in data
    for s in held:
        s.close()
    while server.connections and time.time() < deadline:
        time.sleep(0.01)
    assert post(server, HI)[0] == 200


# ---------------------------------------------------------------------------- a client that leaves


def test_a_non_streaming_client_that_disconnects_stops_the_generation(serve, chat):
    from langadapt.serve.generation import Sampling

    calls = []

    def slow(module, args):  # returns None: a pre-hook's return value would replace the arguments
        calls.append(1)
        time.sleep(0.02)

    handle = chat.model.register_forward_pre_hook(slow)
    try:
        server = serve(sampling=Sampling(max_new_tokens=400, no_repeat_ngram_size=0), max_queue=0)
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0,
                           "seed": 0}).encode()
        sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host(server)}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.time() + 10
        while len(calls) < 5 and time.time() < deadline:
            time.sleep(0.01)
        assert calls, "generation should have started"
        sock.close()
        left = len(calls)
        while server.queue.active and time.time() < deadline:
            time.sleep(0.02)
        assert server.queue.active == 0
        assert len(calls) - left < 20, "generation should stop within a few tokens of the client leaving"
    finally:
        handle.remove()


# ---------------------------------------------------------------------------- malformed bodies


def test_json_nested_too_deep_gets_400_not_500(serve):
    server = serve()
    for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        status, payload, _ = post(server, None, raw=raw)
        assert status == 400 and "nested too deeply" in json.loads(payload)["error"]["message"]
    assert post(server, HI)[0] == 200
