"""The HTTP API's connection limits: a cap on open connections, the accept loop, timeouts.

:class:`CappedHTTPServer` is Tornado's ``HTTPServer`` with an accept loop of
its own, so that running out of file descriptors never spins the process:

- At most ``max_connections`` connections are open (``--max-connections``;
  default :func:`default_max_connections`: the open-file limit minus
  :data:`FD_RESERVE` for ZeroMQ, the log and the data files).  A connection
  that comes in at the cap first closes the connections that wait longest
  for a request's headers (idle keep-alive ones, or ones sending headers
  slowly), as nginx reuses its idle connections; when every open connection
  has a request in progress, the new one is accepted and closed at once.
- ``accept()`` failing for want of files (EMFILE, ENFILE, ENOBUFS, ENOMEM)
  closes waiting connections the same way, or else pauses accepting for
  :data:`ACCEPT_PAUSE_S`; it is logged as one warning (repeats are held back
  by :class:`mesh.roles.tuning.RepeatFilter`), never as a traceback per try.
- ``idle_timeout``: a connection is closed when a request's headers are not
  complete that many seconds after it began waiting for them (Tornado's
  ``idle_connection_timeout``, which is also its header timeout): an idle
  keep-alive connection, and a client that never finishes its headers
  (slowloris), however slowly it drips them.
- ``body_timeout``: a request's body must arrive within that many seconds
  of its headers, else the connection is closed.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
from collections.abc import Iterable
from itertools import islice
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.iostream
from tornado.ioloop import IOLoop

log = logging.getLogger("mesh.roles.edge")

#: file descriptors left for ZeroMQ, the log and the data files below the open-file limit
FD_RESERVE = 128
#: how long accepting pauses when ``accept()`` finds no file descriptor and nothing to close
ACCEPT_PAUSE_S = 0.1
#: most connections taken per readiness event of a listening socket (Tornado's too)
ACCEPT_BATCH = 128
#: waiting connections closed at once when ``accept()`` finds no file descriptor (nginx: 32)
EVICT_BATCH = 16
_OUT_OF_FILES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def default_max_connections() -> int:
    """The open-file soft limit minus :data:`FD_RESERVE` (at least 16)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - FD_RESERVE)


def effective_max_connections(configured: int) -> int:
    """``configured`` (0: the default), lowered with a warning to what the file limit allows."""
    allowed = default_max_connections()
    if not configured:
        return allowed
    if configured > allowed:
        log.warning(
            "max-connections %d lowered to %d: the open-file limit is %d",
            configured,
            allowed,
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        return allowed
    return configured


class CappedHTTPServer(tornado.httpserver.HTTPServer):
    """An ``HTTPServer`` with at most ``max_connections`` open; see the module docstring.

    ``got_headers(server_conn)`` must be called by the request delegate when a
    request's headers are in: from then until the next request begins, the
    connection is busy and is not closed to make room.
    """

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        """``HTTPServer``'s arguments; then set ``max_connections`` (Tornado's
        ``idle_connection_timeout`` and ``body_timeout`` are the timeouts)."""
        super().initialize(*args, **kwargs)
        self.max_connections = default_max_connections()
        self.open: set[tornado.iostream.IOStream] = set()
        #: connections waiting for a request's headers, longest waiting first
        self.waiting: dict[tornado.iostream.IOStream, None] = {}
        self.refused = 0
        self.evicted = 0
        self._listeners: list[socket.socket] = []
        self._closed = False

    # ------------------------------------------------------------------ accounting
    # Connections are known by their streams (``HTTP1ServerConnection.stream``).

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple) -> None:
        self.open.add(stream)
        self.waiting[stream] = None
        super().handle_stream(stream, address)

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        self.waiting[server_conn.stream] = None  # type: ignore[attr-defined]
        return super().start_request(server_conn, request_conn)

    def got_headers(self, server_conn: object) -> None:
        """A request's headers are in: ``server_conn`` is busy until its next request."""
        self.waiting.pop(server_conn.stream, None)  # type: ignore[attr-defined]

    def on_close(self, server_conn: object) -> None:
        stream = server_conn.stream  # type: ignore[attr-defined]
        self.open.discard(stream)
        self.waiting.pop(stream, None)
        super().on_close(server_conn)

    def evict(self, count: int) -> int:
        """Close up to ``count`` connections that wait longest for headers; how many."""
        victims = list(islice(self.waiting, count))
        for stream in victims:
            del self.waiting[stream]
            self.open.discard(stream)
            stream.close()  # frees its descriptor now; its request loop then ends
        self.evicted += len(victims)
        return len(victims)

    # ------------------------------------------------------------------ accepting

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._listeners.append(sock)
            self._watch(sock)

    def _watch(self, sock: socket.socket) -> None:
        if not self._closed:
            IOLoop.current().add_handler(sock, self._accept, IOLoop.READ)

    def _accept(self, sock: Any, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._closed:
                return
            over = len(self.open) - self.max_connections
            if over >= 0 and self.evict(over + 1):
                log.warning(
                    "%d connections open (--max-connections): closed the longest idle",
                    self.max_connections,
                )
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_FILES and self.evict(EVICT_BATCH):
                    log.warning("accept: %s; closed the longest idle connections", exc)
                    continue
                log.warning("accept: %s; accepting again in %g s", exc, ACCEPT_PAUSE_S)
                IOLoop.current().remove_handler(sock)
                IOLoop.current().call_later(ACCEPT_PAUSE_S, self._watch, sock)
                return
            if len(self.open) >= self.max_connections:
                connection.close()
                self.refused += 1
                log.warning(
                    "connection refused: all %d connections (--max-connections) have a request"
                    " in progress",
                    self.max_connections,
                )
                continue
            self._handle_connection(connection, address)

    def stop(self) -> None:
        """Stop listening (the open connections stay until closed)."""
        if not self._closed:
            self._closed = True
            for sock in self._listeners:
                IOLoop.current().remove_handler(sock)
                sock.close()
        super().stop()
