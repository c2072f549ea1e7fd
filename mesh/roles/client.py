"""The Python client, in the shape redis-py users know (asyncio: :mod:`.asyncclient`).

>>> from mesh.roles.client import Client
>>> with Client("tcp://127.0.0.1:7001") as cache:
...     cache.set("greeting", "hello", ttl=60)
...     cache.get("greeting")            # b'hello'
...     with cache.pipeline() as pipe:   # many requests in flight, one round trip
...         pipe.set("a", "1").set("b", "2").mget("a", "b")
...         pipe.execute()               # [True, True, [b'1', b'2']]

Every call has a deadline (``timeout`` seconds, per client or per call) and
raises :class:`mesh.core.errors.Timeout` when it passes; an error reply raises the
typed exception for its code (:func:`mesh.core.wire.error_for`).  No zmq or msgpack
exception escapes: they are translated at this boundary.

On loopback no credentials are needed.  A node or balancer that admits only
known clients (``--client-keys``, see :mod:`mesh.roles.clientplane`) needs a
CURVE key: ``Client(endpoint, client_key="alice.key_secret",
server_key="server.key")`` (``server_key`` may also be the key in Z85), or
``credentials=Credentials.load(...)``.  A client without an admitted key gets
no connection, so its calls time out.

One :class:`Client` may be shared by many threads (each gets its own socket)
and survives ``os.fork()`` (the child gets fresh sockets): see
:mod:`mesh.roles.clientsock`, which also reads ``Client.from_url`` URLs.

Values go out as bytes (``str`` is encoded as UTF-8, numbers as their decimal
text, as redis-py does) and come back as ``bytes`` (``str`` with
``decode_responses=True``).  TTLs are in seconds
(``ttl``, ``expire``) or milliseconds (``px``, ``pexpire``, ``pttl``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import zmq

from mesh.core import wire
from mesh.core.errors import ConnectionFailed, ProtocolError, PyCacheError, Timeout
from mesh.roles.client_keyspace import KeyspaceMethods, ScanIterMethod
from mesh.roles.clientplane import Credentials
from mesh.roles.clientsock import SocketPool, credentials_of, endpoints_of, parse_url
from mesh.roles.config import DEFAULT_API

DEFAULT_TIMEOUT = 5.0

Value = bytes | str | int | float


def _value(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    raise ProtocolError(wire.E_BAD_ARGS, f"a value must be bytes, str or a number, not {value!r}")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _seconds(ms: int) -> int:
    return ms if ms < 0 else (ms + 500) // 1000


def _meta(reply: list | None) -> tuple[bytes, int, int] | None:
    return None if reply is None else (reply[0], reply[1], reply[2])


def _w(w: int | str | None) -> list[dict[str, Any]]:
    return [] if w is None else [{"w": w}]


def _keys(keys: str | Iterable[str], more: tuple[str, ...]) -> list[str]:
    return [keys, *more] if isinstance(keys, str) else [*keys, *more]


class CommandMethods(KeyspaceMethods):
    """The op methods shared by :class:`Client`, :class:`AsyncClient` and pipelines.

    Each method builds one request and hands it to ``_call``, which sends it
    now (clients) or queues it (pipelines); ``convert`` shapes the result.
    """

    #: Sends the request now (clients) or queues it (pipelines); set by each subclass.
    _call: Callable[..., Any]

    def ping(self, message: Value | None = None) -> Any:
        """PING: ``"PONG"``, or ``message`` echoed back."""
        return self._call("PING") if message is None else self._call("PING", _value(message))

    def get(self, key: str) -> Any:
        """The value of ``key`` as bytes, or None."""
        return self._call("GET", key)

    def set(
        self,
        key: str,
        value: Value,
        ttl: float | None = None,
        px: int | None = None,
        nx: bool = False,
        xx: bool = False,
        w: int | str | None = None,
    ) -> Any:
        """Store ``value``; ``ttl`` seconds or ``px`` ms; ``nx``/``xx`` as in Redis.

        ``w`` asks for the write to be logged by that many nodes (or
        ``"quorum"`` / ``"all"``) before the reply; the node's default else.
        Returns True when set, False when the NX/XX condition was not met.
        """
        options: dict[str, Any] = {} if w is None else {"w": w}
        if ttl is not None:
            options["ttl_ms"] = _ms(ttl)
        if px is not None:
            options["ttl_ms"] = px
        if nx:
            options["nx"] = True
        if xx:
            options["xx"] = True
        if options:
            return self._call("SET", key, _value(value), options)
        return self._call("SET", key, _value(value))

    def delete(self, *keys: str, w: int | str | None = None) -> Any:
        """Delete keys; returns how many existed."""
        return self._call("DEL", *keys, *_w(w))

    def expire(self, key: str, seconds: float, w: int | str | None = None) -> Any:
        """Give ``key`` a TTL in seconds; False when the key does not exist."""
        return self._call("EXPIRE", key, _ms(seconds), *_w(w))

    def pexpire(self, key: str, ms: int, w: int | str | None = None) -> Any:
        """Give ``key`` a TTL in milliseconds; False when the key does not exist."""
        return self._call("EXPIRE", key, ms, *_w(w))

    def persist(self, key: str, w: int | str | None = None) -> Any:
        """Remove the TTL of ``key``; True when it had one."""
        return self._call("PERSIST", key, *_w(w))

    def ttl(self, key: str) -> Any:
        """Seconds left (rounded), -1 for no TTL, -2 for no such key."""
        return self._call("TTL", key, convert=_seconds)

    def pttl(self, key: str) -> Any:
        """Milliseconds left, -1 for no TTL, -2 for no such key."""
        return self._call("TTL", key)

    def mget(self, keys: str | Iterable[str], *more: str) -> Any:
        """Values of several keys (None for missing ones), in order."""
        return self._call("MGET", *_keys(keys, more))

    def mset(self, mapping: Mapping[str, Value], w: int | str | None = None) -> Any:
        """Set several keys at once (no TTL)."""
        args: list[Any] = []
        for key, value in mapping.items():
            args += [key, _value(value)]
        return self._call("MSET", *args, *_w(w))

    def stats(self) -> Any:
        """The node's STATS map."""
        return self._call("STATS")

    def get_meta(self, key: str) -> Any:
        """``(value, ttl_ms, updated_ms)`` of ``key`` or None; ttl_ms -1 means no TTL."""
        return self._call("GETMETA", key, convert=_meta)

    def health(self) -> Any:
        """The node's HEALTH map: ``node_id`` and ``state``."""
        return self._call("HEALTH")

    def cluster(self) -> Any:
        """Every node as the server sees it: ``{"nodes": [{node_id, state, ...}]}``."""
        return self._call("CLUSTER")

    # -- counters (issue 18) ------------------------------------------------

    def incr(self, key: str, amount: int = 1, w: int | str | None = None) -> Any:
        """Add ``amount`` to the counter ``key`` (missing: 0) and return the new value.

        Increments on different nodes at the same time all count (a merged
        counter, docs/counters.md).  Raises :class:`~mesh.core.errors.NotInteger`
        when the key holds a value that is not an int64, or on overflow.
        """
        return self._call("INCRBY", key, amount, *_w(w))

    def decr(self, key: str, amount: int = 1, w: int | str | None = None) -> Any:
        """Subtract ``amount`` from the counter ``key``; the new value (see :meth:`incr`)."""
        return self._call("INCRBY", key, -amount, *_w(w))


def _result(
    code: int, result: Any, convert: Callable[[Any], Any] | None, decode: bool = False
) -> Any:
    if code != wire.OK:
        raise wire.error_for(code, str(result))
    if convert is not None:
        result = convert(result)
    return _decoded(result) if decode else result


def _decoded(result: Any) -> Any:
    """``result`` with every bytes in it as str (UTF-8): ``decode_responses=True``."""
    if isinstance(result, bytes):
        return result.decode()
    if isinstance(result, (list, tuple)):
        return type(result)(map(_decoded, result))
    if isinstance(result, dict):
        return {key: _decoded(value) for key, value in result.items()}
    return result


class Client(ScanIterMethod, CommandMethods):
    """Synchronous client; safe to share between threads and across ``os.fork()``.

    Each thread talks over its own DEALER socket (connected to every
    endpoint), made on its first call; a child process after a fork gets a
    fresh context and sockets on its first call (:mod:`mesh.roles.clientsock`).
    ``decode_responses=True`` returns values as ``str`` (UTF-8) instead of
    bytes, as redis-py's option does (and as there, a value that is not UTF-8
    raises UnicodeDecodeError).  :meth:`from_url` builds one from a URL.
    :meth:`close` it once no other thread uses it.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str] = DEFAULT_API,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        context: zmq.Context | None = None,
        credentials: Credentials | None = None,
        client_key: str | None = None,
        server_key: str | bytes | None = None,
        decode_responses: bool = False,
    ) -> None:
        self.endpoints = endpoints_of(endpoint)
        self.timeout = timeout
        self.decode_responses = decode_responses
        self.credentials = credentials_of(credentials, client_key, server_key)
        self._pool = SocketPool(self.endpoints, self.credentials, context)
        self._ids = itertools.count(1)  # next() on a count is atomic: ids are unique

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Client:
        """A client from ``pycache://host:port[,host:port...][?timeout=S&decode_responses=1
        &client_key=PATH&server_key=PATH]`` (or ``tcp://host:port?...``); keyword
        ``options`` override the URL's.  A bad URL raises ConfigError (a ValueError)."""
        endpoints, found = parse_url(url)
        return cls(endpoints, **{**found, **options})

    def _call(self, op: str, *args: Any, convert: Callable[[Any], Any] | None = None) -> Any:
        ((code, result),) = self.execute_many([(op, args)], self.timeout)
        return _result(code, result, convert, self.decode_responses)

    def execute_many(
        self, requests: Sequence[tuple[str, tuple]], timeout: float | None = None
    ) -> list[tuple[int, Any]]:
        """Send every request at once, then collect ``(code, result)`` for each, in order."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        sock = self._pool.socket()
        ids = []
        try:
            for op, args in requests:
                request_id = next(self._ids)
                self._send(sock, wire.encode_request(request_id, op, *args), deadline)
                ids.append(request_id)
            replies = self._receive(sock, set(ids), deadline)
        except zmq.ZMQError as exc:
            raise ConnectionFailed(f"socket error talking to {self.endpoints}: {exc}") from exc
        return [replies[i] for i in ids]

    def _send(self, sock: zmq.Socket, frame: bytes, deadline: float) -> None:
        while True:
            try:
                sock.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLOUT):
                    raise Timeout(f"no endpoint of {self.endpoints} took the request") from None

    def _receive(
        self, sock: zmq.Socket, waiting: set[int], deadline: float
    ) -> dict[int, tuple[int, Any]]:
        replies: dict[int, tuple[int, Any]] = {}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                raise Timeout(
                    f"{len(waiting)} of {len(waiting) + len(replies)} replies missing "
                    f"from {self.endpoints} after the deadline"
                )
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                request_id, code, result = wire.decode_reply(frame)
                if request_id in waiting:  # anything else is a late reply to a timed-out call
                    waiting.discard(request_id)
                    replies[request_id] = (code, result)
        return replies

    def pipeline(self) -> Pipeline:
        """A pipeline: queue calls, then ``execute()`` sends them all at once."""
        return Pipeline(self)

    def close(self) -> None:
        """Close every thread's socket (and the context, when the client made it);
        call it once no other thread uses the client.  Later calls raise ConnectionFailed."""
        self._pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pipeline(CommandMethods):
    """Queues calls on a :class:`Client` and runs them with every request in flight."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._queue: list[tuple[str, tuple, Callable[[Any], Any] | None]] = []

    def _call(self, op: str, *args: Any, convert: Callable[[Any], Any] | None = None) -> Any:
        self._queue.append((op, args, convert))
        return self

    def execute(self, raise_on_error: bool = True, timeout: float | None = None) -> list[Any]:
        """Send every queued request, wait for all replies, return results in order.

        With ``raise_on_error`` False, a failed request's exception stands in
        its place in the list instead of being raised.
        """
        queue, self._queue = self._queue, []
        replies = self._client.execute_many([(op, args) for op, args, _ in queue], timeout)
        results: list[Any] = []
        for (code, result), (_, _, convert) in zip(replies, queue, strict=True):
            try:
                results.append(_result(code, result, convert, self._client.decode_responses))
            except PyCacheError as exc:
                if raise_on_error:
                    raise
                results.append(exc)
        return results

    def __len__(self) -> int:
        return len(self._queue)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue = []
