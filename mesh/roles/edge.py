"""The HTTP edge: the seed's REST API on Tornado, forwarding to a balancer or a node.

Endpoints (``docs/api.md`` has every status and body)::

    POST   /api/cache/<key>/[?ttl=S]  body: the JSON value   201 | 400 | 413 | 503
    GET    /api/cache/<key>/                                200 | 404 | 400 | 503
    DELETE /api/cache/<key>/                                200 (missing keys too) | 400 | 503
    GET    /api/health/ (or /api/live/)                     200 while the process runs
    GET    /api/ready/                                      200 when the backend serves, else 503
    GET    /api/cluster/                                    200 every node's state | 503
    GET    /metrics                                         200 Prometheus text format
    GET    /api/openapi.json                                200 the OpenAPI 3 document
    HEAD   on every GET route: the GET's status and headers

Every response body is JSON ``{"message": str, "payload": object}``, errors
included.  What each cache request does, how values are stored and shown,
and how backend errors become statuses live in :mod:`mesh.roles.cacheapi`; this
module serves them over HTTP.

Every handler awaits one request on ONE shared :class:`mesh.roles.client.AsyncClient`
(made on first use, on the running loop), which pipelines concurrent
requests over a single DEALER socket.  The backend is the balancer for
``pycache edge``, or the node's own API endpoint when a node serves HTTP
itself (``pycache node --http-port``).  A 503 carries ``Retry-After: 1``.

Protected mode (:mod:`mesh.roles.protected`): with bearer tokens configured
(``--token-file``), every request but the probes (``/api/health/``,
``/api/live/``, ``/api/ready/``) needs ``Authorization: Bearer <token>``, else
401 with ``WWW-Authenticate: Bearer``; the check runs on the connection, before
the request reaches any handler.  ``--tls-cert``/``--tls-key`` serve HTTPS.

Connection limits (:mod:`mesh.roles.http_limits`): at most ``--max-connections``
open (the longest idle closed to make room), ``--idle-timeout`` for a request's
headers (idle keep-alive and slowloris alike), ``--body-timeout`` for its body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from pathlib import Path

import tornado
import tornado.httputil
import tornado.netutil
import tornado.web
import zmq.asyncio
from prometheus_client import CollectorRegistry
from tornado.log import app_log, gen_log

from mesh.roles import eventloop
from mesh.roles.binding import address_error
from mesh.roles.cacheapi import (
    ApiError,
    Backend,
    cache_delete,
    cache_get,
    cache_set,
    response_body,
)
from mesh.roles.clientplane import Credentials, optional_credentials
from mesh.roles.config import (
    DEFAULT_EDGE_TIMEOUT,
    DEFAULT_HTTP_BODY_TIMEOUT,
    DEFAULT_HTTP_IDLE_TIMEOUT,
    HTTP_PORT_ANY,
    EdgeConfig,
    NodeConfig,
)
from mesh.roles.http_handlers import (
    JSON_TYPE,
    CacheHandler,
    ClusterHandler,
    HealthHandler,
    MetricsHandler,
    NotFoundHandler,
    OpenApiHandler,
    ReadyHandler,
    http_date,
    http_families,
    log_access,
    log_request,
)
from mesh.roles.http_limits import CappedHTTPServer, effective_max_connections
from mesh.roles.metrics import registry as metrics_registry
from mesh.roles.protected import (
    bearer_ok,
    is_open_path,
    load_tokens,
    tls_context,
    warn_if_open,
)
from mesh.roles.tuning import raise_fd_limit, tune_gc
from mesh.storage.datadir import write_atomically

log = logging.getLogger(__name__)


#: ``/api/cache/<key>/`` with a plain key (printable ASCII, no escapes) and no query string.
_PLAIN_CACHE_PATH = re.compile(r"/api/cache/([!-$&-.0->@-~]+)/?")
_FAST_METHODS = frozenset(("GET", "POST", "DELETE"))
_SERVER = f"TornadoServer/{tornado.version}"
_STATUS_LINES = {
    code: tornado.httputil.ResponseStartLine("HTTP/1.1", code, HTTPStatus(code).phrase)
    for code in (200, 201, 400, 401, 404, 413, 500, 503)
}
_UNAUTHORIZED = "Unauthorized: send Authorization: Bearer <token>"


class EdgeServer(tornado.httputil.HTTPServerConnectionDelegate):
    """The HTTP server's delegate: the cache's hot requests here, all else to :class:`EdgeApp`.

    A GET, POST or DELETE of ``/api/cache/<key>/`` with a plain key, no query
    string and a body within the limit (by Content-Length; not chunked) is
    answered by :class:`_CacheRequest` straight on the connection: the same
    operations, statuses and bodies as :class:`CacheHandler`, without a
    RequestHandler (which costs more CPU than the backend round trip).  Any
    other request (escaped keys, ``?ttl=``, chunked or oversized bodies,
    other methods and paths) goes to the Tornado application as it is.
    """

    def __init__(self, app: EdgeApp) -> None:
        self.app = app

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return _CacheRequest(self.app, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class _CacheRequest(tornado.httputil.HTTPMessageDelegate):
    """One request: answered here when it is a plain cache request, else by the app."""

    def __init__(
        self, app: EdgeApp, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> None:
        self.app, self.server_conn, self.conn = app, server_conn, request_conn
        self.other: tornado.httputil.HTTPMessageDelegate | None = None
        self.chunks: list[bytes] = []
        self.method = self.key = self.uri = ""
        self.started = 0.0
        self.denied = False  # no valid token: answered 401 once the request is in

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, tornado.httputil.RequestStartLine)
        self.app.got_headers(self.server_conn)
        tokens = self.app.tokens
        if (
            tokens
            and not is_open_path(start_line.path)
            and not bearer_ok(headers.get("Authorization"), tokens)
        ):
            self.method, self.uri, self.denied = start_line.method, start_line.path, True
            self.started = time.perf_counter()
            return None
        key = self._plain_key(start_line, headers)
        if key is None:
            self.other = self.app.start_request(self.server_conn, self.conn)
            return self.other.headers_received(start_line, headers)
        self.method, self.key, self.uri = start_line.method, key, start_line.path
        self.started = time.perf_counter()
        return None

    def _plain_key(
        self, start_line: tornado.httputil.RequestStartLine, headers: tornado.httputil.HTTPHeaders
    ) -> str | None:
        if start_line.method not in _FAST_METHODS or "Transfer-Encoding" in headers:
            return None
        length = headers.get("Content-Length")
        if length is not None and not (length.isdigit() and int(length) <= self.app.max_body_bytes):
            return None
        match = _PLAIN_CACHE_PATH.fullmatch(start_line.path)
        return None if match is None else match[1]

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.other is not None:
            return self.other.data_received(chunk)
        if not self.denied:
            self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.other is not None:
            self.other.finish()
        elif self.denied:
            self._write(401, _UNAUTHORIZED, "{}")
        else:
            asyncio.get_running_loop().create_task(self._answer())

    def on_connection_close(self) -> None:
        if self.other is not None:
            self.other.on_connection_close()
        # else: the answer is still written when it comes, to a closed stream: a no-op

    async def _answer(self) -> None:
        backend, key = self.app.backend, self.key
        try:
            if self.method == "GET":
                answer = await cache_get(backend, key)
            elif self.method == "POST":
                answer = await cache_set(backend, key, b"".join(self.chunks), None)
            else:
                answer = await cache_delete(backend, key)
        except ApiError as exc:
            if exc.log_message:
                gen_log.warning(
                    "%d %s: " + exc.log_message, exc.status_code, self._summary(), *exc.args
                )
            answer = (exc.status_code, exc.message, "{}")
        except Exception:
            app_log.exception("Uncaught exception %s", self._summary())
            answer = (500, "Internal server error", "{}")
        self._write(*answer)

    def _write(self, status: int, message: str, payload: str) -> None:
        body = response_body(message, payload)
        headers = tornado.httputil.HTTPHeaders(
            {
                "Server": _SERVER,
                "Content-Type": JSON_TYPE,
                "Date": http_date(int(time.time())),
                "Content-Length": str(len(body)),
            }
        )
        if status == 503:
            headers["Retry-After"] = "1"
        elif status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="pycache"'
        # HEAD (only ever refused here): the headers of the answer, no body
        self.conn.write_headers(
            _STATUS_LINES[status], headers, None if self.method == "HEAD" else body
        )
        self.conn.finish()
        log_access(status, self._summary, lambda: 1000.0 * (time.perf_counter() - self.started))

    def _summary(self) -> str:
        remote_ip = getattr(getattr(self.conn, "context", None), "remote_ip", None)
        return f"{self.method} {self.uri} ({remote_ip})"


# --------------------------------------------------------------------------- app and server


class EdgeApp(tornado.web.Application):
    """The Tornado application; ``backend`` is the shared client it forwards to.

    ``tokens``: the bearer tokens a request needs (none: no token needed).
    """

    def __init__(
        self,
        backend: Backend,
        max_body_bytes: int,
        tokens: Sequence[bytes] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.backend = backend
        self.max_body_bytes = max_body_bytes
        self.tokens = tuple(tokens)
        #: told of each request whose headers are in (:meth:`CappedHTTPServer.got_headers`)
        self.got_headers: Callable[[object], None] = lambda server_conn: None
        common = {"backend": backend}
        registry = registry or metrics_registry(http_families)
        super().__init__(
            [
                (
                    r"/api/cache/([^/]+)/?",
                    CacheHandler,
                    {**common, "max_body_bytes": max_body_bytes},
                ),
                (r"/api/(?:health|live)/?", HealthHandler, common),
                (r"/api/ready/?", ReadyHandler, common),
                (r"/api/cluster/?", ClusterHandler, common),
                (r"/metrics", MetricsHandler, {"registry": registry}),
                (r"/api/openapi\.json", OpenApiHandler, common),
            ],
            default_handler_class=NotFoundHandler,
            log_function=log_request,
        )


def make_app(
    backend_endpoint: str | Sequence[str],
    *,
    timeout: float,
    max_body_bytes: int,
    context: zmq.asyncio.Context | None = None,
    tokens: Sequence[bytes] = (),
    credentials: Credentials | None = None,
    registry: CollectorRegistry | None = None,
) -> EdgeApp:
    """The HTTP API forwarding to ``backend_endpoint`` (a balancer's front or a node's API).

    ``timeout`` bounds every backend request (seconds); ``context`` lets a node
    share its own ZeroMQ context (so ``inproc://`` endpoints work too);
    ``tokens`` are the bearer tokens requests need (none: open);
    ``credentials`` the CURVE key toward a backend that requires one;
    ``registry`` what ``/metrics`` serves (default: the HTTP API's families).
    """
    backend = Backend(backend_endpoint, timeout, context, credentials)
    return EdgeApp(backend, max_body_bytes, tokens, registry)


class HttpServer:
    """A listening HTTP API: ``url`` once bound; ``await stop()`` closes it all.

    ``ssl_options`` (an :class:`ssl.SSLContext`) serves HTTPS; ``max_connections``
    (0: the open-file limit's), ``idle_timeout`` and ``body_timeout``: see
    :mod:`mesh.roles.http_limits`.
    """

    def __init__(
        self,
        app: EdgeApp,
        host: str,
        port: int,
        ssl_options: ssl.SSLContext | None = None,
        *,
        max_connections: int = 0,
        idle_timeout: float = DEFAULT_HTTP_IDLE_TIMEOUT,
        body_timeout: float = DEFAULT_HTTP_BODY_TIMEOUT,
    ) -> None:
        self.app = app
        self.server = CappedHTTPServer(
            EdgeServer(app),
            max_body_size=app.max_body_bytes,
            ssl_options=ssl_options,
            idle_connection_timeout=idle_timeout,
            body_timeout=body_timeout,
        )
        self.server.max_connections = effective_max_connections(max_connections)
        log.info(
            "HTTP: at most %d connections, idle timeout %g s, body timeout %g s",
            self.server.max_connections,
            idle_timeout,
            body_timeout,
        )
        app.got_headers = self.server.got_headers
        sockets = tornado.netutil.bind_sockets(port, host)
        self.server.add_sockets(sockets)
        self.port: int = sockets[0].getsockname()[1]
        family = sockets[0].family
        scheme = "http" if ssl_options is None else "https"
        self.url = (
            f"{scheme}://[{host}]:{self.port}"
            if family == socket.AF_INET6
            else f"{scheme}://{host}:{self.port}"
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
    token_file: str = "",
    tls_cert: str = "",
    tls_key: str = "",
    credentials: Credentials | None = None,
    max_connections: int = 0,
    idle_timeout: float = DEFAULT_HTTP_IDLE_TIMEOUT,
    body_timeout: float = DEFAULT_HTTP_BODY_TIMEOUT,
    registry: CollectorRegistry | None = None,
) -> HttpServer:
    """Start the HTTP API on ``host:port`` (0: the OS picks) in the running loop.

    ``token_file``: require its bearer tokens; ``tls_cert``/``tls_key``: serve
    HTTPS; ``credentials``: the CURVE key toward the backend (see :func:`make_app`);
    ``max_connections``, ``idle_timeout``, ``body_timeout``: see :class:`HttpServer`;
    ``registry``: see :func:`make_app`.
    """
    app = make_app(
        backend_endpoint,
        timeout=timeout,
        max_body_bytes=max_body_bytes,
        context=context,
        tokens=load_tokens(token_file) if token_file else (),
        credentials=credentials,
        registry=registry,
    )
    ssl_options = tls_context(tls_cert, tls_key) if tls_cert else None
    try:
        return HttpServer(
            app,
            host,
            port,
            ssl_options,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            body_timeout=body_timeout,
        )
    except OSError as exc:
        raise address_error("http", f"{host}:{port}", exc) from None


def serve_node_http(
    config: NodeConfig,
    backend: str,
    context: zmq.asyncio.Context,
    registry: CollectorRegistry | None = None,
) -> HttpServer:
    """A node's own HTTP API (``--http-port``), in its loop, through its api socket.

    Requests go over ZeroMQ to the node's ROUTER like any client's, so writes
    take the same group-commit path; ``/api/ready/`` is 503 until the node is
    ready (HEALTH is answered in every state).
    """
    port = 0 if config.http_port == HTTP_PORT_ANY else config.http_port
    http = serve(
        backend,
        config.http_host,
        port,
        timeout=max(DEFAULT_EDGE_TIMEOUT, config.ack_timeout_ms / 1000 + 1),
        max_body_bytes=config.limits.request_bytes,
        context=context,
        token_file=config.token_file,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        max_connections=config.http_max_connections,
        idle_timeout=config.http_idle_timeout,
        body_timeout=config.http_body_timeout,
        registry=registry,
    )
    warn_if_open(config.http_host, config.token_file, "the HTTP API")
    log.info("node %s serves HTTP on %s", config.node_id, http.url)
    return http


def run_edge(config: EdgeConfig) -> None:
    """Run ``pycache edge`` until SIGTERM or SIGINT; returns after a clean stop.

    With ``config.status_file`` set, writes ``{"pid", "http", "backend"}`` there
    once listening (the bound port, when the OS picked it).
    """
    config.validate()
    raise_fd_limit()
    tune_gc()

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
            token_file=config.token_file,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            credentials=optional_credentials(config.client_key, config.server_key),
            max_connections=config.max_connections,
            idle_timeout=config.idle_timeout,
            body_timeout=config.body_timeout,
        )
        warn_if_open(config.host, config.token_file, "the edge")
        try:
            log.info("edge on %s forwarding to %s", server.url, ", ".join(config.backend))
            if config.status_file:
                status = {"pid": os.getpid(), "http": server.url, "backend": list(config.backend)}
                write_atomically(
                    Path(config.status_file), json.dumps(status).encode(), durable=False
                )
            await stopped.wait()
        finally:
            await server.stop()
            log.info("edge stopped")

    eventloop.run(main)
