"""The asyncio client: every call is a coroutine; concurrent calls pipeline.

>>> async with AsyncClient("tcp://127.0.0.1:7001") as cache:
...     await cache.set("k", "v")
...     await asyncio.gather(cache.get("k"), cache.incr("hits"))

It has the methods of :class:`mesh.roles.client.Client` and belongs to one
event loop at a time (it is not shared between threads).  Used after
``os.fork()`` it raises :class:`~mesh.core.errors.ConnectionFailed` at once:
a child makes its own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import zmq
import zmq.asyncio

from mesh.core import wire
from mesh.core.errors import ConnectionFailed, ProtocolError, Timeout
from mesh.roles.client import DEFAULT_TIMEOUT, CommandMethods, _result
from mesh.roles.clientplane import Credentials
from mesh.roles.clientsock import credentials_of, dealer, endpoints_of, parse_url
from mesh.roles.config import DEFAULT_API
from mesh.roles.zsock import drain, send_frames, socket_events, socket_fd

DRAIN_MAX = 1024  # replies taken per drain call
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


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
        decode_responses: bool = False,
    ) -> None:
        self.endpoints = endpoints_of(endpoint)
        self.timeout = timeout
        self.decode_responses = decode_responses
        self.credentials = credentials_of(credentials, client_key, server_key)
        self._pid = os.getpid()
        self._own_ctx = context is None
        self._ctx = context or zmq.asyncio.Context()
        self._sock = dealer(self._ctx, self.endpoints, self.credentials)
        self._raw: zmq.Socket = zmq.Socket.shadow(self._sock.underlying)
        self._fd = socket_fd(self._raw)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._room: list[asyncio.Future] = []  # senders waiting for the socket to take more
        self._loop: asyncio.AbstractEventLoop | None = None  # whose reader watches ZMQ_FD

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncClient:
        """A client from a URL, as :meth:`mesh.roles.client.Client.from_url`."""
        endpoints, found = parse_url(url)
        return cls(endpoints, **{**found, **options})

    def _call(self, op: str, *args: Any, convert: Callable[[Any], Any] | None = None) -> Any:
        return self._request(op, args, convert)

    async def _request(self, op: str, args: tuple, convert: Callable[[Any], Any] | None) -> Any:
        if self._pid != os.getpid():
            raise ConnectionFailed("an AsyncClient cannot be used after os.fork(): make a new one")
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
        return _result(code, result, convert, self.decode_responses)

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
        if self._pid != os.getpid():
            return  # a parent's socket: left alone in a child
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
