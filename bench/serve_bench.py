"""``langadapt serve`` tried as issue 17 tried it: a huge trimmed conversation beside a small request,
and a hostile client. Prints the reliability table of ``bench/README.md``.

    OMP_NUM_THREADS=1 python bench/serve_bench.py            # SmolLM2 (about 2 minutes on 2 cores)

The long conversation is built like the issue's: 3,001 messages, about 253 KB, here of real Persian
verse lines from ``../shared/data/poems`` (English filler when that folder is absent).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POEMS = REPO.parent / "shared" / "data" / "poems" / "hafez.txt"


def conversation(messages: int = 3001, size: int = 253_000) -> list[dict]:
    lines = [ln.strip() for ln in POEMS.read_text(encoding="utf-8").splitlines() if len(ln.strip()) > 20] \
        if POEMS.exists() else ["The weather is nice and the sun is out over the old garden today."]
    per = size // messages - 34  # the JSON around each message: {"role": "assistant", "content": ""}
    out, i = [], 0
    while len(out) < messages - 1:
        text = ""
        while len(text.encode()) < per:
            text += lines[i % len(lines)] + " "
            i += 1
        text = text.encode()[:per].decode("utf-8", "ignore").strip()
        out.append({"role": "user" if len(out) % 2 == 0 else "assistant", "content": text})
    return out + [{"role": "user", "content": "سلام"}]


def post(port: int, body: dict, path: str = "/v1/chat/completions", headers: dict | None = None,
         timeout: float = 600) -> tuple[int, dict, float]:
    import http.client

    t0 = time.time()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json", **(headers or {})})
    res = conn.getresponse()
    payload = res.read()
    conn.close()
    return res.status, json.loads(payload or b"{}"), time.time() - t0


def raw(port: int, data: bytes, timeout: float = 30) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    sock.close()
    return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def request_bytes(method: str, path: str, body: bytes, headers: dict) -> bytes:
    head = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from langadapt.serve.generation import ChatModel, Sampling
    from langadapt.serve.server import make_server

    chat = ChatModel.load(args.model, name="m")
    encodes: list[int] = []
    real_encode = chat.encode

    def encode(messages):
        encodes.append(len(messages))
        return real_encode(messages)

    chat.encode = encode
    rows = []

    def serve(**kw):
        server = make_server({"m": chat}, port=0, sampling=Sampling(max_new_tokens=2, temperature=0), **kw)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    # ---- item 12: the long conversation, trimmed, beside a 2-token request
    msgs = conversation()
    size = len(json.dumps({"messages": msgs}, ensure_ascii=False).encode())
    tokens = len(real_encode(msgs))
    small = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    big = {"model": "m", "messages": msgs, "max_tokens": 2, "trim_history": True}
    encodes.clear()
    t0 = time.time()
    prepared = chat.prepare(msgs, 2, trim=True, max_tokens=10**6)
    rows.append((f"trim that conversation ({size / 1000:.0f} KB, {tokens:,} tokens) to the {chat.context:,}-token window "
                 "(ChatModel.prepare, as the server does)", "1",
                 f"{time.time() - t0:.2f} s, {len(encodes)} encodes; {prepared.dropped_turns:,} oldest turns dropped, "
                 f"{len(prepared.input_ids):,} tokens kept"))
    for bound in (None, 10**6):
        server = serve(max_request_tokens=bound)
        encodes.clear()
        got = {}
        t = threading.Thread(target=lambda: got.__setitem__("big", post(server.server_port, big)))
        t.start()
        time.sleep(0.05)
        s_status, _, s_time = post(server.server_port, small)
        t.join()
        b_status, b_body, b_time = got["big"]
        what = ("default --max-request-tokens" if bound is None else "--max-request-tokens 1000000 (trimmed; the "
                "answer's time is the prefill of the kept window on CPU)")
        rows.append((f"the server: that request with trim_history, {what}; a 2-token request sent 50 ms later",
                     "1 + 1", f"{' '.join(str(x) for x in (b_status, b_body.get('error', {}).get('code')) if x)} "
                     f"in {b_time:.2f} s; "
                     f"the 2-token request {s_status} in {s_time:.2f} s"))
        server.shutdown()
        server.server_close()

    # ---- item 13
    server = serve(api_key="bench-key", read_timeout=30.0, max_connections=64)
    port = server.server_port
    auth = {"Authorization": "Bearer bench-key"}
    here = {"Host": f"127.0.0.1:{port}"}
    body = json.dumps(small).encode()
    codes = [status_of(raw(port, request_bytes("POST", "/v1/chat/completions", body,
                                              {**here, "Content-Type": "application/json", **h})))
             for h in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "bench-key"})]
    ok = status_of(raw(port, request_bytes("POST", "/v1/chat/completions", body,
                                           {**here, "Content-Type": "application/json", **auth})))
    rows.append(("chat request without a key, with a wrong key, with the key but no 'Bearer'; then with the key",
                 "3 + 1", f"{', '.join(map(str, codes))}; {ok}"))
    names = ["evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "localtest.me", "10.1.2.3"]
    codes = [status_of(raw(port, request_bytes(m, p, body if m == "POST" else b"",
                                                {"Host": n, "Content-Type": "application/json", **auth})))
             for n in names for m, p in (("GET", "/"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"))]
    rows.append(("DNS rebinding: foreign Host names (with the key) on /, /v1/models, POST chat", str(len(codes)),
                 f"{sum(c == 403 for c in codes)} x 403, {sum(c == 200 for c in codes)} x 200"))
    variants = [{"Content-Type": "text/plain", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
                {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"},
                {"Content-Type": "application/json", "Origin": "http://evil.example"},
                {"Content-Type": "application/json", "Origin": "null"},
                {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
                {"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}]
    codes = [status_of(raw(port, request_bytes("POST", "/v1/chat/completions", body, {**here, **auth, **v})))
             for v in variants]
    same = status_of(raw(port, request_bytes("POST", "/v1/chat/completions", body,
                                             {**here, **auth, "Content-Type": "application/json",
                                              "Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})))
    rows.append(("cross-site browser POSTs (text/plain, form, foreign or null Origin, Sec-Fetch-Site cross/same-site);"
                 " then the page's own same-origin POST", f"{len(variants)} + 1",
                 f"{', '.join(map(str, codes))}; {same}"))

    # 100 stalled uploads, as in the issue: headers and 10 bytes of a body, then nothing
    stalled, opened = [], []
    for _ in range(100):
        opened.append(time.time())
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(request_bytes("POST", "/v1/chat/completions", b"", {**here, **auth, "Content-Type": "application/json"})
                  .replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode()) + body[:10])
        stalled.append(s)
    answers = []
    for s, t0 in zip(stalled, opened):
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        answers.append((status_of(data), time.time() - t0))
        s.close()
    during = [a for a in answers if a[0] == 503]
    timed_out = [a for a in answers if a[0] == 408]
    after = post(port, small, headers=auth)[0]
    rows.append(("100 stalled uploads (default --read-timeout 30, --max-connections 64), then a normal request",
                 "100 + 1",
                 f"{len(timed_out)} x 408, {min(a[1] for a in timed_out):.1f}-{max(a[1] for a in timed_out):.1f} s "
                 f"after their connect; {len(during)} x 503 at once (the cap); all threads freed "
                 f"({server.connections} open); then {after}"))

    slow = socket.create_connection(("127.0.0.1", port), timeout=30)
    t0 = time.time()
    sent = 0
    for byte in request_bytes("GET", "/v1/models", b"", {**here, **auth, "X-Pad": "a" * 200}):
        try:
            slow.send(bytes([byte]))
            sent += 1
        except OSError:
            break
        time.sleep(0.25)
        if time.time() - t0 > 60:
            break
    slow.close()
    rows.append(("a request trickled one byte per 0.25 s", "1", f"cut after {time.time() - t0:.1f} s ({sent} bytes)"))

    deep = [status_of(raw(port, request_bytes("POST", "/v1/chat/completions", b"[" * n + b"]" * n,
                                              {**here, **auth, "Content-Type": "application/json"})))
            for n in (1_000, 100_000, 1_000_000)]
    rows.append(("JSON nested 1,000 / 100,000 / 1,000,000 deep", "3", ", ".join(map(str, deep))))
    server.shutdown()
    server.server_close()

    # a non-streaming client that leaves while a long answer is generated
    steps = []
    hook = chat.model.register_forward_pre_hook(lambda m, a: None if steps.append(time.time()) else None)
    server = make_server({"m": chat}, port=0, sampling=Sampling(max_new_tokens=400, no_repeat_ngram_size=0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Write a long story."}],
                          "temperature": 1.0, "seed": 0}).encode()
    s = socket.create_connection(("127.0.0.1", server.server_port), timeout=30)
    s.sendall(request_bytes("POST", "/v1/chat/completions", payload,
                            {"Host": f"127.0.0.1:{server.server_port}", "Content-Type": "application/json"}))
    time.sleep(2.0)
    s.close()
    left, t_left = len(steps), time.time()
    while server.queue.active and time.time() - t_left < 60:
        time.sleep(0.01)
    rows.append(("non-streaming client closes 2 s into a 400-token answer", "1",
                 f"{left} tokens before it left, {len(steps) - left} after; the model free "
                 f"{time.time() - t_left:.2f} s later"))
    hook.remove()
    server.shutdown()
    server.server_close()

    print("| what was tried | cases | result |\n| --- | ---: | --- |")
    for what, n, result in rows:
        print(f"| {what} | {n} | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
