"""The Tornado side of the HTTP API: the request handlers, JSON bodies and the access log.

:mod:`mesh.roles.edge` serves the cache requests on a fast path of its own
and hands every other request to the application these handlers make up;
both answer ``{"message", "payload"}`` JSON bodies and log through
:func:`log_access`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import tornado.web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

from mesh.core.errors import PyCacheError
from mesh.core.histogram import Histogram
from mesh.roles.cacheapi import (
    ApiError,
    Backend,
    cache_delete,
    cache_get,
    cache_set,
    response_body,
    translate_error,
)
from mesh.roles.metrics import CONTENT_TYPE, Families, exposition, histogram, labelled

#: The access log keeps the edge's logger name: operators filter on it.
access_log = logging.getLogger("mesh.roles.edge.access")

JSON_TYPE = "application/json; charset=UTF-8"
#: The OpenAPI document's file name, in this package and in ``docs/``.
OPENAPI_FILE = "openapi.json"
#: Per-connection body ceiling once a request is refused: Tornado then drains
#: the rest quietly until the 413 is sent and the connection closes.
_DRAIN_CEILING = 1 << 62
#: Responses of this process's HTTP API by status code, and their latency
#: (counted by :func:`log_access`, which every response passes).
RESPONSES: defaultdict[int, int] = defaultdict(int)
LATENCY = Histogram()


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
        self.finish(response_body(message, payload))

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
        body, ttl = b"".join(self._chunks), self.get_query_argument("ttl", None)
        self.reply(*await cache_set(self.backend, key, body, ttl))

    async def get(self, key: str) -> None:
        if not self._finished:
            self.reply(*await cache_get(self.backend, key))

    async def delete(self, key: str) -> None:
        if not self._finished:
            self.reply(*await cache_delete(self.backend, key))

    async def head(self, key: str) -> None:
        """HEAD: the GET's status and headers, no body."""
        await self.get(key)


class HealthHandler(JsonHandler):
    """``/api/health/``: the process is alive (liveness; never asks the backend)."""

    def get(self) -> None:
        self.reply(200, "alive")

    head = get


class ReadyHandler(JsonHandler):
    """``/api/ready/``: 200 when the backend's HEALTH says ``ready``, else 503."""

    async def get(self) -> None:
        try:
            health = await self.backend.client.health()
        except PyCacheError as exc:
            self.reply(503, f"not ready: {translate_error(exc).message}")
            return
        if not isinstance(health, dict):
            raise ApiError(500, "Internal server error", "HEALTH gave %r", health)
        ready = health.get("state") == "ready"
        shown = {k: health[k] for k in ("node_id", "state") if k in health}  # the API's fields
        self.reply(200 if ready else 503, "ready" if ready else "not ready", dumps(shown))

    head = get


class ClusterHandler(JsonHandler):
    """``/api/cluster/``: every node as the backend sees it: state, lag, keys, digest."""

    async def get(self) -> None:
        try:
            cluster = await self.backend.client.cluster()
        except PyCacheError as exc:
            raise translate_error(exc) from exc
        nodes = cluster.get("nodes") if isinstance(cluster, dict) else None
        if not isinstance(nodes, list):
            raise ApiError(500, "Internal server error", "CLUSTER gave %r", cluster)
        for node in nodes:
            if isinstance(node, dict):
                for field in ("node_id", "state", "lag", "keys", "digest"):
                    node.setdefault(field, None)  # a node a peer only heard of
        self.reply(200, "cluster", dumps({"nodes": nodes}))

    head = get


class OpenApiHandler(JsonHandler):
    """``/api/openapi.json``: the OpenAPI 3 document of this API (``docs/openapi.json``)."""

    def get(self) -> None:
        self.finish(openapi_document())

    head = get


@functools.lru_cache(maxsize=1)
def openapi_document() -> bytes:
    """The OpenAPI document shipped as package data (``mesh/roles/openapi.json``)."""
    return importlib.resources.files("mesh.roles").joinpath(OPENAPI_FILE).read_bytes()


class MetricsHandler(tornado.web.RequestHandler):
    """``/metrics``: the process's families in the Prometheus text format."""

    def initialize(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def compute_etag(self) -> str | None:
        return None

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(exposition(self.registry))

    head = get


def http_families() -> Families:
    """The HTTP API's families: responses by status code, and their latency."""
    yield labelled(
        CounterMetricFamily,
        "http_responses",
        "HTTP responses by status code",
        ["code"],
        [((code,), n) for code, n in sorted(RESPONSES.items())],
    )
    yield histogram("http_request_duration_seconds", "Time to answer an HTTP request", LATENCY)


class NotFoundHandler(JsonHandler):
    """Any other path: a JSON 404."""

    def initialize(self) -> None:  # type: ignore[override]
        pass

    def prepare(self) -> None:
        raise ApiError(404, "No such endpoint")


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=bytes_as_text)


def bytes_as_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The Tornado application's access log (see :func:`log_access`)."""
    log_access(
        handler.get_status(),
        handler._request_summary,
        lambda: 1000.0 * handler.request.request_time(),
    )


def log_access(status: int, summary: Callable[[], str], took_ms: Callable[[], float]) -> None:
    """Access log: server errors at INFO, everything else at DEBUG (thousands a second).

    ``summary`` and ``took_ms`` are called only when the line is logged.
    """
    RESPONSES[status] += 1
    took = took_ms()
    LATENCY.observe(took / 1000.0)
    level = logging.INFO if status >= 500 else logging.DEBUG
    if access_log.isEnabledFor(level):
        fields = {"status": status, "duration_ms": round(took, 3)}
        access_log.log(level, "%d %s %.2fms", status, summary(), took, extra=fields)


@functools.lru_cache(maxsize=4)
def http_date(second: int) -> str:
    """The ``Date`` header for ``second``: formatted once a second, not per response."""
    return tornado.httputil.format_timestamp(second)
