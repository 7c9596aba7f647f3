"""Who may talk to ``langadapt serve``, and how long they may take to say it.

- API key: ``Authorization: Bearer KEY`` (OpenAI's scheme), compared in constant time. ``run_serve``
  refuses to listen beyond loopback without one; on loopback it is optional.
- Host: a page on another site can point a DNS name of its own at 127.0.0.1 (DNS rebinding) and then
  read this server's answers as if it were the same origin; its requests then carry that name in
  ``Host``. Only the bound name, loopback names and ``--allow-host`` names are served (and, for a
  wildcard bind, IP literals and this machine's hostname: an address cannot be rebound).
- Cross-site browser requests: a page elsewhere can POST ``text/plain`` to any address without a
  CORS preflight. Such requests are refused by their ``Origin`` / ``Sec-Fetch-Site`` headers, and the
  API requires ``Content-Type: application/json``, which a foreign page cannot send without a
  preflight that this server never approves.
- Slow clients: the whole request (head and body) must arrive within ``read_timeout`` seconds. It is
  a deadline, not a per-read timeout, so trickling a byte at a time does not stretch it.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import select
import socket
import time
from urllib.parse import urlsplit

API_KEY_ENV = "LANGADAPT_API_KEY"
_WILDCARD = ("", "0.0.0.0", "::")


def _name(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only reaches this machine."""
    h = _name(host)
    if h == "localhost" or h.endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _authority(value: str, default_port: int | None) -> tuple[str, int | None] | None:
    """(host name, port) of a ``Host`` header or an ``Origin``; None when it does not parse."""
    try:
        parts = urlsplit(value if "//" in value else "//" + value)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme, default_port)
    return _name(parts.hostname), port


class Access:
    """The access rules for one server: its bound host, API key and extra allowed host names."""

    def __init__(self, bind_host: str, *, api_key: str | None = None, allow_hosts: tuple[str, ...] | list[str] = ()):
        self.api_key = api_key or None
        self.any_host = "*" in allow_hosts
        self.wildcard = bind_host in _WILDCARD
        names = {"localhost", "127.0.0.1", "::1"}
        if self.wildcard:
            names.add(_name(socket.gethostname()))
        else:
            names.add(_name(bind_host))
        names.update(_name(h) for h in allow_hosts if h != "*")
        self.names = frozenset(names)

    def host_error(self, host: str | None) -> str | None:
        """Why a request with this ``Host`` header is refused, or None."""
        if host is None:
            return None  # HTTP/1.0 tools; a browser, the only way to rebind DNS, always sends one
        parsed = _authority(host, None)
        if parsed is None:
            return f"malformed Host header {host!r}"
        name = parsed[0]
        if self.any_host or name in self.names or name.endswith(".localhost") or (self.wildcard and _is_ip(name)):
            return None
        return (f"Host '{name}' is not served here (a DNS-rebinding guard); start the server with "
                f"--allow-host {name} if this is the name clients use")

    def key_ok(self, authorization: str | None) -> bool:
        """Whether ``Authorization`` carries the API key (always true when the server has none)."""
        if self.api_key is None:
            return True
        scheme, _, token = (authorization or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    @staticmethod
    def cross_site_error(headers) -> str | None:
        """Why a state-changing request from a browser page on another site is refused, or None."""
        site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
        if site and site not in ("same-origin", "none"):
            return f"cross-site browser requests are refused (Sec-Fetch-Site: {site})"
        origin = headers.get("Origin")
        if origin is None:
            return None
        host = headers.get("Host")
        mine = _authority(host, 80) if host else None
        theirs = _authority(origin, None) if origin.strip().lower() != "null" else None
        if theirs is None or mine is None or theirs != mine:
            return f"cross-origin browser requests are refused (Origin: {origin})"
        return None

    @staticmethod
    def is_json(content_type: str | None) -> bool:
        return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


class DeadlineReader(io.RawIOBase):
    """A socket's input that fails with TimeoutError once the request's deadline has passed.

    Until ``done()`` every read may only wait for what is left of ``timeout`` seconds from the start;
    afterwards (the request is in) each read or write may wait ``timeout`` seconds.
    """

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock = sock
        self.timeout = timeout
        self.deadline: float | None = time.monotonic() + timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is None:
            self.sock.settimeout(self.timeout)
        else:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the request did not arrive within {self.timeout:g} s")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)

    def done(self) -> None:
        self.deadline = None
        self.sock.settimeout(self.timeout)


def client_gone(sock: socket.socket) -> bool:
    """Whether the client has closed its end (it sends nothing after its one request, so readable = EOF).

    A client that half-closes after sending its request would count as gone; HTTP clients do not do that.
    """
    try:
        if hasattr(select, "poll"):  # select() cannot watch descriptors above 1023
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            readable = bool(poller.poll(0))
        else:
            readable = bool(select.select([sock], [], [], 0)[0])
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)) == b""
    except (BlockingIOError, InterruptedError, TimeoutError):
        return False
    except (OSError, ValueError):
        return True


def refuse_connection(sock: socket.socket, status: int, reason: str, message: str, *, code: str,
                      retry_after: int | None = None) -> None:
    """Answer a connection that will not get a handler thread with one short error response, without blocking."""
    body = json.dumps({"error": {"message": message, "type": "server_busy", "param": None, "code": code}}).encode()
    head = [f"HTTP/1.0 {status} {reason}", "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(body)}", "Connection: close"]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    try:
        sock.setblocking(False)
        sock.send(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    except OSError:
        pass
