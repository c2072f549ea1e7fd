"""The seed API's cache operations, whatever serves the HTTP.

:mod:`mesh.roles.edge` answers requests two ways (a lean delegate for plain cache
requests, the Tornado application for the rest); both call the functions
here, so statuses and bodies are the same.  Each returns an :data:`Answer`
or raises :class:`ApiError`.

Values: a POSTed value (a non-empty string, a number, a non-empty list or an
object, as the seed's schema said) is stored as its compact JSON text in
UTF-8, so ZeroMQ clients read JSON; a stored value that is not JSON text (set
over ZeroMQ) reads back over HTTP as a JSON string (invalid UTF-8 replaced by
U+FFFD).  Every response body is JSON ``{"message": str, "payload": object}``.

Backend errors map to statuses here: BadRequest 400, TooLarge 413,
NotReady / Timeout / ConnectionFailed / WriteNotAcknowledged 503, NoSpace 507, anything
else 500 with a generic message (the cause goes to the log, never to the
client).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import tornado.web
import zmq.asyncio

from mesh.core.errors import (
    BadRequest,
    ConnectionFailed,
    InternalError,
    NoSpace,
    NotReady,
    PyCacheError,
    Timeout,
    TooLarge,
    WriteNotAcknowledged,
)
from mesh.core.wire import MAX_TTL_MS
from mesh.roles.asyncclient import AsyncClient
from mesh.roles.clientplane import Credentials

INVALID_VALUE = "Invalid value: send a non-empty string, a number, a non-empty list or an object"


class ApiError(tornado.web.HTTPError):
    """An error answered as JSON: ``message`` goes to the client, ``log_message`` to the log.

    Without a ``log_message`` nothing is logged beyond the access line.
    """

    def __init__(
        self, status: int, message: str, log_message: str | None = None, *args: Any
    ) -> None:
        super().__init__(status, log_message, *args)
        self.message = message


# --------------------------------------------------------------------------- values


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode_value(body: bytes) -> bytes:
    """The stored form of a POST body: its value as compact JSON text in UTF-8.

    Raises :class:`ApiError` 400 when the body is not JSON (UTF-8, no NaN or
    Infinity) or its value is not a non-empty string, a number, a non-empty
    list or an object.
    """
    try:
        value = json.loads(body.decode(), parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, f"Invalid JSON body: {exc}") from None
    kind = type(value)
    if not (kind is dict or kind is int or kind is float or (kind in (str, list) and value)):
        raise ApiError(400, INVALID_VALUE)
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode()
    except (ValueError, RecursionError) as exc:  # 1e999 (infinite), lone surrogates
        raise ApiError(400, f"Invalid JSON body: {exc}") from None


def value_text(stored: bytes) -> str:
    """JSON text for a stored value: the value itself when it is JSON text, else a string.

    Bytes that are not UTF-8 become a string with U+FFFD in place of each bad
    sequence: binary values are for ZeroMQ clients.
    """
    try:
        text = stored.decode()
    except UnicodeDecodeError:
        return json.dumps(stored.decode(errors="replace"), ensure_ascii=False)
    try:
        json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return json.dumps(text, ensure_ascii=False)
    return text.strip(" \t\n\r")  # JSON text: embedded as it is, not encoded again


@functools.lru_cache(maxsize=64)
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_utc(ms: int) -> str:
    """``2026-11-28T03:04:05.123Z`` for milliseconds since the epoch."""
    return f"{_iso_second(ms // 1000)}.{ms % 1000:03d}Z"


def ttl_ms(raw: str | None) -> int | None:
    """Milliseconds for the ``ttl`` query argument (seconds, > 0); ApiError 400 if invalid."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    # Range first: seconds * 1000 of a huge finite number is infinite (no round()).
    if not (0 < seconds <= MAX_TTL_MS / 1000):  # NaN fails every comparison
        raise ApiError(400, f"Invalid ttl: seconds > 0 and at most {MAX_TTL_MS // 1000}")
    return max(1, min(MAX_TTL_MS, round(seconds * 1000)))


def _payload(key: str, value: str, updated_ms: int, ttl: int | None) -> str:
    """The seed's cache payload plus ``ttl`` (seconds left, or null), as JSON text."""
    return (
        f'{{"key":{json.dumps(key, ensure_ascii=False)},"value":{value},'
        f'"last_updated_at":"{iso_utc(updated_ms)}","ttl":'
        f"{'null' if ttl is None else repr(ttl / 1000)}}}"
    )


# --------------------------------------------------------------------------- backend


class Backend:
    """The one shared :class:`AsyncClient` of an app, made on first use in the running loop."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        timeout: float,
        context: zmq.asyncio.Context | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.timeout = timeout
        self._context = context
        self._credentials = credentials
        self._client: AsyncClient | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            self._client = AsyncClient(
                self.endpoints,
                timeout=self.timeout,
                context=self._context,
                credentials=self._credentials,
            )
        return self._client

    async def close(self) -> None:
        """Close the client's socket (and its context, when it made one)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def translate_error(exc: PyCacheError) -> ApiError:
    """The HTTP answer to a backend error."""
    if isinstance(exc, NotReady):
        return ApiError(503, f"Not ready: {exc.reason}")
    if isinstance(exc, (Timeout, ConnectionFailed)):
        why = exc.args[-1] if exc.args else exc  # a balancer's DEADLINE is Timeout(code, reason)
        return ApiError(503, f"Cache unavailable: {why}; a write may or may not have been applied")
    if isinstance(exc, WriteNotAcknowledged):
        return ApiError(503, f"Write not acknowledged: {exc.reason}")
    if isinstance(exc, BadRequest):
        return ApiError(400, exc.reason)
    if isinstance(exc, TooLarge):
        return ApiError(413, exc.reason)
    if isinstance(exc, NoSpace):
        return ApiError(507, f"Insufficient storage: {exc.reason}")
    what = "internal error" if isinstance(exc, InternalError) else "unexpected error"
    return ApiError(500, "Internal server error", "backend %s: %r", what, exc)


# --------------------------------------------------------------------------- cache operations

#: An answer: HTTP status, message, payload as JSON text.
Answer = tuple[int, str, str]


async def cache_set(backend: Backend, key: str, body: bytes, ttl: str | None) -> Answer:
    """POST: store ``body``'s JSON value under ``key`` (``ttl`` seconds, as given in the URL)."""
    stored = encode_value(body)
    px = ttl_ms(ttl)
    try:
        await backend.client.set(key, stored, px=px)
    except PyCacheError as exc:
        raise translate_error(exc) from exc
    payload = _payload(key, stored.decode(), time.time_ns() // 1_000_000, px)
    return 201, "Cache key set success", payload


async def cache_get(backend: Backend, key: str) -> Answer:
    """GET: the value with its metadata, or 404."""
    try:
        meta = await backend.client.get_meta(key)
    except PyCacheError as exc:
        raise translate_error(exc) from exc
    if meta is None:
        return 404, "Cache key not found", "{}"
    value, ttl, updated_ms = meta
    payload = _payload(key, value_text(value), updated_ms, None if ttl < 0 else ttl)
    return 200, "Cache key get success", payload


async def cache_delete(backend: Backend, key: str) -> Answer:
    """DELETE: 200 whether or not the key was there, as in the seed."""
    try:
        await backend.client.delete(key)
    except PyCacheError as exc:
        raise translate_error(exc) from exc
    return 200, "Cache key expired", "{}"


def response_body(message: str, payload: str) -> bytes:
    """The JSON body ``{"message", "payload"}``, ``payload`` given as JSON text."""
    return f'{{"message":{json.dumps(message)},"payload":{payload}}}'.encode()
