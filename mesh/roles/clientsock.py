"""The client's sockets: one DEALER per thread and per process, and client URLs.

A ZeroMQ socket must not be used by two threads at once, and a socket (or a
context) inherited across ``os.fork()`` must not be used at all: the child
has no I/O thread behind it, so a call would wait out its whole timeout, or
forever.  :class:`SocketPool` therefore hands each thread its own socket,
made on the thread's first call, and notices a fork by comparing
``os.getpid()`` with the pid that made its sockets: the child then starts
over with a context and sockets of its own, and leaves the parent's alone
(closing them in the child could hang or disturb the parent's).

URLs (:func:`parse_url`)::

    pycache://host:port[,host:port...][?timeout=S&decode_responses=1
                                        &client_key=PATH&server_key=PATH]
    tcp://host:port[?...]                        the same, one endpoint
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import zmq

from mesh.core.errors import ConfigError, ConnectionFailed
from mesh.roles.clientplane import Credentials, connect_as

REPLY_HWM = 100_000
URL_SCHEMES = ("pycache", "tcp")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def dealer(
    ctx: zmq.Context, endpoints: Sequence[str], credentials: Credentials | None = None
) -> zmq.Socket:
    """A DEALER connected to every endpoint (queues only on live connections)."""
    sock = ctx.socket(zmq.DEALER)
    if credentials is not None:
        connect_as(sock, credentials)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only on live connections
    sock.setsockopt(zmq.RCVHWM, REPLY_HWM)  # room for every reply of a long pipeline
    try:
        for endpoint in endpoints:
            sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        raise ConnectionFailed(f"cannot connect to {endpoint}: {exc}") from exc
    return sock


def credentials_of(
    credentials: Credentials | None, client_key: str | None, server_key: str | bytes | None
) -> Credentials | None:
    """One set of credentials from ``credentials=`` or ``client_key=`` + ``server_key=``."""
    if client_key is None and server_key is None:
        return credentials
    if credentials is not None or client_key is None or server_key is None:
        raise ConfigError("give credentials=, or both client_key= and server_key=")
    return Credentials.load(client_key, server_key)


def endpoints_of(endpoint: str | Sequence[str]) -> list[str]:
    """``endpoint`` as a list of endpoints."""
    return [endpoint] if isinstance(endpoint, str) else list(endpoint)


class SocketPool:
    """One DEALER socket per thread, remade after a fork; thread-safe.

    ``context`` None: the pool makes (and terminates) its own context.  A
    context handed in is used in the process that made the pool only.
    """

    def __init__(
        self,
        endpoints: list[str],
        credentials: Credentials | None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.credentials = credentials
        self._lock = threading.Lock()
        self._given = context
        self._pid = os.getpid()
        self._ctx: zmq.Context = context or zmq.Context()
        self._socks: dict[int, zmq.Socket] = {}  # thread ident -> its socket
        self._left: list[Any] = []  # a parent's sockets and context, kept and never touched
        self.closed = False

    def socket(self) -> zmq.Socket:
        """This thread's socket in this process, made on first use."""
        if self._pid != os.getpid():
            self._after_fork()
        sock = self._socks.get(threading.get_ident())
        if sock is not None:
            return sock
        if self.closed:
            raise ConnectionFailed(f"client to {self.endpoints} is closed")
        with self._lock:
            self._prune()
            sock = dealer(self._ctx, self.endpoints, self.credentials)
            self._socks[threading.get_ident()] = sock
        return sock

    def _after_fork(self) -> None:
        """In a child: start over with a fresh context, leaving the parent's alone."""
        self._left.append((self._ctx, self._socks))
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._ctx, self._socks, self._given = zmq.Context(), {}, None
        self._pid = os.getpid()

    def _prune(self) -> None:
        """Close the sockets of threads that have ended (called under the lock)."""
        alive = {t.ident for t in threading.enumerate()}
        for ident in [i for i in self._socks if i not in alive]:
            self._socks.pop(ident).close(0)

    def close(self) -> None:
        """Close every socket of this process (and the context, when the pool made it)."""
        self.closed = True
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            socks, self._socks = list(self._socks.values()), {}
        for sock in socks:
            sock.close(0)
        if self._given is None:
            self._ctx.term()


def parse_url(url: str) -> tuple[list[str], dict[str, Any]]:
    """``(endpoints, options)`` of a client URL (see the module docstring);
    raises :class:`~mesh.core.errors.ConfigError` (a ValueError) on a bad one."""
    parts = urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise ConfigError(f"a client URL starts with pycache:// or tcp://, not {url!r}")
    hosts = [h for h in parts.netloc.split(",") if h]
    if not hosts or parts.path not in ("", "/"):
        raise ConfigError(f"a client URL is pycache://host:port[,host:port...], not {url!r}")
    endpoints = []
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{host!r} in {url!r} is not host:port")
        endpoints.append(f"tcp://{name}:{port}")
    return endpoints, _url_options(parts.query, url)


def _url_options(query: str, url: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if name == "timeout":
            try:
                options["timeout"] = float(raw)
            except ValueError:
                raise ConfigError(f"timeout={raw!r} in {url!r} is not a number") from None
            if not options["timeout"] > 0:
                raise ConfigError(f"timeout in {url!r} must be > 0 seconds")
        elif name == "decode_responses":
            if raw.lower() not in _TRUE + _FALSE:
                raise ConfigError(f"decode_responses={raw!r} in {url!r} is not a boolean")
            options["decode_responses"] = raw.lower() in _TRUE
        elif name in ("client_key", "server_key"):
            options[name] = raw
        else:
            raise ConfigError(f"unknown option {name!r} in {url!r}")
    return options
