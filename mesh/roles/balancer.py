"""The balancer: one ROUTER front for clients, a DEALER toward each node.

Clients speak the node protocol (:mod:`mesh.core.wire`) to the front socket; the
balancer forwards each request to a **ready** node in turn and each reply back,
so clients cannot tell it from a node; what a node would refuse as a whole
(too many frames, a frame over the request limit) the front answers itself
(:mod:`mesh.roles.admission`).  A node gets a request under a tag new for each
send, not the client's envelope (:class:`mesh.roles.routing.Pending`).
The turn moves once per run of requests, not once per request: up to
``batch_per_node`` (32) requests in a row go to the same node, which then
handles several in one turn of its own loop (one fsync, one publish for a
batch of writes) instead of one each.  For the same reason sends are held
until the end of a loop turn and then made back to back: libzmq's I/O thread
then writes several messages per system call.  The requests held for one
node go as one message, a bundle (see :data:`mesh.core.envelope.BUNDLE_MAGIC`), when
the node's HEALTH offers ``bundle_bytes``; its replies come back as one bundle too.

Liveness and readiness, per node:

- a socket monitor drops a node **at once** when its connection breaks (a
  crash, ``kill -9``);
- a HEALTH probe every ``health_ms`` (100 ms) tells its state; a node that
  answers nothing for ``hang_ms`` (600 ms) is hung (SIGSTOP, a gray failure)
  and dropped; only a node whose HEALTH says ``ready`` gets traffic, so a
  restarted node gets none until it has caught up;
- a node that answers NOT_READY is taken out of rotation on the spot.

A write is sent with a run-by deadline (``deadline_ms``, 400 ms, in an envelope
frame, see :data:`mesh.core.envelope.DEADLINE_MAGIC`): a node that gets it later does
not run it and answers DEADLINE.  Reads carry none: one running late changes nothing, so
a read on a failed node is resent at once.  When a node answers NOT_READY or DEADLINE, the request
goes at once to another ready node; when a node is dropped, its requests go
elsewhere once their deadline has passed, so that a copy stuck on a hung node
can never run after the retry and overwrite a later write.  A request is sent
at most ``max_attempts`` times, and a late reply from the first node is
dropped: the client gets exactly one reply.  So GET, SET, DEL and EXPIRE are
safe to retry; a retried NX SET or DEL may report what the first attempt did
(false, 0).  Deadlines compare the balancer's and the nodes' wall clocks, which
must agree within ``CLOCK_MARGIN_MS``.  With no ready node a request waits up
to ``wait_ms`` for one, then gets ``NOT_READY: no ready node``.  Every send is
non-blocking.

HEALTH and CLUSTER sent to the balancer are answered by the balancer itself: HEALTH
says ``ready`` while at least one node is; CLUSTER gathers every node's CLUSTER entry.

With ``client_keys`` the front is a CURVE server admitting only those
clients (:mod:`mesh.roles.clientplane`, through a :class:`ThreadZapHandler`);
with ``client_key`` the DEALERs toward the nodes connect with that CURVE key,
for nodes whose api sockets require one.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from mesh.core import envelope, wire
from mesh.core.clock import monotonic_ms, wall_ms
from mesh.core.errors import ProtocolError
from mesh.roles import admission
from mesh.roles.binding import bind
from mesh.roles.clientplane import connect_as, optional_credentials, protect
from mesh.roles.config import BalancerConfig
from mesh.roles.dialer import Dialer
from mesh.roles.liveness import detect_dead_hosts
from mesh.roles.metrics import count_into
from mesh.roles.routing import Link, Pending, Pool, bundle_messages, client_reply, forwarded
from mesh.roles.trust import AnyZapHandler, ThreadZapHandler, log_refused
from mesh.roles.zsock import recv_frames, send_frames, socket_fd

log = logging.getLogger(__name__)

PROBE = b"\x00probe"  # envelope of the balancer's own requests to nodes
TICK_MS = 20
#: Ops that change nothing: sent without a deadline, resent at once on failover.
READ_OPS = frozenset({b"GET", b"MGET", b"TTL", b"GETMETA", b"PING", b"STATS"})
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: enum flag arithmetic shows up in profiles
CLUSTER_WAIT_MS = 500
DRAIN_MAX = 2048
#: Held sends go out at the end of a loop turn, or once this many are waiting.
HELD_MAX = 256
#: Most frames in one reply inside a bundle (envelope included).
MAX_REPLY_FRAMES = 64
#: Slack for clock differences between the balancer and the nodes.
CLOCK_MARGIN_MS = 50


class Balancer:
    """Runs the front socket and the node links until ``stop()``."""

    def __init__(self, config: BalancerConfig, ctx: zmq.Context) -> None:
        self.config = config.validate()
        self.ctx = ctx
        self.links = [Link(endpoint) for endpoint in config.nodes]
        self.pool = Pool(self.links, config.batch_per_node)
        self.waiting: deque[Pending] = deque()
        names = (
            "requests",
            "retries",
            "no_ready_node",
            "failovers",
            "refused",
            "refused_handshakes",
        )
        self.counters = dict.fromkeys(names, 0)
        self._stopped = False
        self._holding = False  # True inside run(): sends wait for _send_held
        self._held: list[tuple[Link, list[bytes], Pending]] = []
        self._held_replies: list[list[bytes]] = []
        self._probe_ids = itertools.count(1)
        self._tags = itertools.count(1)
        # A frame over request_bytes gets TOO_LARGE; over twice the front's, a drop.
        self._front_limit = admission.request_limit(config.max_request_bytes)
        self.request_bytes = self._front_limit
        self._gathers: dict[int, dict[str, Any]] = {}
        self._delayed: list[tuple[int, int, Pending]] = []  # (resend at wall ms, tie, request)
        self.credentials = optional_credentials(
            config.client_key, config.server_key, config.client_keys
        )
        self.front = ctx.socket(zmq.ROUTER)
        self.zap: AnyZapHandler | None = protect(
            self.front,
            "front",
            config.front,
            config.client_keys,
            None,
            lambda: ThreadZapHandler(
                self.ctx, log_refused(count_into(self.counters, "refused_handshakes"))
            ),
        )
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.front.setsockopt(zmq.SNDHWM, 100_000)
        self.front.setsockopt(zmq.MAXMSGSIZE, admission.CEILING_FACTOR * self._front_limit)
        self.dialer = Dialer()  # nodes' names resolved off libzmq's I/O thread
        bind(self.front, "front", config.front, on_error=self.close)
        self.endpoint = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
        # A plain zmq.Poller in a plain loop: the balancer only moves frames,
        # and asyncio's per-wait poller set-up cost more than the forwarding.
        self.poller = zmq.Poller()
        self.poller.register(self.front, zmq.POLLIN)
        self._handlers: dict[zmq.Socket | int, Callable[[int], None]] = {}
        self._handlers[self.front] = self._drain_front
        for link in self.links:
            self._connect(link)

    def _connect(self, link: Link) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        if self.credentials is not None:
            connect_as(sock, self.credentials)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue toward a node that is not there
        detect_dead_hosts(sock)  # TCP keepalive, not ZMTP heartbeats (mesh.roles.liveness)
        for high_water_mark in (zmq.SNDHWM, zmq.RCVHWM):
            sock.setsockopt(high_water_mark, 100_000)
        link.monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self.dialer.connect(sock, link.endpoint, monotonic_ms())
        link.sock = sock
        self.poller.register(sock, zmq.POLLIN)
        self._handlers[sock] = lambda now: self._drain_replies(link, now)
        # The monitor is polled by its raw file descriptor (ZMQ_FD), which
        # zmq_poll checks for less than a socket.  That fd is readable once
        # new events follow a read that found none, so every drain reads
        # until there are none.
        monitor_fd = socket_fd(link.monitor)
        self.poller.register(monitor_fd, zmq.POLLIN)
        self._handlers[monitor_fd] = lambda now: self._drain_monitor(link, now)
        # Arms the fd: it fires only after a read found the queue empty.
        self._drain_monitor(link, monotonic_ms())

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Serve until :meth:`stop` (from a signal handler); closes the sockets."""
        try:
            next_tick = 0
            self._holding = True
            while not self._stopped:
                events = self.poller.poll(TICK_MS)
                now = monotonic_ms()
                for sock, _ in events:
                    self._handlers[sock](now)
                if now >= next_tick:  # timers have ms resolution: once per ms is enough
                    self._tick(now)
                    next_tick = now + 1
                self._send_held(now)
        finally:
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current turn."""
        self._stopped = True

    def _tick(self, now: int) -> None:
        self.dialer.poll(now)
        for link in self.links:
            if link.connected and now - link.probe_sent_ms >= self.config.health_ms:
                self._probe(link, "HEALTH", now)
            silent = now - link.awaiting_since if link.awaiting_since else 0
            if link.usable and silent > self.config.hang_ms:
                self._drop(link, now, "hung")
        self._release_delayed(now)
        self._flush_waiting(now)
        for token in [t for t, g in self._gathers.items() if now >= g["deadline"]]:
            self._finish_gather(token)

    def _probe(self, link: Link, op: str, now: int, token: int = 0) -> None:
        frame = wire.encode_request(next(self._probe_ids), op)
        try:
            link.sock.send_multipart([PROBE, token.to_bytes(8, "big"), frame], NOBLOCK)
        except zmq.ZMQError:
            return
        if op == "HEALTH":
            link.probe_sent_ms = now
            link.awaiting_since = link.awaiting_since or now

    # ------------------------------------------------------------------ clients

    def _drain_front(self, now: int) -> None:
        front = self.front
        for _ in range(DRAIN_MAX):
            try:
                frames = recv_frames(front)
            except zmq.Again:
                return
            self.counters["requests"] += 1
            count = len(frames)
            if count != 2 or len(frames[1]) > self.request_bytes:
                if count < 2:
                    continue
                refusal = admission.refusal(frames, self.request_bytes)
                if refusal is not None:
                    self.counters["refused"] += 1
                    self._to_client(refusal)
                    continue
            request_id, op = envelope.peek_head(frames[-1])
            if op in (b"HEALTH", b"CLUSTER"):
                self._answer_locally(frames, op, now)
            else:
                read = type(op) is bytes and (op in READ_OPS or op.upper() in READ_OPS)
                write = not read
                self._route(Pending(frames, request_id, write), now)

    def _route(self, pending: Pending, now: int, exclude: Link | None = None) -> None:
        while pending.attempts < self.config.max_attempts:
            link = self.pool.pick(exclude) if exclude else self.pool.pick_in_batch()
            if link is None:
                break
            pending.attempts += 1
            run_by = wall_ms() + self.config.deadline_ms if pending.write else 0
            frames = forwarded(pending, next(self._tags).to_bytes(8, "big"), run_by)
            link.inflight[pending.tag] = pending
            if self._holding:
                self._held.append((link, frames, pending))
                if len(self._held) >= HELD_MAX:
                    self._send_held(now)
                return
            try:
                send_frames(link.sock, frames)
                return
            except zmq.ZMQError:
                link.inflight.pop(pending.tag, None)  # never sent
                self._drop(link, now, "unreachable")
        if pending.attempts >= self.config.max_attempts:
            self._reply_error(pending, wire.E_NOT_READY, "no node answered the request")
            return
        pending.waiting_since = pending.waiting_since or now
        self.waiting.append(pending)

    def _send_held(self, now: int) -> None:
        """Make the held sends, back to back; requests a node could not take go elsewhere."""
        holding, self._holding = self._holding, False
        held, self._held = self._held, []
        per_link: dict[int, tuple[Link, list[tuple[list[bytes], Pending]]]] = {}
        for link, frames, pending in held:
            if link.inflight.get(pending.tag) is not pending:
                continue  # its node was dropped since, and _drop has rescheduled it
            per_link.setdefault(id(link), (link, []))[1].append((frames, pending))
        retry: list[Pending] = []
        for link, items in per_link.values():
            unsent, failed = self._send_items(link, items)
            for pending in unsent:  # never sent: safe to send elsewhere now
                link.inflight.pop(pending.tag, None)
            retry += unsent
            if failed:
                self._drop(link, now, "unreachable")
        for pending in retry:
            self._route(pending, now)
        replies, self._held_replies = self._held_replies, []
        for frames in replies:
            self._to_client(frames)
        self._holding = holding

    def _send_items(
        self, link: Link, items: list[tuple[list[bytes], Pending]]
    ) -> tuple[list[Pending], bool]:
        """Send ``items`` to ``link``: (the requests not sent, whether a send failed)."""
        if not link.usable:  # out of rotation since they were routed
            return [pending for _, pending in items], False
        for start, message in bundle_messages(items, link.bundle_bytes):
            try:
                send_frames(link.sock, message)
            except zmq.ZMQError:
                return [pending for _, pending in items[start:]], True
        return [], False

    def _flush_waiting(self, now: int) -> None:
        while self.waiting:
            pending = self.waiting[0]
            if self.pool.any_ready():
                self.waiting.popleft()
                self._route(pending, now)
            elif now - pending.waiting_since >= self.config.wait_ms:
                self.waiting.popleft()
                self.counters["no_ready_node"] += 1
                self._reply_error(pending, wire.E_NOT_READY, "no ready node")
            else:
                return

    def _reply_error(self, pending: Pending, code: int, reason: str) -> None:
        reply = wire.encode_error(pending.request_id, code, reason)
        self._to_client([*pending.frames[:-1], reply])

    def _to_client(self, frames: list[bytes]) -> None:
        if self._holding:
            self._held_replies.append(frames)
            if len(self._held_replies) >= HELD_MAX:
                self._send_held(monotonic_ms())
            return
        try:
            send_frames(self.front, frames)
        except zmq.ZMQError:
            pass  # the client is gone

    # ------------------------------------------------------------------ nodes

    def _drain_replies(self, link: Link, now: int) -> None:
        for _ in range(DRAIN_MAX):
            try:
                frames = recv_frames(link.sock)
            except zmq.Again:
                return
            link.awaiting_since = 0
            if frames[0] == PROBE:
                self._on_probe_reply(link, frames, now)
            elif frames[0] == envelope.BUNDLE_MAGIC and len(frames) == 2:
                try:
                    replies = envelope.unpack_bundle(frames[1], MAX_REPLY_FRAMES)
                except ProtocolError:
                    log.warning("node %s sent a malformed bundle", link.endpoint)
                    continue
                for reply in replies:
                    self._on_reply(link, reply, now)
            else:
                self._on_reply(link, frames, now)

    def _on_reply(self, link: Link, frames: list[bytes], now: int) -> None:
        """Pass a node's reply to its client, or resend a request the node did not run."""
        pending = link.inflight.pop(frames[0], None)
        if pending is None:  # a late reply to a request already retried elsewhere
            if len(frames) == 1:  # a node refused a whole message: a bug here
                log.warning("node %s refused a message: %r", link.endpoint, frames[0][:200])
            return
        _, code = envelope.peek_head(frames[-1])
        if code in (wire.E_NOT_READY, wire.E_DEADLINE):  # not run there: safe to resend
            if code == wire.E_NOT_READY:
                link.state = "not-ready"
            self.counters["retries"] += 1
            self._route(pending, now, exclude=link)
            return
        self._to_client(client_reply(pending, frames[-1]))

    def _on_probe_reply(self, link: Link, frames: list[bytes], now: int) -> None:
        try:
            _, code, result = wire.decode_reply(frames[-1])
        except Exception:  # a broken reply from a node: ignore it
            return
        token = int.from_bytes(frames[1], "big")
        if token:
            gather = self._gathers.get(token)
            nodes = result.get("nodes") if isinstance(result, dict) else None
            if gather is not None and code == wire.OK and isinstance(nodes, list) and nodes:
                gather["replies"][link.endpoint] = nodes[0]
                if len(gather["replies"]) >= gather["expected"]:
                    self._finish_gather(token)
            return
        if code == wire.OK and isinstance(result, dict):
            was = link.usable
            link.take_health(result)
            self.request_bytes = self.pool.request_limit(self._front_limit)
            if link.usable and not was:
                log.info("node %s (%s) in rotation", link.node_id, link.endpoint)

    def _drain_monitor(self, link: Link, now: int) -> None:
        while True:
            try:
                event = parse_monitor_message(link.monitor.recv_multipart(NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                link.connected, link.awaiting_since = True, 0
                self._probe(link, "HEALTH", now)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._drop(link, now, "disconnected")
                link.connected = False

    def _drop(self, link: Link, now: int, why: str) -> None:
        """Take a node out of rotation and send its requests in flight elsewhere."""
        if link.state != why:
            log.warning("node %s (%s) %s: out of rotation", link.node_id, link.endpoint, why)
        link.state = why
        inflight, link.inflight = link.inflight, {}
        if inflight:
            self.counters["failovers"] += 1
        # A request may still run on a node that only seemed dead (hung, or cut
        # off), but never after its deadline: resend it only then, so a stale
        # copy can never overwrite a write acknowledged after it.
        for pending in inflight.values():
            self.counters["retries"] += 1
            heapq.heappush(
                self._delayed, (pending.run_by_ms + CLOCK_MARGIN_MS, next(self._probe_ids), pending)
            )
        self._release_delayed(now)

    def _release_delayed(self, now: int) -> None:
        wall = wall_ms()
        while self._delayed and self._delayed[0][0] <= wall:
            _, _, pending = heapq.heappop(self._delayed)
            self._route(pending, now)

    # ------------------------------------------------------------------ local ops

    def _answer_locally(self, frames: list[bytes], op: bytes, now: int) -> None:
        request_id, _ = envelope.peek_head(frames[-1])
        if op == b"HEALTH":
            state = "ready" if self.pool.any_ready() else "no-ready-node"
            reply = wire.encode_reply(request_id, {"node_id": "balancer", "state": state})
            self._to_client([*frames[:-1], reply])
            return
        token = next(self._probe_ids)
        targets = [link for link in self.links if link.connected]
        self._gathers[token] = {
            "frames": frames,
            "id": request_id,
            "replies": {},
            "expected": len(targets),
            "deadline": now + CLUSTER_WAIT_MS,
        }
        for link in targets:
            self._probe(link, "CLUSTER", now, token)
        if not targets:
            self._finish_gather(token)

    def _finish_gather(self, token: int) -> None:
        gather = self._gathers.pop(token)
        nodes = [link.cluster_entry(gather["replies"].get(link.endpoint)) for link in self.links]
        reply = wire.encode_reply(gather["id"], {"nodes": nodes})
        self._to_client([*gather["frames"][:-1], reply])

    def close(self) -> None:
        """Close every socket."""
        self.dialer.close()
        for link in self.links:
            if hasattr(link, "sock"):  # connected in __init__ (unless it failed half-way)
                link.sock.disable_monitor()
                link.monitor.close(0)
                link.sock.close(0)
        self.front.close(0)
        if self.zap is not None:
            self.zap.stop()
            self.zap = None
