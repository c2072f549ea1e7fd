"""The HTTP edge: the seed's REST API on Tornado, forwarding to a balancer or a node.

Endpoints (``docs/api.md`` has every status and body)::

    POST   /api/cache/<key>/[?ttl=S]  body: the JSON value   201 | 400 | 413 | 503
    GET    /api/cache/<key>/                                200 | 404 | 400 | 503
    DELETE /api/cache/<key>/                                200 (missing keys too) | 400 | 503
    GET    /api/health/                                     200 while the process runs
    GET    /api/ready/                                      200 when the backend serves, else 503
    GET    /api/cluster/                                    200 every node's state | 503

Every response body is JSON ``{"message": str, "payload": object}``, errors
included.  A POSTed value (a non-empty string, a number, a non-empty list or
an object, as the seed's schema said) is stored as its compact JSON text in
UTF-8, so ZeroMQ clients read JSON; a stored value that is not JSON text (set
over ZeroMQ) reads back over HTTP as a JSON string (invalid UTF-8 replaced by
U+FFFD).

Every handler awaits one request on ONE shared :class:`mesh.client.AsyncClient`
(made on first use, on the running loop), which pipelines concurrent
requests over a single DEALER socket.  The backend is the balancer for
``pycache edge``, or the node's own API endpoint when a node serves HTTP
itself (``pycache node --http-port``).

Backend errors map to statuses at this boundary: BadRequest 400, TooLarge 413,
NotReady / Timeout / ConnectionFailed / WriteNotAcknowledged 503 (with
``Retry-After: 1``), anything else 500 with a generic message (the cause goes
to the log, never to the client).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
import zmq.asyncio

from mesh.client import AsyncClient
from mesh.config import EdgeConfig
from mesh.datadir import write_atomically
from mesh.errors import (
    BadRequest,
    ConnectionFailed,
    InternalError,
    NotReady,
    PyCacheError,
    Timeout,
    TooLarge,
    WriteNotAcknowledged,
)
from mesh.wire import MAX_TTL_MS

log = logging.getLogger(__name__)
access_log = logging.getLogger("mesh.edge.access")

JSON_TYPE = "application/json; charset=UTF-8"
#: Per-connection body ceiling once a request is refused: Tornado then drains
#: the rest quietly until the 413 is sent and the connection closes.
_DRAIN_CEILING = 1 << 62
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


def iso_utc(ms: int) -> str:
    """``2026-11-28T03:04:05.123Z`` for milliseconds since the epoch."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def ttl_ms(raw: str | None) -> int | None:
    """Milliseconds for the ``ttl`` query argument (seconds, > 0); ApiError 400 if invalid."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    ms = round(seconds * 1000) if math.isfinite(seconds) else 0
    if not (math.isfinite(seconds) and seconds > 0 and ms <= MAX_TTL_MS):
        raise ApiError(400, f"Invalid ttl: seconds > 0 and at most {MAX_TTL_MS // 1000}")
    return max(1, ms)


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
    ) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.timeout = timeout
        self._context = context
        self._client: AsyncClient | None = None

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            self._client = AsyncClient(self.endpoints, timeout=self.timeout, context=self._context)
        return self._client

    async def close(self) -> None:
        """Close the client's socket (and its context, when it made one)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def _translate(exc: PyCacheError) -> ApiError:
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
    what = "internal error" if isinstance(exc, InternalError) else "unexpected error"
    return ApiError(500, "Internal server error", "backend %s: %r", what, exc)


# --------------------------------------------------------------------------- handlers


class JsonHandler(tornado.web.RequestHandler):
    """Answers ``{"message", "payload"}`` JSON, errors included; no ETag work."""

    backend: Backend

    def initialize(self, backend: Backend) -> None:
        self.backend = backend

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", JSON_TYPE)

    def compute_etag(self) -> str | None:
        return None  # hashing every value for If-None-Match is not worth it for a cache

    def reply(self, status: int, message: str, payload: str = "{}") -> None:
        """Finish with ``payload`` given as JSON text."""
        self.set_status(status)
        if status == 503:
            self.set_header("Retry-After", "1")
        self.finish(f'{{"message":{json.dumps(message)},"payload":{payload}}}'.encode())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            message = exc.message
        elif status_code >= 500:
            message = "Internal server error"
        else:
            message = self._reason
        self.reply(status_code, message)


@tornado.web.stream_request_body
class CacheHandler(JsonHandler):
    """``/api/cache/<key>/``: POST a JSON value, GET it with its metadata, DELETE it.

    The body is streamed in so that one over the limit gets a 413 as soon as
    its Content-Length (or its running size, when chunked) shows it, instead
    of being read whole first.
    """

    def initialize(self, backend: Backend, max_body_bytes: int) -> None:  # type: ignore[override]
        self.backend = backend
        self.max_body_bytes = max_body_bytes
        self._chunks: list[bytes] = []
        self._size = 0

    def prepare(self) -> None:
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            self._refuse_body(f"Request body of {declared} bytes")
        else:
            self.request.connection.set_max_body_size(_DRAIN_CEILING)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._size += len(chunk)
        if self._size > self.max_body_bytes:
            self._chunks = []
            self._refuse_body("Request body")
        else:
            self._chunks.append(chunk)

    def _refuse_body(self, what: str) -> None:
        # Tornado keeps reading (and dropping) the body until the answer is out,
        # then closes the connection: the only way not to read it all.
        self.request.connection.set_max_body_size(_DRAIN_CEILING)  # type: ignore[union-attr]
        self.set_header("Connection", "close")
        self.reply(413, f"{what} is over the limit of {self.max_body_bytes} bytes")

    async def post(self, key: str) -> None:
        if self._finished:
            return  # refused while the body streamed in
        stored = encode_value(b"".join(self._chunks))
        ttl = ttl_ms(self.get_query_argument("ttl", None))
        try:
            await self.backend.client.set(key, stored, px=ttl)
        except PyCacheError as exc:
            raise _translate(exc) from exc
        payload = _payload(key, stored.decode(), time.time_ns() // 1_000_000, ttl)
        self.reply(201, "Cache key set success", payload)

    async def get(self, key: str) -> None:
        if self._finished:
            return
        try:
            meta = await self.backend.client.get_meta(key)
        except PyCacheError as exc:
            raise _translate(exc) from exc
        if meta is None:
            self.reply(404, "Cache key not found")
            return
        value, ttl, updated_ms = meta
        payload = _payload(key, value_text(value), updated_ms, None if ttl < 0 else ttl)
        self.reply(200, "Cache key get success", payload)

    async def delete(self, key: str) -> None:
        if self._finished:
            return
        try:
            await self.backend.client.delete(key)
        except PyCacheError as exc:
            raise _translate(exc) from exc
        self.reply(200, "Cache key expired")


class HealthHandler(JsonHandler):
    """``/api/health/``: the process is alive (liveness; never asks the backend)."""

    def get(self) -> None:
        self.reply(200, "alive")


class ReadyHandler(JsonHandler):
    """``/api/ready/``: 200 when the backend's HEALTH says ``ready``, else 503."""

    async def get(self) -> None:
        try:
            health = await self.backend.client.health()
        except PyCacheError as exc:
            self.reply(503, f"not ready: {_translate(exc).message}")
            return
        if not isinstance(health, dict):
            raise ApiError(500, "Internal server error", "HEALTH gave %r", health)
        ready = health.get("state") == "ready"
        self.reply(200 if ready else 503, "ready" if ready else "not ready", _dumps(health))


class ClusterHandler(JsonHandler):
    """``/api/cluster/``: every node as the backend sees it: state, lag, keys, digest."""

    async def get(self) -> None:
        try:
            cluster = await self.backend.client.cluster()
        except PyCacheError as exc:
            raise _translate(exc) from exc
        nodes = cluster.get("nodes") if isinstance(cluster, dict) else None
        if not isinstance(nodes, list):
            raise ApiError(500, "Internal server error", "CLUSTER gave %r", cluster)
        for node in nodes:
            if isinstance(node, dict):
                for field in ("node_id", "state", "lag", "keys", "digest"):
                    node.setdefault(field, None)  # a node a peer only heard of
        self.reply(200, "cluster", _dumps({"nodes": nodes}))


class NotFoundHandler(JsonHandler):
    """Any other path: a JSON 404."""

    def initialize(self) -> None:  # type: ignore[override]
        pass

    def prepare(self) -> None:
        raise ApiError(404, "No such endpoint")


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_bytes_as_text)


def _bytes_as_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log: server errors at INFO, everything else at DEBUG (thousands a second)."""
    status = handler.get_status()
    level = logging.INFO if status >= 500 else logging.DEBUG
    if access_log.isEnabledFor(level):
        took = 1000.0 * handler.request.request_time()
        access_log.log(level, "%d %s %.2fms", status, handler._request_summary(), took)


# --------------------------------------------------------------------------- app and server


class EdgeApp(tornado.web.Application):
    """The Tornado application; ``backend`` is the shared client it forwards to."""

    def __init__(self, backend: Backend, max_body_bytes: int) -> None:
        self.backend = backend
        self.max_body_bytes = max_body_bytes
        common = {"backend": backend}
        super().__init__(
            [
                (
                    r"/api/cache/([^/]+)/?",
                    CacheHandler,
                    {**common, "max_body_bytes": max_body_bytes},
                ),
                (r"/api/health/?", HealthHandler, common),
                (r"/api/ready/?", ReadyHandler, common),
                (r"/api/cluster/?", ClusterHandler, common),
            ],
            default_handler_class=NotFoundHandler,
            log_function=_log_request,
        )


def make_app(
    backend_endpoint: str | Sequence[str],
    *,
    timeout: float,
    max_body_bytes: int,
    context: zmq.asyncio.Context | None = None,
) -> EdgeApp:
    """The HTTP API forwarding to ``backend_endpoint`` (a balancer's front or a node's API).

    ``timeout`` bounds every backend request (seconds); ``context`` lets a node
    share its own ZeroMQ context (so ``inproc://`` endpoints work too).
    """
    return EdgeApp(Backend(backend_endpoint, timeout, context), max_body_bytes)


class HttpServer:
    """A listening HTTP API: ``url`` once bound; ``await stop()`` closes it all."""

    def __init__(self, app: EdgeApp, host: str, port: int) -> None:
        self.app = app
        self.server = tornado.httpserver.HTTPServer(app, max_body_size=app.max_body_bytes)
        sockets = tornado.netutil.bind_sockets(port, host)
        self.server.add_sockets(sockets)
        self.port: int = sockets[0].getsockname()[1]
        family = sockets[0].family
        self.url = (
            f"http://[{host}]:{self.port}"
            if family == socket.AF_INET6
            else f"http://{host}:{self.port}"
        )

    async def stop(self) -> None:
        """Stop listening, close every connection, then the backend client."""
        self.server.stop()
        await self.server.close_all_connections()
        await self.app.backend.close()


def serve(
    backend_endpoint: str | Sequence[str],
    host: str,
    port: int,
    *,
    timeout: float,
    max_body_bytes: int,
    context: zmq.asyncio.Context | None = None,
) -> HttpServer:
    """Start the HTTP API on ``host:port`` (0: the OS picks) in the running loop."""
    app = make_app(
        backend_endpoint, timeout=timeout, max_body_bytes=max_body_bytes, context=context
    )
    return HttpServer(app, host, port)


def run_edge(config: EdgeConfig) -> None:
    """Run ``pycache edge`` until SIGTERM or SIGINT; returns after a clean stop.

    With ``config.status_file`` set, writes ``{"pid", "http", "backend"}`` there
    once listening (the bound port, when the OS picked it).
    """
    config.validate()

    async def main() -> None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        server = serve(
            list(config.backend),
            config.host,
            config.port,
            timeout=config.timeout,
            max_body_bytes=config.max_body_bytes,
        )
        try:
            log.info("edge on %s forwarding to %s", server.url, ", ".join(config.backend))
            if config.status_file:
                status = {"pid": os.getpid(), "http": server.url, "backend": list(config.backend)}
                write_atomically(Path(config.status_file), json.dumps(status).encode())
            await stopped.wait()
        finally:
            await server.stop()
            log.info("edge stopped")

    asyncio.run(main())
