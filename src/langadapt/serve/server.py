"""``langadapt serve``: a small local HTTP server with an OpenAI-compatible API and a chat page.

Endpoints (on 127.0.0.1 by default):
- ``GET /``: the chat page (``page.html``, self-contained, no external resources);
- ``GET /v1/models``, ``GET /v1/models/{id}``: the loaded models;
- ``POST /v1/chat/completions``: OpenAI's chat completions, non-streaming and streaming (server-sent
  events), so the ``openai`` client and other OpenAI-compatible tools work unchanged. Beyond
  OpenAI's parameters it takes ``repetition_penalty``, ``no_repeat_ngram_size`` and
  ``trim_history`` (drop the oldest turns instead of refusing a conversation longer than the
  context window; the page sets it);
- ``POST /v1/completions``: OpenAI's legacy completions with ``echo`` and ``logprobs``, and vLLM's
  ``POST /tokenize``, ``POST /detokenize`` and ``GET /tokenizer_info``, so log-likelihood evaluations
  (lm-evaluation-harness's ``local-completions``) run against the server (``serve/completions.py``);
- ``GET /api/config``: default sampling settings and each model's context window, for the page.

Access (``serve/guard.py``): an API key (``Authorization: Bearer``) when one is set, required for
any non-loopback bind; requests naming a foreign ``Host`` (DNS rebinding) and cross-site browser
POSTs are refused, and the API takes only ``Content-Type: application/json``. A request must arrive
whole within ``read_timeout`` seconds, at most ``max_connections`` connections are served at once,
a request may be at most ``max_request_tokens`` tokens (default 32,768 or four context windows), and a
generation stops when its client disconnects.

Generation is one request at a time (a model on CPU or one GPU gains nothing from interleaving);
up to ``max_queue`` further requests wait, and a request arriving when the queue is full gets
HTTP 503 at once with a Retry-After header. Bad requests get a 4xx with an OpenAI-style
``{"error": {"message", "type", "param", "code"}}`` body, never a crash.

Built on the standard library's ``http.server``: a local, one-generation-at-a-time server needs
no web framework, and this keeps the dependency list short.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from langadapt.serve import completions
from langadapt.serve.api import ApiError, number, pick_model, stop_strings
from langadapt.serve.generation import ChatModel, PromptTooLong, RequestTooLarge, Sampling, check_messages
from langadapt.serve.guard import API_KEY_ENV, Access, DeadlineReader, client_gone, is_loopback, refuse_connection

MAX_BODY = 4 * 1024 * 1024  # bytes; a chat request is text, this is generous
_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logprobs", "top_logprobs", "response_format")
_PUBLIC = ("/", "/index.html", "/health")  # served without the API key: the page asks for it itself
_number = number


class GenerationQueue:
    """One generation at a time; at most ``max_waiting`` requests wait for it; more are refused."""

    def __init__(self, max_waiting: int = 4, wait_timeout: float = 600.0):
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self._count = threading.Lock()
        self._turn = threading.Lock()
        self.active = 0
        self.waiting = 0

    @contextlib.contextmanager
    def slot(self):
        with self._count:
            if self.active + self.waiting >= 1 + self.max_waiting:
                raise ApiError(503, f"the server is busy: one answer is being generated and {self.waiting} request(s) "
                               f"are waiting (queue limit {self.max_waiting}); try again shortly",
                               kind="server_busy", code="queue_full", headers={"Retry-After": "5"})
            self.waiting += 1
        got = self._turn.acquire(timeout=self.wait_timeout)
        with self._count:
            self.waiting -= 1
            if got:
                self.active += 1
        if not got:
            raise ApiError(503, f"waited {self.wait_timeout:.0f} s in the queue without a turn; try again later",
                           kind="server_busy", code="queue_timeout", headers={"Retry-After": "30"})
        try:
            yield
        finally:
            with self._count:
                self.active -= 1
            self._turn.release()


class ChatServer(ThreadingHTTPServer):
    """The HTTP server; ``models`` maps the id clients use to a loaded ChatModel (first = default)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], models: dict[str, ChatModel], *, sampling: Sampling | None = None,
                 max_queue: int = 4, queue_timeout: float = 600.0, log=None, api_key: str | None = None,
                 allow_hosts: tuple[str, ...] | list[str] = (), read_timeout: float = 30.0, max_connections: int = 64,
                 max_request_tokens: int | None = None):
        if not models:
            raise ValueError("at least one model is needed")
        self.models = models
        self.sampling = (sampling or Sampling()).check()
        self.queue = GenerationQueue(max_queue, queue_timeout)
        self.log = log
        self.created = int(time.time())
        self.page = resources.files("langadapt.serve").joinpath("page.html").read_bytes()
        self.access = Access(address[0], api_key=api_key, allow_hosts=allow_hosts)
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.max_request_tokens = max_request_tokens
        self.connections = 0
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def request_tokens(self, chat: ChatModel) -> int:
        """The most tokens one request to ``chat`` may hold (trimmed or not)."""
        return self.max_request_tokens or max(32_768, 4 * chat.context)

    # A thread per connection, as ThreadingHTTPServer does, but only up to max_connections of them:
    # one more gets a 503 from the accepting thread at once, without a thread of its own.

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            full = self.connections >= self.max_connections
            if not full:
                self.connections += 1
        if full:
            refuse_connection(request, 503, "Service Unavailable",
                              f"the server has {self.max_connections} connections open, its limit; try again shortly",
                              code="too_many_connections", retry_after=5)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._connections_lock:
            self.connections -= 1

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def model_card(self, mid: str) -> dict:
        m = self.models[mid]
        return {"id": mid, "object": "model", "created": self.created, "owned_by": "langadapt",
                "context_length": m.context, "chat_template": "model" if not m.uses_default_template else "default"}


def parse_request(server: ChatServer, body: Any) -> dict:
    """Validate a chat completions body; return what the handler needs or raise ApiError (4xx)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    mid = pick_model(server.models, body)
    try:
        messages = check_messages(body.get("messages"))
    except ValueError as e:
        raise ApiError(400, str(e), param="messages") from None
    for key in _UNSUPPORTED:
        if body.get(key) not in (None, False, [], {"type": "text"}):
            raise ApiError(400, f"'{key}' is not supported by this server", param=key)
    if _number(body, "n", int, 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, float, 0.0) != 0.0:
            raise ApiError(400, f"'{key}' is not supported; use 'repetition_penalty' (a multiplicative penalty, "
                           "e.g. 1.1) and 'no_repeat_ngram_size'", param=key)
    d = server.sampling
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    changes = {
        "temperature": _number(body, "temperature", float, d.temperature),
        "top_p": _number(body, "top_p", float, d.top_p),
        "repetition_penalty": _number(body, "repetition_penalty", float, d.repetition_penalty),
        "no_repeat_ngram_size": _number(body, "no_repeat_ngram_size", int, d.no_repeat_ngram_size),
        "max_new_tokens": _number({"max_tokens": max_tokens}, "max_tokens", int, d.max_new_tokens),
        "seed": _number(body, "seed", int, d.seed),
    }
    try:
        sampling = d.updated(**changes)
    except ValueError as e:
        raise ApiError(400, str(e), param=str(e).split(" ", 1)[0]) from None
    stop = stop_strings(body)
    stream = body.get("stream", False)
    trim = body.get("trim_history", False)
    opts = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(trim, bool) or not isinstance(opts, dict):
        raise ApiError(400, "'stream' and 'trim_history' must be true or false, 'stream_options' an object")
    chat = server.models[mid]
    # No lock: tokenizing runs in this request's thread while another request generates.
    try:
        prepared = chat.prepare(messages, sampling.max_new_tokens, trim=trim, max_tokens=server.request_tokens(chat))
    except RequestTooLarge as e:
        raise ApiError(413, str(e), param="messages", code="request_too_large") from None
    except PromptTooLong as e:
        raise ApiError(400, str(e), param="messages", code="context_length_exceeded") from None
    except ValueError as e:
        raise ApiError(400, str(e), param="messages") from None
    return {"model": mid, "chat": chat, "prepared": prepared, "sampling": sampling, "stop": stop,
            "stream": stream, "include_usage": bool(opts.get("include_usage")), "trim": trim}


class Handler(BaseHTTPRequestHandler):
    server: ChatServer
    server_version = "langadapt"
    protocol_version = "HTTP/1.0"  # one request per connection: simple, and streams end when the socket closes

    # ------------------------------------------------------------------ plumbing

    def setup(self) -> None:
        super().setup()
        # The request (line, headers, body) must arrive by one deadline; see guard.DeadlineReader.
        self.reader = DeadlineReader(self.connection, self.server.read_timeout)
        plain, self.rfile = self.rfile, io.BufferedReader(self.reader)
        plain.close()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8", headers)

    def _error(self, e: ApiError) -> None:
        with contextlib.suppress(OSError):
            self._json(e.status, e.body, e.headers)

    def _alive(self) -> bool:
        return not client_gone(self.connection)

    def _check(self, path: str, *, post: bool) -> None:
        """Refuse a foreign Host, a cross-site browser POST, a missing API key, a body that is not JSON."""
        access = self.server.access
        reason = access.host_error(self.headers.get("Host"))
        if reason:
            raise ApiError(403, reason, code="host_not_allowed")
        if post:
            reason = access.cross_site_error(self.headers)
            if reason:
                raise ApiError(403, reason, code="cross_origin_refused")
        if path not in _PUBLIC and not access.key_ok(self.headers.get("Authorization")):
            raise ApiError(401, "a valid API key is required: send the header 'Authorization: Bearer KEY' "
                           "(the key the server was started with)", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        if post and not access.is_json(self.headers.get("Content-Type")):
            raise ApiError(415, "send the request body as JSON, with 'Content-Type: application/json'",
                           code="unsupported_media_type")

    def _read_json(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "send the body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required")
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, f"bad Content-Length {length!r}") from None
        if n < 0 or n > MAX_BODY:
            raise ApiError(413, f"the request body is {n:,} bytes; the limit is {MAX_BODY:,}")
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.server.read_timeout:g} s",
                           code="request_timeout") from None
        if len(raw) < n:
            raise ApiError(400, f"the request body ended after {len(raw):,} of {n:,} bytes")
        self.reader.done()
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ApiError(400, "the request body is not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise ApiError(400, f"malformed JSON in the request body: {e.msg} at line {e.lineno} column {e.colno}") from None
        except RecursionError:
            raise ApiError(400, "the JSON in the request body is nested too deeply") from None

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.reader.done()
        path = self.path.split("?", 1)[0]
        try:
            self._check(path, post=False)
            if path in ("/", "/index.html"):
                self._send(200, self.server.page, "text/html; charset=utf-8", {"Cache-Control": "no-cache"})
            elif path == "/v1/models":
                self._json(200, {"object": "list", "data": [self.server.model_card(m) for m in self.server.models]})
            elif path.startswith("/v1/models/"):
                mid = path[len("/v1/models/"):]
                if mid not in self.server.models:
                    raise ApiError(404, f"model '{mid}' is not served here", code="model_not_found")
                self._json(200, self.server.model_card(mid))
            elif path == "/api/config":
                s = self.server.sampling
                self._json(200, {"sampling": {k: getattr(s, k) for k in ("temperature", "top_p", "repetition_penalty",
                                                                          "no_repeat_ngram_size", "max_new_tokens")},
                                 "models": [self.server.model_card(m) for m in self.server.models],
                                 "max_queue": self.server.queue.max_waiting})
            elif path == "/health":
                q = self.server.queue
                self._json(200, {"status": "ok", "active": q.active, "waiting": q.waiting})
            elif path == "/tokenizer_info":
                query = parse_qs(self.path.partition("?")[2])
                mid = pick_model(self.server.models, {"model": query.get("model", [next(iter(self.server.models))])[0]})
                self._json(200, completions.tokenizer_info(self.server.models[mid]))
            elif path in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"):
                raise ApiError(405, f"use POST for {path}", headers={"Allow": "POST"})
            else:
                raise ApiError(404, f"no such endpoint: {path}", code="not_found")
        except ApiError as e:
            self._error(e)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        try:
            if path not in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"):
                raise ApiError(404, f"no such endpoint: POST {path}", code="not_found")
            self._check(path, post=True)
            body = self._read_json()
            if path == "/tokenize":
                self._json(200, completions.tokenize(self.server, body))
            elif path == "/detokenize":
                self._json(200, completions.detokenize(self.server, body))
            elif path == "/v1/completions":
                req = completions.parse_completion(self.server, body)
                with self.server.queue.slot():
                    out = completions.complete(req, self._alive)
                self._json(200, out)
            else:
                req = parse_request(self.server, body)
                with self.server.queue.slot():
                    if req["stream"]:
                        self._stream(req)
                    else:
                        self._complete(req)
        except ApiError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.log_message("client disconnected; its generation was stopped")
        except Exception as e:  # a bug or a model failure must not take the server down
            self.log_message("error: %s: %s", type(e).__name__, e)
            self._error(ApiError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error"))

    def do_PUT(self) -> None:  # noqa: N802
        self._error(ApiError(405, f"{self.command} is not supported here"))

    # OPTIONS (a CORS preflight) is refused too: no cross-origin page may call the API.
    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    # ------------------------------------------------------------------ completions

    def _base(self, req: dict, obj: str) -> dict:
        return {"id": req.setdefault("id", f"chatcmpl-{uuid.uuid4().hex[:24]}"), "object": obj,
                "created": int(time.time()), "model": req["model"], "system_fingerprint": None}

    @staticmethod
    def _finish(gen) -> str:
        return "stop" if gen.finish_reason in ("stop", "cancelled") else gen.finish_reason

    def _complete(self, req: dict) -> None:
        # Nothing is written until the answer is done, so only polling the socket shows a client that left.
        gen = req["chat"].generate(req["prepared"], req["sampling"], stop=req["stop"], alive=self._alive)
        text = "".join(gen)
        if gen.finish_reason == "cancelled":
            raise ConnectionResetError("the client left")
        out = self._base(req, "chat.completion")
        out["choices"] = [{"index": 0, "message": {"role": "assistant", "content": text},
                           "finish_reason": self._finish(gen), "logprobs": None}]
        out["usage"] = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                        "total_tokens": gen.prompt_tokens + gen.completion_tokens}
        if req["trim"]:
            out["langadapt"] = {"dropped_turns": req["prepared"].dropped_turns}
        self._json(200, out)

    def _stream(self, req: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()

        def event(obj: Any) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        def chunk(delta: dict, finish: str | None = None) -> dict:
            c = self._base(req, "chat.completion.chunk")
            c["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            return c

        gen = req["chat"].generate(req["prepared"], req["sampling"], stop=req["stop"], alive=self._alive)
        first = chunk({"role": "assistant", "content": ""})
        if req["trim"]:
            first["langadapt"] = {"dropped_turns": req["prepared"].dropped_turns}
        pieces = iter(gen)
        try:
            event(first)
            for piece in pieces:
                event(chunk({"content": piece}))
        except OSError:
            pieces.close()  # the client disconnected: stop the worker before the next request gets the model
            raise BrokenPipeError from None
        except Exception as e:  # headers are sent: report the failure inside the stream
            pieces.close()
            self.log_message("error while streaming: %s: %s", type(e).__name__, e)
            with contextlib.suppress(OSError):
                event({"error": {"message": f"generation failed: {type(e).__name__}: {e}", "type": "server_error",
                                 "param": None, "code": None}})
            return
        event(chunk({}, self._finish(gen)))
        if req["include_usage"]:
            u = self._base(req, "chat.completion.chunk")
            u["choices"] = []
            u["usage"] = {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                          "total_tokens": gen.prompt_tokens + gen.completion_tokens}
            event(u)
        event("[DONE]")


def make_server(models: dict[str, ChatModel], *, host: str = "127.0.0.1", port: int = 8000,
                sampling: Sampling | None = None, max_queue: int = 4, queue_timeout: float = 600.0,
                log=None, **access) -> ChatServer:
    """A ChatServer bound to ``host:port`` (port 0: any free port), not yet serving.

    ``access``: ``api_key``, ``allow_hosts``, ``read_timeout``, ``max_connections``, ``max_request_tokens``.
    """
    return ChatServer((host, port), models, sampling=sampling, max_queue=max_queue, queue_timeout=queue_timeout,
                      log=log, **access)


def run_serve(args) -> int:
    """The ``langadapt serve`` command."""
    from rich.console import Console

    from langadapt.errors import LangadaptError
    from langadapt.serve.source import resolve_ref, run_stages

    console = Console(stderr=True)
    sampling = Sampling(**{k: getattr(args, k) for k in ("temperature", "top_p", "repetition_penalty",
                                                           "no_repeat_ngram_size", "max_new_tokens", "seed")})
    try:
        sampling.check()
    except ValueError as e:
        raise LangadaptError(str(e)) from None
    if args.max_queue < 0:
        raise LangadaptError("--max-queue must be 0 or more")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and not api_key:
        raise LangadaptError(f"serving on {args.host} lets other machines use this model: give an API key with "
                             f"--api-key KEY or the {API_KEY_ENV} environment variable (clients then send "
                             "'Authorization: Bearer KEY'), or serve on 127.0.0.1")
    if args.read_timeout <= 0 or args.max_connections < 1 or (args.max_request_tokens or 1) < 1:
        raise LangadaptError("--read-timeout must be above 0, --max-connections and --max-request-tokens at least 1")
    specs: list[tuple[str | None, str]] = []
    for item in args.models:
        name, eq, spec = item.partition("=")
        if eq and name and "/" not in name and not name.startswith((".", "~")):
            specs.append((name, spec))
        elif run_stages(item):  # a run folder: every stage that has a model, to compare them
            specs += [(None, f"{item}:{st}") for st in run_stages(item)]
        else:
            specs.append((None, item))
    models: dict[str, ChatModel] = {}
    for name, spec in specs:
        mid = name or resolve_ref(spec).name
        if mid in models:
            raise LangadaptError(f"two models would both be called '{mid}'; name them: NAME=MODEL")
        with console.status(f"loading {spec} …"):
            models[mid] = ChatModel.load(spec, name=mid, context=args.context, device=args.device, dtype=args.dtype)
        console.print(f"loaded [bold]{mid}[/bold] (context window {models[mid].context:,} tokens)")
    try:
        server = make_server(models, host=args.host, port=args.port, sampling=sampling, max_queue=args.max_queue,
                             log=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)),
                             api_key=api_key, allow_hosts=args.allow_host, read_timeout=args.read_timeout,
                             max_connections=args.max_connections, max_request_tokens=args.max_request_tokens)
    except OSError as e:
        raise LangadaptError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}; choose another --port") from None
    console.print(f"chat page:  [bold]{server.url}[/bold]")
    console.print(f"OpenAI API: {server.url}v1  (models: {', '.join(models)})   Ctrl-C stops the server")
    if api_key:
        console.print("API key required: clients send 'Authorization: Bearer KEY'; the chat page asks for it")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()
    return 0


def add_parser(sub) -> None:
    """Register ``langadapt serve`` on the CLI's subparsers."""
    from langadapt.serve.chat import add_model_options, add_sampling_options

    p = sub.add_parser(
        "serve", help="local OpenAI-compatible server and a web chat page (compare two models side by side)",
        description="Serve one or more models on a local HTTP server: a chat page at / (Persian right-to-left, "
        "English left-to-right, per message; answers stream; two models side by side on one prompt) and an "
        "OpenAI-compatible API at /v1 (chat/completions, streaming and not; models), so the openai client and "
        "other tools work with base_url=http://127.0.0.1:PORT/v1. One answer is generated at a time; up to "
        "--max-queue requests wait and further ones get HTTP 503. /v1/completions (echo, logprobs) and /tokenize serve "
        "log-likelihood evaluations, e.g. lm-eval --model local-completions --model_args "
        "base_url=http://127.0.0.1:PORT/v1/completions,model=NAME. Each MODEL is a model folder, adapter folder, "
        ".gguf, hub id, smollm2-135m-instruct, a run's stage (runs/NAME/STAGE, runs/NAME:STAGE, "
        "RECIPE.yaml:STAGE; RECIPE.yaml:base is the run's base model), or a run folder (runs/NAME: all its stages "
        "that have a model); write NAME=MODEL to choose the id clients use.",
        epilog="Examples: 'langadapt serve base=smollm2-135m-instruct sft=runs/demo/sft --port 8000'; "
        "'langadapt serve configs/demo.yaml:base runs/demo' (the base model and every stage of the run).")
    p.add_argument("models", nargs="+", metavar="MODEL", help="models to serve; the first is the page's default")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-queue", type=int, default=4, help="requests allowed to wait while one generates (default 4)")
    p.add_argument("--quiet", action="store_true", help="do not log requests")
    p.add_argument("--api-key", metavar="KEY", help=f"require 'Authorization: Bearer KEY' on the API (default: "
                   f"${API_KEY_ENV}, which keeps the key out of the process list); required for a --host other "
                   "than loopback; the chat page asks for it")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name clients use to reach the server (repeatable); requests naming any other Host "
                   "are refused against DNS rebinding; loopback names and the --host are always allowed; '*' allows any")
    p.add_argument("--read-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a client must send its whole request within this time, and no send to it may block longer "
                   "(default 30)")
    p.add_argument("--max-connections", type=int, default=64, metavar="N",
                   help="connections served at once; more get HTTP 503 at once (default 64)")
    p.add_argument("--max-request-tokens", type=int, metavar="N",
                   help="the most tokens one request may hold, even with trim_history (default: 32,768 or 4 x the "
                   "model's context window, whichever is more)")
    add_model_options(p)
    add_sampling_options(p)
    p.set_defaults(func=run_serve)
