"""The thin socket loop around the replication core.

Sockets of one node (made from the node's ``zmq.asyncio`` context but used
only through sync shadows: drained in batches with non-blocking receives,
woken through each socket's ZMQ_FD as the node's API socket is):

- **PUB** (bound, ``--pub``): this node's own write batches and heartbeats.
- **SUB** (connected to every peer's PUB): peers' batches and heartbeats.
- **ROUTER "repl"** (bound, ``--repl``): peers' HELLO and FETCH requests.
- one **DEALER** per peer (connected to its repl socket): our HELLO and
  FETCH requests.  ``IMMEDIATE`` is set, so nothing queues for a peer that is
  down; every send is non-blocking and a lost fetch simply times out.

Membership: ``--peers`` lists peers' repl endpoints.  A HELLO to each gives
its node id and PUB endpoint; a HELLO *from* an unknown node makes it a peer
too, so a node started later only needs to name the earlier ones.  Known peers
are kept in ``<data-dir>/peers.json`` so that a restarted node finds them.

The protocol logic itself lives in :mod:`mesh.core.replication`; message layouts in
:mod:`mesh.core.peerwire`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from mesh.core import peerfields, peerwire, snapimage
from mesh.core.clock import monotonic_ms
from mesh.core.errors import ProtocolError
from mesh.core.peerview import STARTUP_TIMEOUT_MS
from mesh.core.replication import READY, Replica
from mesh.roles.binding import bind
from mesh.roles.dialer import Dialer
from mesh.roles.liveness import detect_dead_hosts
from mesh.roles.repl_server import ReplServer, read_message
from mesh.roles.trust import (
    PUB_DOMAIN,
    REPL_DOMAIN,
    Membership,
    PeerKeys,
    curve_client,
    curve_server,
)
from mesh.roles.zsock import drain, readable, socket_fd
from mesh.storage.datadir import write_atomically
from mesh.storage.log import Log

log = logging.getLogger(__name__)

PEERS_FILE = "peers.json"
HEARTBEAT_MS = 100
HELLO_RETRY_MS = 200
#: A HELLO that could not be sent (IMMEDIATE: the connection is not up yet) is
#: tried again after this long, then twice as long each time, up to HELLO_RETRY_MS.
CONNECT_RETRY_MS = 2
TICK_MS = 20
PUB_BATCH_BYTES = 1024 * 1024
DRAIN_MAX = 4096
#: How often the admitted set is looked at again (a member added or forgotten).
MEMBERS_REFRESH_MS = 1000
#: Entries taken from peers' PUB that no origin waits on are fsynced within
#: about this long (or sooner, by the node's own next fsync or heartbeat).
REPLICA_SYNC_MS = 20


class Peering:
    """Runs one node's replication sockets around its :class:`Replica`."""

    def __init__(
        self,
        replica: Replica,
        log_: Log,
        ctx: zmq.asyncio.Context,
        *,
        repl: str,
        pub: str,
        peers: list[str],
        data_dir: str,
        max_frame: int,
        pub_hwm: int = 10_000,
        on_change: Callable[[], None] = lambda: None,
        on_full_sync: Callable[[Any], None] = lambda entries: None,
        keys: PeerKeys | None = None,
        membership: Membership | None = None,
        on_clock: Callable[[str, int], None] = lambda node_id, wall: None,
        on_disk_error: Callable[[OSError], None] | None = None,
        refusing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.replica = replica
        self.keys = keys
        self.membership = membership
        self.counters = {"dropped_messages": 0, "impostors": 0, "bad_endpoints": 0}
        self._on_clock = on_clock  # a peer's heartbeat said its wall clock reads this
        self.beat_overrides: dict[str, str] = {}  # e.g. the clock guard's state
        self.log = log_
        self.ctx = ctx
        self.max_frame = max_frame
        self._peers_file = Path(data_dir) / PEERS_FILE
        self._on_change = on_change
        self._on_full_sync = on_full_sync
        self._on_disk_error = on_disk_error  # a log write failed: raises unless the disk is full
        self._refusing = refusing  # take no entries (the disk is full)
        self.pub = self._socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, pub_hwm)
        self._secure(self.pub, PUB_DOMAIN)
        bind(self.pub, "pub", pub)
        self.repl = self._socket(zmq.ROUTER)
        self.repl.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._secure(self.repl, REPL_DOMAIN)
        bind(self.repl, "repl", repl, on_error=self.pub.close)
        self.sub = self._socket(zmq.SUB)
        self._secure(self.sub)
        for prefix in peerwire.PEER_SUBSCRIPTIONS:  # not progress beats: PUB drops them
            self.sub.setsockopt(zmq.SUBSCRIBE, prefix)
        self.endpoints = {
            "repl": self.repl.getsockopt_string(zmq.LAST_ENDPOINT),
            "pub": self.pub.getsockopt_string(zmq.LAST_ENDPOINT),
        }
        self._raw: dict[Any, zmq.Socket] = {
            s: zmq.Socket.shadow(s.underlying) for s in (self.pub, self.repl, self.sub)
        }
        self._dealers: dict[str, zmq.asyncio.Socket] = {}  # repl endpoint -> DEALER
        self._by_node: dict[str, str] = {}  # node id -> repl endpoint
        self._subscribed: set[str] = set()
        self._pubs: dict[str, str] = {}  # node id -> PUB endpoint
        self._unanswered: dict[str, int] = {}  # repl endpoint -> next HELLO time
        self._connect_wait: dict[str, int] = {}  # repl endpoint -> ms until the next try
        # The sockets run() drains, each with its handler; dealers join as peers do.
        self._watched: list[tuple[zmq.Socket, Callable[[int], None]]] = [
            (self._raw[self.sub], self._drain_sub),
            (self._raw[self.repl], lambda now: self.server.drain(now)),
        ]
        self._loop: asyncio.AbstractEventLoop | None = None  # set while run() runs
        self._wakeup: asyncio.Future | None = None
        self._sync_due: int | None = None  # fsync received entries by then (monotonic ms)
        self._tick_now = False  # run _tick in this loop turn, not at the next ms
        self.server = ReplServer(
            replica,
            self._raw[self.repl],
            authenticated=keys is not None,
            max_frame=max_frame,
            on_hello=self._on_hello,
            counters=self.counters,
        )
        self.dialer = Dialer()  # peers' names are resolved off libzmq's I/O thread
        self._load_peers(peers)
        self._startup_until = monotonic_ms() + STARTUP_TIMEOUT_MS
        self._next_beat = 0
        self._next_refresh = 0

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame)
        # A host that vanished without a word is noticed by TCP keepalive, not
        # ZMTP heartbeats: they can abort libzmq 4.3 (see mesh.roles.liveness).
        detect_dead_hosts(sock)
        return sock

    def _secure(self, sock: zmq.Socket, server_domain: str = "") -> None:
        """With keys, make ``sock`` a CURVE server of ``server_domain``, or else a client."""
        if self.keys is None:
            return
        if server_domain:
            curve_server(sock, self.keys, server_domain)
        else:
            curve_client(sock, self.keys)

    # ------------------------------------------------------------------ membership

    def _load_peers(self, configured: list[str]) -> None:
        for node_id, repl, pub in self._saved_peers():
            self._add(node_id, repl, pub, persist=False)
        for endpoint in configured:
            if endpoint != self.endpoints["repl"] and endpoint not in self._dealers:
                self._dealer(endpoint)
        self._unanswered = {e: 0 for e in self._dealers}

    def _saved_peers(self) -> list[tuple[str, str, str]]:
        """``(node id, repl, pub)`` of each peer ``peers.json`` names, checked as a
        peer's HELLO is; an unreadable file, or a malformed entry, is logged and skipped."""
        if not self._peers_file.exists():
            return []
        try:
            known = json.loads(self._peers_file.read_text())["peers"]
            if not isinstance(known, dict):
                raise ValueError("its peers are not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", self._peers_file, exc)
            return []
        peers = []
        for node_id, ends in known.items():
            try:
                if not isinstance(ends, dict):
                    raise peerfields.fail("endpoints")
                peers.append(
                    (
                        peerfields.node_id(node_id),
                        peerfields.endpoint(ends.get("repl")),
                        peerfields.endpoint(ends.get("pub")),
                    )
                )
            except ProtocolError as exc:
                log.warning("ignoring peer %r of %s: %s", node_id, self._peers_file, exc)
        return peers

    def _dealer(self, endpoint: str) -> zmq.asyncio.Socket:
        sock = self._dealers.get(endpoint)
        if sock is None:
            sock = self._socket(zmq.DEALER)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            self._secure(sock)
            try:
                self.dialer.connect(sock, endpoint, monotonic_ms())
            except zmq.ZMQError:
                sock.close(0)
                raise
            self._dealers[endpoint] = sock
            raw = self._raw[sock] = zmq.Socket.shadow(sock.underlying)
            self._watched.append((raw, partial(self._drain_dealer, sock)))
            if self._loop is not None:
                self._loop.add_reader(socket_fd(raw), self._wake)
        return sock

    def _add(self, node_id: str, repl: str, pub: str, *, persist: bool = True) -> None:
        if node_id == self.replica.node_id:
            if repl != self.endpoints["repl"]:
                log.error(
                    "the node at %s says it is %s, this node's own id: two nodes share an "
                    "id, and neither takes the other's writes; give each node its own --id",
                    repl,
                    node_id,
                )
            return
        if self.membership is not None and node_id not in self.membership.ids():
            log.warning("ignored %s at %s: not a member", node_id, repl)
            return
        changed = self._by_node.get(node_id) != repl
        try:  # endpoints are checked when parsed: this is the last line of defence
            self._dealer(repl)
            if pub not in self._subscribed:
                self.dialer.connect(self.sub, pub, monotonic_ms())
                self._subscribed.add(pub)
                changed = True
        except zmq.ZMQError as exc:
            self.counters["bad_endpoints"] += 1
            log.warning("ignored %s at %s / %s: %s", node_id, repl, pub, exc)
            return
        self._by_node[node_id] = repl
        self.replica.add_peer(node_id)
        self._pubs[node_id] = pub
        if changed and persist:
            self._save_peers()

    def _remove(self, node_id: str) -> None:
        """Forget a peer that is no longer a member: its sockets, its view, its entry on disk."""
        repl, pub = self._by_node.pop(node_id, None), self._pubs.pop(node_id, None)
        if pub is not None and pub in self._subscribed:
            self._subscribed.discard(pub)
            self.dialer.disconnect(self.sub, pub)
        sock = self._dealers.pop(repl, None) if repl is not None else None
        if sock is not None:
            raw = self._raw.pop(sock)
            self._watched = [(r, h) for r, h in self._watched if r is not raw]
            if self._loop is not None:
                self._loop.remove_reader(socket_fd(raw))
            self.dialer.forget(sock)
            sock.close(0)
            self._unanswered.pop(repl, None)  # type: ignore[arg-type]
        self.server.forget(node_id)
        self.replica.remove_peer(node_id)
        self._save_peers()
        log.warning("peer %s is no longer a member: dropped", node_id, extra={"peer": node_id})

    def _refresh_members(self) -> None:
        """Drop the peers whose keys left the admitted set (``pycache forget``)."""
        if self.membership is not None and self.membership.refresh():
            for node_id in set(self._by_node) - self.membership.ids():
                self._remove(node_id)

    def _on_hello(self, node_id: str, repl: str, pub: str) -> bytes:
        """A peer said HELLO: know it (if a member), and answer with who this node is."""
        self._add(node_id, repl, pub)
        ends = self.endpoints
        return peerwire.encode_hello(
            self.replica.node_id, ends["repl"], ends["pub"], self.replica.origin
        )

    def _hello_again(self, node_id: str) -> None:
        """Say HELLO to a peer that does not know us (it lost its disk, say)."""
        endpoint = self._by_node.get(node_id)
        if endpoint is not None and endpoint not in self._unanswered:
            self._unanswered[endpoint] = 0

    def _save_peers(self) -> None:
        peers = {n: {"repl": r, "pub": self._pubs[n]} for n, r in self._by_node.items()}
        write_atomically(self._peers_file, json.dumps({"peers": peers}, indent=2).encode())

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Serve and drive replication until cancelled.

        Each socket's ZMQ_FD stays registered with the loop for the whole run
        (a ``zmq.asyncio`` poller would register and unregister every socket
        on every call).  ZMQ_FD is edge-triggered, so the loop only waits once
        ZMQ_EVENTS says that no socket has anything left.
        """
        self._loop = loop = asyncio.get_running_loop()
        for raw, _ in self._watched:
            loop.add_reader(socket_fd(raw), self._wake)
        try:
            next_tick = 0
            while True:
                now = monotonic_ms()
                try:
                    for raw, handle in list(self._watched):
                        if readable(raw):
                            handle(now)
                    # Timers have ms resolution: once per ms is enough, except that a
                    # catch-up reply's follow-up fetch goes out at once.
                    if now >= next_tick or self._tick_now:
                        self._tick_now = False
                        self._tick(now)
                        next_tick = now + 1
                except OSError as exc:  # logging entries failed: the disk is full?
                    if self._on_disk_error is None:
                        raise
                    self._on_disk_error(exc)
                    self._sync_due = None
                if any(readable(raw) for raw, _ in self._watched):
                    await asyncio.sleep(0)  # more to do: let the node's other tasks run first
                else:
                    await self._idle(self._idle_ms(now))
        finally:
            for raw, _ in self._watched:
                loop.remove_reader(socket_fd(raw))
            self._loop = None

    async def _idle(self, ms: int) -> None:
        """Wait until a socket's ZMQ_FD fires or ``ms`` pass."""
        assert self._loop is not None
        self._wakeup = wakeup = self._loop.create_future()
        timer = self._loop.call_later(ms / 1000, self._wake)
        try:
            await wakeup
        finally:
            timer.cancel()
            self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _tick(self, now: int) -> None:
        self.dialer.poll(now)
        if now >= self._next_refresh:
            self._refresh_members()
            self._next_refresh = now + MEMBERS_REFRESH_MS
        if self._sync_due is not None and now >= self._sync_due:
            self._flush()
        for endpoint, due in list(self._unanswered.items()):
            if now >= due:
                self._say_hello(endpoint, now)
        if now >= self._next_beat:
            # A start-up catch-up fsyncs once, on the turn to ready (below): an
            # fsync per beat would stall it for 2-8 ms about every other batch.
            self.publish_heartbeat(flush=self.replica.state == READY)
            self._next_beat = now + HEARTBEAT_MS
        if (self._unanswered and now < self._startup_until) or self._refusing():
            return  # learn who the configured peers are before judging readiness; no fetch
        was_ready = self.replica.state
        for node_id, fetch in self.replica.poll(now):
            target = self._by_node.get(node_id)
            if target is not None:
                self._send(
                    self._dealers[target], peerwire.encode_fetch(self.replica.node_id, fetch)
                )
        if self.replica.state != was_ready:
            self._flush()  # everything caught up is on disk before the node says ready
            self._on_change()

    def _say_hello(self, endpoint: str, now: int) -> None:
        """Send HELLO to ``endpoint``; when its connection is not up yet, retry soon.

        A node starts by saying HELLO to every configured peer before it
        fetches anything, so a HELLO that IMMEDIATE refused (the TCP connect
        still under way) is retried within milliseconds, backing off toward
        HELLO_RETRY_MS for a peer that stays down.
        """
        hello = peerwire.encode_hello(
            self.replica.node_id, self.endpoints["repl"], self.endpoints["pub"]
        )
        if self._send(self._dealers[endpoint], hello):
            self._connect_wait.pop(endpoint, None)
            self._unanswered[endpoint] = now + HELLO_RETRY_MS
            return
        wait = self._connect_wait.get(endpoint, CONNECT_RETRY_MS)
        self._connect_wait[endpoint] = min(2 * wait, HELLO_RETRY_MS)
        self._unanswered[endpoint] = now + wait

    def _idle_ms(self, now: int) -> int:
        """How long the loop may wait: TICK_MS, or less when a HELLO is due sooner."""
        due = min(self._unanswered.values(), default=now + TICK_MS)
        return max(1, min(TICK_MS, due - now))

    def _send(self, sock: zmq.asyncio.Socket, frame: bytes) -> bool:
        try:
            self._raw[sock].send(frame, zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # no connection or queue full: retried or timed out later
            return False
        finally:
            if sock is not self.pub:
                self._wake()  # a send may use up ZMQ_FD's edge: look at the sockets again

    def _messages(
        self, sock: zmq.asyncio.Socket, parse: Callable[[tuple], tuple[str, Any]]
    ) -> Iterator[tuple[list[bytes], str, Any]]:
        """Drain ``sock``; yield ``(frames, kind, payload)``; log and skip bad messages."""
        for frames in drain(self._raw[sock], DRAIN_MAX):
            parsed = read_message(frames, parse, self.max_frame, self.counters)
            if parsed is not None:
                yield frames, *parsed

    def _drain_sub(self, now: int) -> None:
        applied, ack, refusing = 0, False, self._refusing()
        for _, kind, payload in self._messages(self.sub, peerwire.parse_published):
            if kind == peerwire.ENTRIES:
                if refusing:
                    continue  # fetched again once there is space
                entries, wanted = payload
                applied += len(self.replica.receive(entries, now))
                ack = ack or wanted
            else:
                node_id, origin, state, vv, peers, logged, wall = payload
                self.replica.on_heartbeat(node_id, origin, state, vv, now, logged)
                self._on_clock(node_id, wall)
                if self.replica.node_id not in peers:
                    self._hello_again(node_id)
        self._after_apply(applied, now, urgent=ack)

    def _after_apply(self, applied: int, now: int, urgent: bool = True) -> None:
        """Announce what was applied at once; fsync it at once when ``urgent``, else soon.

        Urgent (an origin holds a reply until others log these, or a catch-up
        is on): fsync, then a heartbeat that counts toward acknowledgements.
        Otherwise a progress beat goes out before the fsync, for observers
        only (peers do not subscribe to it: they learn progress from the
        100 ms heartbeats, and receiving a beat per applied batch cost each
        node about a sixth of its CPU under replicated writes).  The fsync
        waits up to REPLICA_SYNC_MS, usually for the node's own next group
        commit: the entries are durable at their origin already, and a crash
        here loses nothing that a catch-up does not bring back.  During a
        start-up catch-up (batches are not urgent then) no fsync is scheduled
        at all: the turn to ready fsyncs what it brought, most of it already
        written back by then (:meth:`mesh.storage.log.Log.write_back`).
        """
        if applied:
            if urgent:
                self.publish_heartbeat()
            else:
                beat = peerwire.encode_progress(self.replica.heartbeat(), list(self._by_node))
                self._send(self.pub, beat)
                if self.replica.state != READY:
                    self.log.write_back()  # the turn to ready then has less to fsync
                elif self._sync_due is None:
                    self._sync_due = now + REPLICA_SYNC_MS
        self._on_change()

    def _flush(self) -> None:
        self.log.flush()
        self._sync_due = None

    def _drain_dealer(self, sock: zmq.asyncio.Socket, now: int) -> None:
        endpoint = next(e for e, s in self._dealers.items() if s is sock)
        applied = 0
        for frames, kind, payload in self._messages(sock, peerwire.parse_reply):
            if kind == peerwire.HELLO:
                node_id, origin, repl, pub = payload
                self._unanswered.pop(endpoint, None)
                self._add(node_id, repl, pub)
                self.replica.on_hello(node_id, now)
                log.info("peer %s (%s) at %s", node_id, origin, repl, extra={"peer": node_id})
            elif not self._refusing():
                node_id = next((n for n, e in self._by_node.items() if e == endpoint), None)
                if node_id is not None:
                    if payload.snapshot and snapimage.store_takes_image(self.replica):
                        chunk = peerwire.packed_batch_entries(frames[-1])
                        payload = dataclasses.replace(payload, packed=chunk)
                    ahead = self.replica.prefetch(node_id, payload)
                    if ahead is not None:  # ask for the next batch before applying this one
                        fetch = peerwire.encode_fetch(self.replica.node_id, ahead)
                        self._send(self._dealers[endpoint], fetch)
                    image = snapimage.last_chunk_image(self.replica, node_id, payload)
                    packed = snapimage.packed_image(self.replica, node_id, payload, image)
                    done = self.replica.on_batch(node_id, payload, now)
                    applied += len(done)
                    if self.replica.take_snapshot_due():
                        self._on_full_sync(snapimage.snapshot_entries(packed or image, done))
        self._tick_now = True  # send the next fetch, or judge readiness, now
        self._after_apply(applied, now, urgent=self.replica.state == READY)

    # ------------------------------------------------------------------ publishing

    def publish(self, origin: str, records: list[bytes], ack: bool = False) -> None:
        """PUBlish this node's own new entries (encoded), in messages of bounded size.

        ``ack``: a reply waits for others to log these (w > 1); receivers then
        heartbeat at once instead of at their next beat.
        """
        start, size = 0, 0
        for i, record in enumerate(records):
            size += len(record)
            if size >= PUB_BATCH_BYTES:
                frame = peerwire.encode_entries(origin, records[start : i + 1], ack)
                self._send(self.pub, frame)
                start, size = i + 1, 0
        if start < len(records):
            self._send(self.pub, peerwire.encode_entries(origin, records[start:], ack))

    def publish_heartbeat(self, flush: bool = True) -> None:
        """PUBlish the replica's heartbeat now, after flushing the log: its vv is logged.

        Without ``flush`` the beat says its vv is not logged (it then counts
        toward no acknowledgement).
        """
        if flush:
            self._flush()
        beat = {**self.replica.heartbeat(), **self.beat_overrides}
        self._send(self.pub, peerwire.encode_heartbeat(beat, list(self._by_node), flush))

    def close(self) -> None:
        """Close every socket."""
        self.dialer.close()
        for sock in (self.pub, self.repl, self.sub, *self._dealers.values()):
            sock.close(0)
