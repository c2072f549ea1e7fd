"""Python clients, sync and asyncio, in the shape redis-py users know.

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

Values go out as bytes (``str`` is encoded as UTF-8, numbers as their decimal
text, as redis-py does) and come back as ``bytes``.  TTLs are in seconds
(``ttl``, ``expire``) or milliseconds (``px``, ``pexpire``, ``pttl``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import zmq
import zmq.asyncio

from mesh.core import wire
from mesh.core.errors import ConnectionFailed, ProtocolError, PyCacheError, Timeout
from mesh.roles.client_keyspace import KeyspaceMethods, ScanIterMethod
from mesh.roles.clientplane import Credentials, connect_as
from mesh.roles.config import DEFAULT_API
from mesh.roles.zsock import drain, send_frames, socket_events, socket_fd

DEFAULT_TIMEOUT = 5.0
REPLY_HWM = 100_000
DRAIN_MAX = 1024  # replies taken per drain call
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)

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


def _result(code: int, result: Any, convert: Callable[[Any], Any] | None) -> Any:
    if code != wire.OK:
        raise wire.error_for(code, str(result))
    return convert(result) if convert is not None else result


def _credentials(
    credentials: Credentials | None, client_key: str | None, server_key: str | bytes | None
) -> Credentials | None:
    """One set of credentials from ``credentials=`` or ``client_key=`` + ``server_key=``."""
    if client_key is None and server_key is None:
        return credentials
    if credentials is not None or client_key is None or server_key is None:
        raise ValueError("give credentials=, or both client_key= and server_key=")
    return Credentials.load(client_key, server_key)


def _dealer(
    ctx: zmq.Context, endpoints: Sequence[str], credentials: Credentials | None = None
) -> zmq.Socket:
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


def _endpoints(endpoint: str | Sequence[str]) -> list[str]:
    return [endpoint] if isinstance(endpoint, str) else list(endpoint)


class Client(ScanIterMethod, CommandMethods):
    """Synchronous client over one DEALER socket connected to every endpoint."""

    def __init__(
        self,
        endpoint: str | Sequence[str] = DEFAULT_API,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        context: zmq.Context | None = None,
        credentials: Credentials | None = None,
        client_key: str | None = None,
        server_key: str | bytes | None = None,
    ) -> None:
        self.endpoints = _endpoints(endpoint)
        self.timeout = timeout
        self.credentials = _credentials(credentials, client_key, server_key)
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._sock = _dealer(self._ctx, self.endpoints, self.credentials)
        self._ids = itertools.count(1)

    def _call(self, op: str, *args: Any, convert: Callable[[Any], Any] | None = None) -> Any:
        ((code, result),) = self.execute_many([(op, args)], self.timeout)
        return _result(code, result, convert)

    def execute_many(
        self, requests: Sequence[tuple[str, tuple]], timeout: float | None = None
    ) -> list[tuple[int, Any]]:
        """Send every request at once, then collect ``(code, result)`` for each, in order."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        ids = []
        try:
            for op, args in requests:
                request_id = next(self._ids)
                self._send(wire.encode_request(request_id, op, *args), deadline)
                ids.append(request_id)
            replies = self._receive(set(ids), deadline)
        except zmq.ZMQError as exc:
            raise ConnectionFailed(f"socket error talking to {self.endpoints}: {exc}") from exc
        return [replies[i] for i in ids]

    def _send(self, frame: bytes, deadline: float) -> None:
        while True:
            try:
                self._sock.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or not self._sock.poll(int(left * 1000) + 1, zmq.POLLOUT):
                    raise Timeout(f"no endpoint of {self.endpoints} took the request") from None

    def _receive(self, waiting: set[int], deadline: float) -> dict[int, tuple[int, Any]]:
        replies: dict[int, tuple[int, Any]] = {}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                raise Timeout(
                    f"{len(waiting)} of {len(waiting) + len(replies)} replies missing "
                    f"from {self.endpoints} after the deadline"
                )
            while True:
                try:
                    frame = self._sock.recv(zmq.NOBLOCK)
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
        """Close the socket (and the context, when the client made it)."""
        self._sock.close(0)
        if self._own_ctx:
            self._ctx.term()

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
                results.append(_result(code, result, convert))
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


class AsyncClient(CommandMethods):
    """asyncio client: every call is a coroutine; concurrent calls pipeline.

    Requests go out on the raw socket without blocking.  The client watches
    the socket's ZMQ_FD itself: whenever it fires, and after every send, it
    drains the replies waiting and completes each call's future by request
    id.  (ZMQ_FD is edge-triggered and a send may use up its edge, hence the
    check after sending.)  No task or ``wait_for`` per call: a timer handle
    bounds each one.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str] = DEFAULT_API,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        context: zmq.asyncio.Context | None = None,
        credentials: Credentials | None = None,
        client_key: str | None = None,
        server_key: str | bytes | None = None,
    ) -> None:
        self.endpoints = _endpoints(endpoint)
        self.timeout = timeout
        self.credentials = _credentials(credentials, client_key, server_key)
        self._own_ctx = context is None
        self._ctx = context or zmq.asyncio.Context()
        self._sock = _dealer(self._ctx, self.endpoints, self.credentials)
        self._raw: zmq.Socket = zmq.Socket.shadow(self._sock.underlying)
        self._fd = socket_fd(self._raw)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._room: list[asyncio.Future] = []  # senders waiting for the socket to take more
        self._loop: asyncio.AbstractEventLoop | None = None  # whose reader watches ZMQ_FD

    def _call(self, op: str, *args: Any, convert: Callable[[Any], Any] | None = None) -> Any:
        return self._request(op, args, convert)

    async def _request(self, op: str, args: tuple, convert: Callable[[Any], Any] | None) -> Any:
        loop = self._watch()
        request_id = next(self._ids)
        frame = wire.encode_request(request_id, op, *args)
        future = loop.create_future()
        self._waiting[request_id] = future
        timer = loop.call_later(self.timeout, self._expire, future)
        try:
            await self._send(frame, loop, future)
            code, result = await future
        except zmq.ZMQError as exc:
            raise ConnectionFailed(f"socket error talking to {self.endpoints}: {exc}") from exc
        finally:
            timer.cancel()
            self._waiting.pop(request_id, None)
        return _result(code, result, convert)

    def _watch(self) -> asyncio.AbstractEventLoop:
        """The running loop, watching this socket's ZMQ_FD (set up on first use)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._unwatch()
            loop.add_reader(self._fd, self._on_events)
            self._loop = loop
        return loop

    def _unwatch(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None

    async def _send(
        self, frame: bytes, loop: asyncio.AbstractEventLoop, reply: asyncio.Future
    ) -> None:
        """Send ``frame`` now, or once the socket has room (no live peer yet, or HWM)."""
        while True:
            try:
                send_frames(self._raw, (frame,))
                break
            except zmq.Again:
                room = loop.create_future()
                self._room.append(room)
                await room  # woken by room, or by any call's deadline (_expire)
                if reply.done():
                    return
        self._on_events()

    def _expire(self, future: asyncio.Future) -> None:
        if not future.done():
            future.set_exception(Timeout(f"no reply from {self.endpoints} within {self.timeout} s"))
        self._wake_senders()  # a sender of an expired call stops waiting for room

    def _wake_senders(self) -> None:
        room, self._room = self._room, []
        for future in room:
            if not future.done():
                future.set_result(None)

    def _on_events(self) -> None:
        """Complete the calls whose replies wait; wake senders if there is room."""
        raw, waiting = self._raw, self._waiting
        while True:
            events = socket_events(raw)
            if events & _POLLOUT and self._room:
                self._wake_senders()
            if not events & _POLLIN:
                return
            for frames in drain(raw, DRAIN_MAX):
                try:
                    request_id, code, result = wire.decode_reply(frames[-1])
                except ProtocolError:
                    continue
                call = waiting.get(request_id)  # type: ignore[arg-type]
                if call is not None and not call.done():
                    call.set_result((code, result))

    async def close(self) -> None:
        """Close the socket (and the context it made); calls still waiting fail."""
        self._unwatch()
        for future in [*self._waiting.values(), *self._room]:
            if not future.done():
                future.set_exception(ConnectionFailed(f"client to {self.endpoints} closed"))
        self._sock.close(0)
        if self._own_ctx:
            self._ctx.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
