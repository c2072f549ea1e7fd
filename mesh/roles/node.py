"""The node process: store + log + commands + replication behind ZeroMQ sockets.

One asyncio loop (``zmq.asyncio``) does everything:

1. **Recover** (state ``replaying``): load the latest snapshot, replay the log
   tail after it, rebuild the version vector, resume this origin's ``seq`` and
   the HLC.
2. **Catch up** (state ``catching-up``): bind the sockets, meet the peers and
   fetch what they have that this node lacks (:mod:`mesh.roles.peering`); data ops
   get NOT_READY meanwhile.  Then state ``ready``.
3. **Serve**: await readability of the client ROUTER socket, then drain it with
   non-blocking receives (up to ``batch_max`` requests: one await per batch,
   not per message), execute every request, append the batch's mutations to
   the log with one write and one fsync (group commit), PUBlish them to the
   peers, and only then send the replies.  No reply, for a read or a write,
   leaves before the fsync of every write that came before it in the batch.
   A write asked with ``w`` > 1 waits for that many nodes (:mod:`mesh.core.acks`).
4. **Housekeeping**: TTL sweep, ``interval`` fsync, snapshots and compaction
   (:mod:`mesh.storage.compaction`), a full disk (:mod:`mesh.roles.diskfull`).

SIGTERM or SIGINT stops serving, fsyncs the log (a node without peers then
snapshots its store and drops the log: :mod:`mesh.roles.stopsave`) and
returns, so the process exits 0.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from functools import partial
from typing import Any

import zmq
import zmq.asyncio

from mesh.core import envelope, wire
from mesh.core.acks import PendingAcks, Waiting, nodes_needed
from mesh.core.clock import HybridClock, monotonic_ms, wall_ms
from mesh.core.commands import CommandExecutor
from mesh.core.errors import ProtocolError
from mesh.core.replication import READY, Replica
from mesh.core.store import Store
from mesh.core.tombstones import StableFrontier
from mesh.roles import groupcommit
from mesh.roles.binding import bind
from mesh.roles.clientplane import protect
from mesh.roles.config import NodeConfig
from mesh.roles.digestwait import DigestWait, Held
from mesh.roles.diskfull import RETRY_MS, DiskGuard
from mesh.roles.fronts import start_node_fronts, stop_node_fronts
from mesh.roles.node_metrics import PROGRESS_CHECK_MS, CatchUpProgress, RequestMetrics
from mesh.roles.node_status import ClockWatch, cluster, health, stats, write_status_file
from mesh.roles.peering import Peering
from mesh.roles.stopsave import save_on_stop, snapshot_meta
from mesh.roles.trust import (
    PUB_DOMAIN,
    REPL_DOMAIN,
    AnyZapHandler,
    ZapHandler,
    log_refused,
    peer_trust,
    start_peer_zap,
)
from mesh.roles.tuning import CatchUpGc, HeapTrim
from mesh.roles.zsock import drain, readable, send_frames, socket_fd
from mesh.storage.compaction import SnapshotPolicy
from mesh.storage.datadir import (
    lock_data_dir,
    mark_clean_shutdown,
    open_identity,
    take_clean_shutdown,
)
from mesh.storage.log import Log
from mesh.storage.replay import recover
from mesh.storage.salvage import rotate_if_damaged

log = logging.getLogger(__name__)

REPLY_HWM = 100_000
#: how often held w > 1 replies are checked for their timeout, while any are held
ACK_CHECK_MS = 5
CLOCK_CHECK_MS = 100
#: longest _serve runs read-only batches back to back without letting other tasks
#: run (after a batch of writes it always lets them: see _serve)
SERVE_YIELD_S = 0.002
#: Hard per-frame ceiling given to libzmq: larger frames drop the connection
#: instead of being buffered; frames up to it get a clear TOO_LARGE reply.
ZMQ_FRAME_CEILING_FACTOR = 2
#: Ops a node answers before it is ready.
ALWAYS_SERVED = frozenset({"PING", "STATS", "HEALTH", "CLUSTER"})


class Node:
    """A PyCache node; ``await run()`` serves until ``stop()``."""

    def __init__(self, config: NodeConfig, ctx: zmq.asyncio.Context | None = None) -> None:
        self.config = config.validate()
        self.ctx = ctx or zmq.asyncio.Context()
        self.state = "starting"
        self._lock = lock_data_dir(config.data_dir)
        clean = take_clean_shutdown(config.data_dir)
        # Under fsync=always nothing this node published can be missing from its
        # log; otherwise a crash may have lost published seqs, and reusing them
        # would make peers ignore new writes: start a new incarnation instead.
        rotate = config.fsync != "always" and not clean
        self.origin = open_identity(config.data_dir, config.node_id, rotate=rotate)
        self.store = Store(
            max_keys=config.max_keys,
            max_memory=config.max_memory,
            tombstone_horizon_ms=config.tombstone_horizon_ms,
        )
        self.log = Log(
            config.data_dir,
            fsync=config.fsync,
            fsync_interval_ms=config.fsync_interval_ms,
            segment_bytes=config.segment_bytes,
            retention_bytes=config.retention_bytes,
        )
        self.clock = HybridClock()
        reports = (partial(report, self) for report in (stats, health, cluster))
        self.commands = CommandExecutor(self.store, self.clock, self.origin, 0, wall_ms, *reports)
        self.replica = Replica(config.node_id, self.origin, self.store, self.log, self.clock)
        self.stable = StableFrontier()  # tombstones go once every member moved past them
        self.clockwatch = ClockWatch(self)
        self.disk = DiskGuard(self)
        self.peering: Peering | None = None
        self.acks = PendingAcks()
        self._acks_held = asyncio.Event()  # set while replies wait for acknowledgements
        self.digest_wait = DigestWait(self.store, self._answer_held)
        self.keys, self.membership = peer_trust(config)
        self._zap: AnyZapHandler | None = None
        counted = ("requests", "bad_requests", "dropped_replies", "expired_requests")
        self.counters = dict.fromkeys((*counted, "refused_handshakes", "refused_clients"), 0)
        self.metrics, self.progress = RequestMetrics(), CatchUpProgress(self)  # node_metrics
        self.started = time.monotonic()
        self.snapshots = SnapshotPolicy(
            self.log, config.snapshot_every, config.snapshot_bytes, config.retention_bytes
        )
        self._stopped = asyncio.Event()
        self._api: zmq.asyncio.Socket | None = None
        self._raw_api: zmq.Socket | None = None
        self._wakeup: asyncio.Future | None = None
        self._gc = CatchUpGc()
        self._heap = HeapTrim()
        self.commits = 0  # group commits (batches with writes) so far
        self.taken_more = 0  # requests the last group commit drained past its batch
        self.endpoint = config.api
        self.http: Any = None  # mesh.roles.edge.HttpServer with --http-port
        self.resp: Any = None  # mesh.roles.resp_server.RespServer with --resp

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """Rebuild memory from the latest snapshot plus the log tail; return entries applied."""
        self.state = "replaying"
        found = recover(self.log, self.store)
        # A damaged log may have lost this origin's published seqs: never reuse them.
        self.origin = rotate_if_damaged(self.config.data_dir, self.config.node_id, self.origin)
        self.commands.origin = self.origin
        self.replica = Replica(
            *(self.config.node_id, self.origin, self.store, self.log, self.clock),
            vv=found.vv,
            floor=found.floor,
            held=found.held,
            now_ms=monotonic_ms(),
            max_offset_ms=self.config.max_clock_offset_ms,
            members=self.other_members if self.membership else None,
        )
        self.commands.seq = found.vv.get(self.origin, 0)
        self.clock.observe(found.max_hlc)
        self.snapshots.start(found.snapshot_offset)
        log.info("%s; %d live keys; seq %d", found, len(self.store), self.commands.seq)
        return found.applied

    # ------------------------------------------------------------------ serving

    async def run(self) -> None:
        """Recover, bind, catch up, and serve until :meth:`stop`; always closes the log."""
        try:
            self.recover()
            self._start_zap()
            self._bind()
            await start_node_fronts(self, self._http_backend)  # HTTP API, RESP
            self.state = "catching-up"
            self._gc.pause()
            write_status_file(self)
            node_id = self.config.node_id
            log.info("node %s catching up; api %s; origin %s", node_id, self.endpoint, self.origin)
            assert self.peering is not None
            timers = [
                (self.config.sweep_interval_ms, self._sweep),
                (CLOCK_CHECK_MS, self.clockwatch.check),
                (RETRY_MS, self.disk.check),
                (PROGRESS_CHECK_MS, self.progress.check),
            ]
            if self.config.fsync == "interval":
                timers.append((self.config.fsync_interval_ms, self.log.tick))
            tasks: list[asyncio.Task[Any]] = [asyncio.create_task(self._serve())]
            tasks.append(asyncio.create_task(self.peering.run()))
            tasks += [asyncio.create_task(self._every(ms, action)) for ms, action in timers]
            tasks.append(asyncio.create_task(self._expire_acks()))
            stop = asyncio.create_task(self._stopped.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._gc.resume()
            try:
                await stop_node_fronts(self)
            finally:
                self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to finish the current batch, fsync and return."""
        self._stopped.set()

    def _bind(self) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 200)
        # Pipelining clients may have thousands of replies due at once; a ROUTER
        # silently drops replies past its send high-water mark.
        sock.setsockopt(zmq.SNDHWM, REPLY_HWM)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        max_frame = self.config.limits.request_bytes * ZMQ_FRAME_CEILING_FACTOR
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
        self._zap = protect(
            sock,
            "api",
            self.config.api,
            self.config.client_keys,
            self._zap,
            lambda: ZapHandler(self.ctx, log_refused(self._refused_handshake)),
        )
        bind(sock, "api", self.config.api)
        self._api, self._raw_api = sock, zmq.Socket.shadow(sock.underlying)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._http_backend = self.endpoint
        if self.config.client_keys:
            # The node's own HTTP API (authenticated by its tokens) reaches this
            # socket in-process: inproc connections skip CURVE and ZAP.
            self._http_backend = f"inproc://api-{self.config.node_id}-{id(self):x}"
            sock.bind(self._http_backend)
        self.peering = Peering(
            self.replica,
            self.log,
            self.ctx,
            repl=self.config.repl,
            pub=self.config.pub,
            peers=list(self.config.peers),
            data_dir=self.config.data_dir,
            max_frame=max_frame,
            pub_hwm=self.config.pub_hwm,
            on_change=self._on_replication,
            on_full_sync=self._save_full_sync,
            keys=self.keys,
            membership=self.membership,
            on_clock=self.clockwatch.heard,
            on_disk_error=self.disk.replica_failed,
            refusing=lambda: self.disk.full,
        )

    def _start_zap(self) -> None:
        self._zap = start_peer_zap(self.ctx, self.membership, self._refused_handshake)

    def _refused_handshake(self, domain: str, key: bytes) -> None:
        peer = domain in (REPL_DOMAIN, PUB_DOMAIN)
        self.counters["refused_handshakes" if peer else "refused_clients"] += 1

    def cluster_size(self) -> int:
        """The nodes ``w=quorum`` and ``w=all`` count: the members, or all known (insecure)."""
        if self.membership is not None:
            return len(self.membership.ids() | {self.config.node_id})
        return 1 + len(self.replica.peers)

    def _on_replication(self) -> None:
        if self.state == "catching-up" and self.replica.state == READY:
            self.state = "ready"
            self._gc.resume()
            self.clockwatch.check()  # clock-offset instead, when the peers say so
            write_status_file(self)
            log.info("node %s ready (%d live keys)", self.config.node_id, len(self.store))
        self.commands.seq = max(self.commands.seq, self.replica.vv.get(self.origin, 0))
        self._check_acks()

    async def _serve(self) -> None:
        assert self._raw_api is not None
        raw, batch_max = self._raw_api, self.config.batch_max
        loop = asyncio.get_running_loop()
        # ZMQ_FD is edge-triggered: wait on it only after ZMQ_EVENTS says the
        # socket is empty, and re-check after every wake-up (see _wake_serve).
        fd = socket_fd(raw)
        loop.add_reader(fd, self._wake_serve)
        yielded = loop.time()
        try:
            while True:
                if not readable(raw):
                    self._wakeup = loop.create_future()
                    await self._wakeup
                    yielded = loop.time()
                    continue
                commits = self.commits
                batch = drain(raw, batch_max, views=True)
                if batch:
                    started, self.taken_more = time.perf_counter(), 0
                    self._send_replies(self.handle_batch(batch))
                    taken = len(batch) + self.taken_more
                    self.metrics.latency.observe(time.perf_counter() - started, taken)
                if self.commits != commits or loop.time() - yielded >= SERVE_YIELD_S:
                    # A client that never lets the socket run dry would starve
                    # replication and the timers: give them a turn.  After a
                    # group commit at once: its fsync held the loop while peers'
                    # entries queued (at 10,000 writes/s over three nodes,
                    # waiting for 2 ms of batches doubled the replication lag).
                    await asyncio.sleep(0)
                    yielded = loop.time()
        finally:
            loop.remove_reader(fd)

    def _wake_serve(self) -> None:
        """Let :meth:`_serve` look at its socket again: when ZMQ_FD turns readable, and after
        every send on the API socket from outside it (a send may use up the edge it waits for)."""
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def handle_batch(self, batch: list[list[bytes]]) -> list[list[bytes]]:
        """Execute a batch of requests; log, fsync and publish its writes; return replies.
        Requests that arrive while its large writes go to disk join it
        (:mod:`mesh.roles.groupcommit`)."""
        return groupcommit.handle_batch(self, batch)

    def run_requests(self, batch: list[list[bytes]], held: list[Waiting]) -> list[list[bytes]]:
        """Execute each request of ``batch`` (writes applied, not logged); return the replies
        ready now (a write waiting for acks goes to ``held``)."""
        replies = []
        for frames in batch:
            if len(frames) == 3 and frames[1] == envelope.BUNDLE_MAGIC:
                reply = self._handle_bundle(frames, held)
            else:
                reply = self._handle_one(frames, held)
            if reply is not None:
                replies.append(reply)
        self.counters["requests"] += len(batch)
        return replies

    @property
    def api_socket(self) -> zmq.Socket | None:
        """The API socket as a plain (blocking-capable) socket, once bound."""
        return self._raw_api

    def _handle_bundle(self, frames: list[bytes], held: list[Waiting]) -> list[bytes] | None:
        """Run a bundle of requests from a balancer; return one bundle of their replies.

        Each request runs exactly as if it had come alone (its envelope is the
        bundle's routing id plus its own frames); a write waiting for acks is
        answered later on its own, outside the bundle.
        """
        routing = frames[0]
        try:
            messages = envelope.unpack_bundle(frames[2], self.config.limits.max_frames - 1)
        except ProtocolError as exc:
            self.counters["bad_requests"] += 1
            return [routing, wire.encode_error(None, exc.code, exc.reason)]
        self.counters["requests"] += len(messages) - 1  # the bundle itself counts one
        replies = []
        for message in messages:
            reply = self._handle_one([routing, *message], held)
            if reply is not None:
                replies.append(reply[1:])
        return [routing, *envelope.pack_bundle(replies)] if replies else None

    def _handle_one(self, frames: list[bytes], held: list[Waiting]) -> list[bytes] | None:
        """Run one request; return its reply (``frames`` reused), or None when there is none yet."""
        count, limits = len(frames), self.config.limits
        if count < 2:
            self.counters["bad_requests"] += 1
            return None  # no routing id: nothing to answer to
        if count > limits.max_frames:
            self.counters["bad_requests"] += 1
            reason = (
                f"a message of {count} frames (routing id included) is over the "
                f"limit of {limits.max_frames}"
            )
            return [frames[0], wire.encode_error(None, wire.E_MALFORMED, reason)]
        try:
            request = wire.decode_request(frames[-1], limits)
        except ProtocolError as exc:
            self.counters["bad_requests"] += 1
            frames[-1] = wire.encode_error(exc.request_id, exc.code, exc.reason)
            return frames
        self.metrics.ops[request.op] += 1
        deadline = envelope.frame_deadline(frames[-2])
        if deadline is not None and wall_ms() > deadline:
            self.counters["expired_requests"] += 1
            reason = "the balancer's deadline passed before the node could run the request"
            frames[-1] = wire.encode_error(request.id, wire.E_DEADLINE, reason)
            self.metrics.fail(request.op, "DEADLINE")
            return frames
        if self.state != "ready" and request.op not in ALWAYS_SERVED:
            refusal = self.disk.refusal(request)  # None: a read on a disk-full node
            if refusal is not None:
                frames[-1] = refusal
                self.metrics.fail(request.op, "REFUSED")
                return frames
        if self.digest_wait.hold(frames, request):
            return None
        return self._execute(frames, request, held)

    def _execute(
        self, frames: list[bytes], request: wire.Request, held: list[Waiting]
    ) -> list[bytes] | None:
        """Run a decoded request; its reply (``frames`` reused), or None when held for acks."""
        seq_before = self.commands.seq
        try:
            result = self.commands.execute(request)
        except ProtocolError as exc:  # the op refused (e.g. NOT_INTEGER): nothing changed
            frames[-1] = wire.encode_error(request.id, exc.code, exc.reason)
            return frames
        except Exception:
            log.exception("internal error on %r", request)
            frames[-1] = wire.encode_error(request.id, wire.E_INTERNAL, "internal error")
            self.metrics.fail(request.op, "INTERNAL")
            return frames
        if self.commands.seq > seq_before:
            w = request.w or self.config.w
            if w != 1 and (needed := nodes_needed(w, self.cluster_size())) > 1:
                deadline = monotonic_ms() + self.config.ack_timeout_ms
                head, op = frames[:-1], request.op
                held.append(
                    Waiting(self.commands.seq, needed, deadline, head, request.id, result, op)
                )
                return None
        frames[-1] = wire.encode_reply(request.id, result)
        return frames

    def _answer_held(self, held: list[Held]) -> None:
        """Run and answer the STATS and CLUSTER requests :mod:`~mesh.roles.digestwait` held."""
        replies = [self._execute(frames, request, []) for frames, request in held]
        self._send_replies([reply for reply in replies if reply is not None])
        self._wake_serve()

    def _check_acks(self) -> None:
        if not len(self.acks):
            return
        done, expired = self.acks.resolve(self.replica.logged_by, monotonic_ms())
        replies = [[*w.envelope, wire.encode_reply(w.request_id, w.result)] for w in done]
        for w, have in expired:
            self.metrics.fail(w.op, "NOT_ACKNOWLEDGED")
            reason = f"logged on {have} of the {w.needed} nodes required before the timeout"
            replies.append(
                [*w.envelope, wire.encode_error(w.request_id, wire.E_NOT_ACKNOWLEDGED, reason)]
            )
        if replies:
            self._send_replies(replies)
            self._wake_serve()

    def _send_replies(self, replies: list[list[bytes]]) -> None:
        assert self._raw_api is not None
        for reply in replies:
            try:
                send_frames(self._raw_api, reply)
            except zmq.ZMQError:  # peer gone or its queue full: the client times out
                self.counters["dropped_replies"] += 1

    def hold_ack(self, waiting: Waiting) -> None:
        """Hold a write's reply until enough nodes logged it, or its timeout."""
        self.acks.hold(waiting)
        self._acks_held.set()

    async def _expire_acks(self) -> None:
        # Acknowledgements resolve as heartbeats arrive (_on_replication); this only
        # times out the held replies, and sleeps while none are held: a timer every
        # ACK_CHECK_MS regardless cost an idle node a wake-up 200 times a second.
        while True:
            if not len(self.acks):
                self._acks_held.clear()
                await self._acks_held.wait()
            await asyncio.sleep(ACK_CHECK_MS / 1000)
            self._check_acks()

    async def _every(self, period_ms: int, action: Any) -> None:
        while True:
            await asyncio.sleep(period_ms / 1000)
            action()

    def other_members(self) -> set[str]:
        """The node ids the trust keys name as members, but this node's (empty without keys)."""
        return self.membership.ids() - {self.config.node_id} if self.membership else set()

    def _sweep(self) -> None:
        self.store.sweep()  # TTLs, and tombstones past the horizon
        self._heap.after_growth(len(self.store))
        self.stable.collect(self.replica)

    def snapshot(self, entries: Any = None) -> bool:
        """Snapshot the store (its ``entries``, when given) and drop the log it covers;
        False when the disk had no room for it (it is tried again later)."""
        path = self.snapshots.take(self.store, snapshot_meta(self), entries=entries)
        self._heap.now()
        self.clockwatch.busy()  # a snapshot blocks the loop: no stall for the guards
        return path is not None

    def _save_full_sync(self, entries: Any) -> None:
        """Snapshot what a full sync brought: only its snapshot holds it on disk.  No
        room for it raises ENOSPC, and the full sync is undone (the peering loop's
        disk-full path, :meth:`DiskGuard.replica_failed`): entries logged after an
        image the disk lacks would make a restart's replay take this node for
        complete without it."""
        if not self.snapshot(entries):
            raise OSError(errno.ENOSPC, "no room for the snapshot of a full sync")

    def _shutdown(self) -> None:
        try:
            self.log.sync()
            if self.state not in ("starting", "replaying"):  # the store was recovered
                save_on_stop(self)
            mark_clean_shutdown(self.config.data_dir)
        finally:
            self.close()
            log.info("node %s stopped", self.config.node_id)

    def close(self) -> None:
        """Close the log and sockets and release the data folder (idempotent)."""
        self.digest_wait.cancel()
        self.log.close()
        if self.peering is not None:
            self.peering.close()
            self.peering = None
        if self._api is not None:
            self._api.close()
            self._api = None
        if self._zap is not None:  # after its sockets: the process's one ZAP handler
            self._zap.stop()
            self._zap = None
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1
        self.state = "stopped"
