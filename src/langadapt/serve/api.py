"""What the server's request handlers share: the OpenAI-style error and number checks."""

from __future__ import annotations


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        self.headers = headers or {}


def number(body: dict, key: str, kind: type, default):
    """``body[key]`` as ``kind`` (int or float), ``default`` when absent or null; ApiError 400 otherwise."""
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise ApiError(400, f"'{key}' must be {'an integer' if kind is int else 'a number'} (got {v!r})", param=key)
    return kind(v)


def pick_model(models: dict, body: dict) -> str:
    """The served model a request names (the only one when it names none); ApiError 400/404 otherwise."""
    mid = body.get("model")
    if mid is None and len(models) == 1:
        mid = next(iter(models))
    if not isinstance(mid, str):
        raise ApiError(400, "'model' is required: one of " + ", ".join(models), param="model")
    if mid not in models:
        raise ApiError(404, f"model '{mid}' is not served here; available: {', '.join(models)}",
                       param="model", code="model_not_found")
    return mid


def stop_strings(body: dict) -> tuple[str, ...]:
    """OpenAI's ``stop``: a string or up to 4 of them."""
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is None:
        stop = []
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    return tuple(stop)
