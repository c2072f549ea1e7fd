"""Where the RESP front's requests go: a node's own API, or one pinned node of many.

A :class:`Link` is one DEALER to one node's api endpoint, with the replies
matched to requests by id (several requests of a pipeline go as one bundle,
:data:`mesh.core.envelope.BUNDLE_MAGIC`, so the node runs them in one turn).

- :class:`NodeBackend` (``pycache node --resp``): the node's own API, in its loop.
- :class:`PinnedBackend` (``pycache balancer --resp``): a link to every node,
  a HEALTH probe to each every ``health_ms``; each RESP connection is pinned to
  one ready node and moved only when that node fails (dropped after ``hang_ms``
  of silence, or answering NOT_READY/DEADLINE), so a connection reads its own
  writes at once.  Requests carry a run-by deadline (as the balancer's): a
  request whose node failed is resent elsewhere only after it, so a copy stuck
  on a hung node can never run after the retry.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import zmq

from mesh.core import envelope, wire
from mesh.core.clock import wall_ms
from mesh.core.errors import ProtocolError
from mesh.roles.clientplane import connect_as
from mesh.roles.zsock import drain, send_frames, socket_events, socket_fd

log = logging.getLogger(__name__)

Reply = tuple[int, Any]  # (wire code, result or reason)
#: Requests per bundle, and the bytes a bundle may carry.
BUNDLE_REQUESTS = 256
BUNDLE_BYTES = 512 * 1024
_POLLIN = int(zmq.POLLIN)
#: The reply a request gets when its node went away (retried by PinnedBackend).
LOST = (wire.E_NOT_READY, "the node went away")
#: Reply codes after which the balancer's RESP front resends a request elsewhere.
_RETRIED = (wire.E_NOT_READY, wire.E_DEADLINE)


class Batch:
    """The replies of one :meth:`Link.submit`, in order; ``callback`` gets them all."""

    __slots__ = ("replies", "left", "callback", "timer")

    def __init__(self, count: int, callback: Callable[[list[Reply]], None]) -> None:
        self.replies: list[Reply | None] = [None] * count
        self.left = count
        self.callback: Callable[[list[Reply]], None] | None = callback
        self.timer: asyncio.TimerHandle | None = None

    def put(self, index: int, reply: Reply) -> None:
        """One reply in; resolve when it was the last."""
        if self.replies[index] is None:
            self.replies[index] = reply
            self.left -= 1
            if not self.left:
                self.finish()

    def finish(self) -> None:
        """Resolve now; requests with no reply yet count as LOST."""
        if self.timer is not None:
            self.timer.cancel()
        callback, self.callback = self.callback, None
        if callback is not None:
            callback([r if r is not None else LOST for r in self.replies])


class Link:
    """One DEALER to one node; :meth:`send` returns one :class:`Batch` per call."""

    def __init__(self, ctx: zmq.Context, endpoint: str, credentials: Any = None) -> None:
        self.endpoint = endpoint
        self.sock = ctx.socket(zmq.DEALER)
        if credentials is not None:
            connect_as(self.sock, credentials)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.connect(endpoint)
        self.raw: zmq.Socket = zmq.Socket.shadow(self.sock.underlying)
        self.ids = itertools.count(1)
        self.waiting: dict[int, tuple[Batch, int]] = {}
        self.outbox: list[tuple[int, list[bytes]]] = []
        self._flush_due = False
        self.closed = False
        self.ready = True
        self.heard_ms = wall_ms()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _watch(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            loop.add_reader(socket_fd(self.raw), self._on_events)
            self._loop = loop
        return loop

    async def run(
        self, requests: Sequence[tuple[str, tuple]], timeout: float, deadline_ms: int = 0
    ) -> list[Reply]:
        """Send ``requests`` (op, args); their ``(code, result)`` replies in order
        (LOST for those with none within ``timeout`` s, or when the node is dropped)."""
        future: asyncio.Future[list[Reply]] = asyncio.get_running_loop().create_future()

        def done(got: list[Reply]) -> None:
            if not future.done():  # not cancelled meanwhile
                future.set_result(got)

        self.submit(requests, timeout, deadline_ms, done)
        return await future

    def submit(
        self,
        requests: Sequence[tuple[str, tuple]],
        timeout: float,
        deadline_ms: int,
        callback: Callable[[list[Reply]], None],
    ) -> None:
        """Send ``requests``; ``callback`` gets their replies in order, once, as :meth:`run`'s."""
        if self.closed:
            callback([LOST] * len(requests))
            return
        loop = self._watch()
        batch = Batch(len(requests), callback)
        outbox, waiting = self.outbox, self.waiting
        head = [envelope.deadline_frame(deadline_ms)] if deadline_ms else []
        for index, (op, args) in enumerate(requests):
            request_id = next(self.ids)
            try:
                frame = wire.encode_request(request_id, op, *args)
            except ProtocolError as exc:
                batch.put(index, (exc.code, exc.reason))
                continue
            waiting[request_id] = (batch, index)
            outbox.append((request_id, [*head, frame]))
        if outbox and not self._flush_due:
            # Held to the end of this loop turn: the requests of every connection
            # pinned here go out together, as few bundles (few system calls).
            self._flush_due = True
            loop.call_soon(self._flush)
        if batch.callback is not None:
            batch.timer = loop.call_later(timeout, self._expire, batch)

    def _flush(self) -> None:
        """Send what :meth:`run` held, in bundles of a bounded size."""
        self._flush_due = False
        outbox, self.outbox = self.outbox, []
        if self.closed:  # closed since run() held them: their batches were answered LOST
            return
        start, size = 0, 0
        for end, (_, frames) in enumerate(outbox, 1):
            size += len(frames[-1])
            if end - start >= BUNDLE_REQUESTS or size >= BUNDLE_BYTES or end == len(outbox):
                self._send(outbox[start:end])
                start, size = end, 0
        self._on_events()

    def _expire(self, batch: Batch) -> None:
        self.waiting = {k: v for k, v in self.waiting.items() if v[0] is not batch}
        batch.finish()

    def _send(self, messages: list[tuple[int, list[bytes]]]) -> None:
        if len(messages) == 1:
            frames = messages[0][1]
        else:
            frames = envelope.pack_bundle([message for _, message in messages])
        try:
            send_frames(self.raw, frames)
        except zmq.ZMQError:  # no live connection (IMMEDIATE) or full: lost, retried
            for request_id, _ in messages:
                entry = self.waiting.pop(request_id, None)
                if entry is not None:
                    entry[0].put(entry[1], LOST)

    def _on_events(self) -> None:
        while not self.closed and socket_events(self.raw) & _POLLIN:
            for frames in drain(self.raw, 1024):
                self.heard_ms = wall_ms()
                if len(frames) == 2 and frames[0] == envelope.BUNDLE_MAGIC:
                    for message in msgpack.unpackb(frames[1]):
                        self._complete(message[-1])
                else:
                    self._complete(frames[-1])

    def _complete(self, frame: bytes) -> None:
        try:
            request_id, code, result = wire.decode_reply(frame)
        except ProtocolError:
            return
        entry = self.waiting.pop(request_id or 0, None)
        if entry is not None:
            entry[0].put(entry[1], (code, result))

    def fail_all(self) -> None:
        """Answer every waiting request LOST (the node was dropped)."""
        waiting, self.waiting = self.waiting, {}
        for batch, index in waiting.values():
            batch.put(index, LOST)

    def close(self) -> None:
        """Stop watching and close the socket."""
        if self.closed:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(socket_fd(self.raw))
        self.closed = True
        self.fail_all()
        self.sock.close(0)


class NodeBackend:
    """A node's RESP front: every request to the node's own API."""

    def __init__(self, ctx: zmq.Context, endpoint: str, timeout: float) -> None:
        self.link = Link(ctx, endpoint)
        self.timeout = timeout

    def describe(self, pin: object) -> str:
        """Where a connection's requests go (for INFO)."""
        return self.link.endpoint

    async def run(self, requests: Sequence[tuple[str, tuple]], pin: list) -> list[Reply]:
        """Run ``requests`` in order; their replies in the same order."""
        return await self.link.run(requests, self.timeout)

    def submit(
        self, requests: Sequence[tuple[str, tuple]], pin: list, callback: Callable[[list], None]
    ) -> None:
        """As :meth:`run`, the replies handed to ``callback`` (no task, no future)."""
        self.link.submit(requests, self.timeout, 0, callback)

    async def start(self) -> None:
        """Nothing to start: the node is the backend."""

    def close(self) -> None:
        """Close the link."""
        self.link.close()


class PinnedBackend:
    """The balancer's RESP front: connections pinned to ready nodes, moved on failure."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: Sequence[str],
        credentials: Any = None,
        health_ms: int = 100,
        hang_ms: int = 600,
        wait_ms: int = 3000,
        deadline_ms: int = 400,
        timeout: float = 10.0,
    ) -> None:
        self.links = [Link(ctx, endpoint, credentials) for endpoint in endpoints]
        self.health_ms, self.hang_ms = health_ms, hang_ms
        self.wait_ms, self.deadline_ms, self.timeout = wait_ms, deadline_ms, timeout
        self._turn = itertools.count()
        self._probe_task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        for link in self.links:
            link.ready = False

    def describe(self, pin: list) -> str:
        """Where a connection's requests go (for INFO)."""
        return pin[0].endpoint if pin and pin[0] is not None else "(none yet)"

    async def start(self) -> None:
        """Start probing the nodes' HEALTH."""
        self._changed = asyncio.Event()
        self._probe_task = asyncio.create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            for link in self.links:
                asyncio.get_running_loop().create_task(self._probe(link))
            await asyncio.sleep(self.health_ms / 1000)
            now = wall_ms()
            for link in self.links:
                if link.ready and now - link.heard_ms > self.hang_ms:
                    self._drop(link, f"silent for {now - link.heard_ms} ms")

    async def _probe(self, link: Link) -> None:
        ((code, result),) = await link.run([("HEALTH", ())], self.hang_ms / 1000)
        if code != wire.OK:
            return
        ready = isinstance(result, dict) and result.get("state") == "ready"
        if ready and not link.ready:
            link.ready = True
            assert self._changed is not None
            self._changed.set()
            self._changed = asyncio.Event()
        elif not ready and link.ready:
            self._drop(link, f"state {result.get('state') if isinstance(result, dict) else '?'}")

    def _drop(self, link: Link, why: str) -> None:
        log.warning("resp: node %s out of rotation (%s)", link.endpoint, why)
        link.ready = False
        link.fail_all()

    async def _pick(self, pin: list, exclude: Link | None) -> Link | None:
        """The connection's node: its pinned one while ready, else a ready one (waited for)."""
        if pin[0] is not None and pin[0].ready and pin[0] is not exclude:
            return pin[0]
        give_up = wall_ms() + self.wait_ms
        while True:
            ready = [link for link in self.links if link.ready and link is not exclude]
            ready = ready or [link for link in self.links if link.ready]
            if ready:
                pin[0] = ready[next(self._turn) % len(ready)]
                return pin[0]
            left = give_up - wall_ms()
            if left <= 0 or self._changed is None:
                return None
            try:
                await asyncio.wait_for(self._changed.wait(), left / 1000)
            except TimeoutError:
                return None

    def submit(
        self, requests: Sequence[tuple[str, tuple]], pin: list, callback: Callable[[list], None]
    ) -> None:
        """As :meth:`run`, the replies handed to ``callback``: straight to the pinned
        node while it is ready and answers; through :meth:`run` (a task) otherwise."""
        link = pin[0]
        if link is None or not link.ready:
            self._in_task(self.run(requests, pin), callback, len(requests))
            return

        def check(got: list[Reply]) -> None:
            if any(code in _RETRIED for code, _ in got):
                self._in_task(self.run(requests, pin, (link, deadline, got)), callback, len(got))
            else:
                callback(got)

        deadline = wall_ms() + self.deadline_ms
        link.submit(requests, self.timeout, deadline, check)

    @staticmethod
    def _in_task(work: Any, callback: Callable[[list], None], count: int) -> None:
        def done(task: asyncio.Task) -> None:
            if task.cancelled() or task.exception() is not None:  # stopping, or a bug
                callback([(wire.E_INTERNAL, "the request was cut short")] * count)
            else:
                callback(task.result())

        asyncio.ensure_future(work).add_done_callback(done)

    async def run(
        self,
        requests: Sequence[tuple[str, tuple]],
        pin: list,
        first: tuple[Link, int, list[Reply]] | None = None,
    ) -> list[Reply]:
        """Run ``requests`` in order on the pinned node, resending what a failure lost
        (``first``: a first attempt already made, its link, deadline and replies)."""
        replies: list[Reply | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        exclude: Link | None = None
        for _attempt in range(4):
            if first is not None:
                link, deadline, got = first
                first = None
            else:
                picked = await self._pick(pin, exclude)
                if picked is None:
                    break
                link, deadline = picked, wall_ms() + self.deadline_ms
                got = await link.run([requests[i] for i in todo], self.timeout, deadline)
            retry = []
            for i, reply in zip(todo, got, strict=True):
                if reply[0] in _RETRIED:
                    retry.append(i)
                else:
                    replies[i] = reply
            if not retry:
                break
            if link.ready:
                self._drop(link, "it answered NOT_READY or DEADLINE")
            todo, exclude = retry, link
            if (wait := deadline - wall_ms()) > 0:  # never race a copy still on that node
                await asyncio.sleep(wait / 1000)
        return [r if r is not None else (wire.E_NOT_READY, "no ready node") for r in replies]

    def close(self) -> None:
        """Stop probing; close every link."""
        if self._probe_task is not None:
            self._probe_task.cancel()
        for link in self.links:
            link.close()
