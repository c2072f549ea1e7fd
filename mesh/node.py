"""The node process: store + log + commands behind a ZeroMQ ROUTER socket.

One asyncio loop (``zmq.asyncio``) does everything:

1. **Recover**: load the latest snapshot, replay the log tail after it, resume
   this origin's ``seq`` and the HLC from what was replayed.
2. **Serve**: await readability of the client ROUTER socket, then drain it with
   non-blocking receives (up to ``batch_max`` requests: one await per batch,
   not per message), execute every request, append the batch's mutations to
   the log with one write and one fsync (group commit), and only then send the
   replies.  No reply, for a read or a write, leaves before the fsync of every
   write that came before it in the batch, so a client never sees a value that
   could vanish in a crash.
3. **Housekeeping** timers: active TTL sweep, ``interval`` fsync, snapshots
   plus log compaction every ``snapshot_every`` entries.

SIGTERM or SIGINT stops serving, fsyncs the log and returns, so the process
exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from mesh import wire
from mesh.clock import HybridClock, wall_ms
from mesh.commands import Commands
from mesh.config import NodeConfig
from mesh.datadir import open_identity, write_atomically
from mesh.errors import ProtocolError
from mesh.log import Log
from mesh.store import Store

log = logging.getLogger(__name__)

PROGRESS_EVERY = 250_000
STATUS_FILE = "node.json"
REPLY_HWM = 100_000
#: Hard per-frame ceiling given to libzmq: larger frames drop the connection
#: instead of being buffered; frames up to it get a clear TOO_LARGE reply.
ZMQ_FRAME_CEILING_FACTOR = 2


class Node:
    """A single PyCache node; ``await run()`` serves until ``stop()``."""

    def __init__(self, config: NodeConfig, ctx: zmq.asyncio.Context | None = None) -> None:
        self.config = config.validate()
        self.ctx = ctx or zmq.asyncio.Context()
        self.state = "starting"
        self.origin = open_identity(config.data_dir, config.node_id)
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
        self.commands = Commands(self.store, self.clock, self.origin, 0, wall_ms, self.stats)
        self.counters = {"requests": 0, "bad_requests": 0, "dropped_replies": 0}
        self._started = time.monotonic()
        self._snapshot_offset = 0
        self._seqs: dict[str, int] = {}
        self._stopped = asyncio.Event()
        self._api: zmq.asyncio.Socket | None = None
        self.endpoint = config.api

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """Rebuild memory from the latest snapshot plus the log tail; return entries applied."""
        self.state = "replaying"
        started = time.perf_counter()
        applied, start_offset, max_hlc, seqs = 0, 0, 0, {}
        snapshot = self.log.load_snapshot()
        if snapshot is not None:
            meta, entries = snapshot
            start_offset = int(meta.get("offset", 0))
            max_hlc = int(meta.get("max_hlc", 0))
            seqs = dict(meta.get("vv", {}))
            for mutation in entries:
                self.store.apply(mutation)
                applied += 1
            log.info("loaded snapshot at offset %d: %d entries", start_offset, applied)
        for mutation in self.log.replay(start_offset):
            self.store.apply(mutation)
            applied += 1
            if applied % PROGRESS_EVERY == 0:
                log.info("replaying: %d entries applied", applied)
        seqs.update({o: max(s, seqs.get(o, 0)) for o, s in self.log.max_seqs().items()})
        self.commands.seq = seqs.get(self.origin, 0)
        self._seqs = seqs
        self.clock.observe(max(max_hlc, self.log.max_hlc))
        self._snapshot_offset = start_offset
        elapsed = time.perf_counter() - started
        rate = applied / elapsed if elapsed > 0 else 0.0
        log.info(
            "recovered %d entries in %.2f s (%.0f entries/s); %d live keys; seq %d",
            applied,
            elapsed,
            rate,
            len(self.store),
            self.commands.seq,
        )
        return applied

    # ------------------------------------------------------------------ serving

    async def run(self) -> None:
        """Recover, bind, and serve until :meth:`stop`; always closes the log."""
        try:
            self.recover()
            self._api = self._bind_api()
            self.state = "ready"
            self.endpoint = self._api.getsockopt(zmq.LAST_ENDPOINT).decode()
            self._write_status()
            log.info(
                "node %s ready on %s (origin %s)", self.config.node_id, self.endpoint, self.origin
            )
            tasks = [
                asyncio.create_task(self._serve()),
                asyncio.create_task(self._every(self.config.sweep_interval_ms, self._sweep)),
            ]
            if self.config.fsync == "interval":
                tasks.append(
                    asyncio.create_task(self._every(self.config.fsync_interval_ms, self.log.tick))
                )
            stop = asyncio.create_task(self._stopped.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._shutdown()

    def _write_status(self) -> None:
        """Write ``<data-dir>/node.json``: pid, state and the endpoint actually bound.

        With ``--api tcp://127.0.0.1:*`` the OS picks the port; tests and tools
        read it from here.
        """
        status = {"pid": os.getpid(), "state": self.state, "api": self.endpoint}
        write_atomically(Path(self.config.data_dir) / STATUS_FILE, json.dumps(status).encode())

    def stop(self) -> None:
        """Ask :meth:`run` to finish the current batch, fsync and return."""
        self._stopped.set()

    def _bind_api(self) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 200)
        # Pipelining clients may have thousands of replies due at once; a ROUTER
        # silently drops replies past its send high-water mark.
        sock.setsockopt(zmq.SNDHWM, REPLY_HWM)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.limits.request_bytes * ZMQ_FRAME_CEILING_FACTOR)
        sock.bind(self.config.api)
        return sock

    async def _serve(self) -> None:
        assert self._api is not None
        raw = zmq.Socket.shadow(self._api.underlying)
        batch_max = self.config.batch_max
        while True:
            await self._api.poll(flags=zmq.POLLIN)
            batch: list[list[bytes]] = []
            while len(batch) < batch_max:
                try:
                    batch.append(raw.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            if batch:
                self._send_replies(raw, self.handle_batch(batch))

    def handle_batch(self, batch: list[list[bytes]]) -> list[list[bytes]]:
        """Execute a batch of requests; log and fsync its writes; return the replies."""
        replies = []
        for frames in batch:
            reply = self._handle_one(frames)
            if reply is not None:
                replies.append(reply)
        self.counters["requests"] += len(batch)
        pending = self.commands.take_pending()
        if pending:
            self.log.append(pending)
            self.log.flush()
            self._maybe_snapshot()
        return replies

    def _handle_one(self, frames: list[bytes]) -> list[bytes] | None:
        if len(frames) < 2:
            self.counters["bad_requests"] += 1
            return None  # no routing id: nothing to answer to
        if len(frames) > self.config.limits.max_frames:
            self.counters["bad_requests"] += 1
            reason = (
                f"a message of {len(frames)} frames (routing id included) is over the "
                f"limit of {self.config.limits.max_frames}"
            )
            return [frames[0], wire.encode_error(None, wire.E_MALFORMED, reason)]
        envelope, payload = frames[:-1], frames[-1]
        try:
            request = wire.decode_request(payload, self.config.limits)
        except ProtocolError as exc:
            self.counters["bad_requests"] += 1
            return [*envelope, wire.encode_error(exc.request_id, exc.code, exc.reason)]
        try:
            result = self.commands.execute(request)
        except Exception:
            log.exception("internal error on %r", request)
            return [*envelope, wire.encode_error(request.id, wire.E_INTERNAL, "internal error")]
        return [*envelope, wire.encode_reply(request.id, result)]

    def _send_replies(self, raw: zmq.Socket, replies: list[list[bytes]]) -> None:
        for reply in replies:
            try:
                raw.send_multipart(reply, zmq.NOBLOCK)
            except zmq.ZMQError:  # peer gone or its queue full: the client times out
                self.counters["dropped_replies"] += 1

    # ------------------------------------------------------------------ housekeeping

    async def _every(self, period_ms: int, action: Any) -> None:
        while True:
            await asyncio.sleep(period_ms / 1000)
            action()

    def _sweep(self) -> None:
        self.store.sweep()

    def _maybe_snapshot(self) -> None:
        every = self.config.snapshot_every
        if every and self.log.next_offset - self._snapshot_offset >= every:
            self.snapshot()

    def snapshot(self) -> None:
        """Write a snapshot of the store and drop the log segments it covers."""
        started = time.perf_counter()
        meta = {"vv": self.version_vector(), "max_hlc": self.clock.last}
        path = self.log.write_snapshot(self.store.entries(), meta)
        self._snapshot_offset = self.log.next_offset
        removed = self.log.compact()
        log.info(
            "snapshot %s in %.2f s; %d segments removed",
            path.name,
            time.perf_counter() - started,
            len(removed),
        )

    def version_vector(self) -> dict[str, int]:
        """Origin -> highest seq applied (for now every entry is this node's own)."""
        return {**self._seqs, self.origin: self.commands.seq}

    def stats(self) -> dict:
        """The STATS reply: identity, state, store, log and request counters."""
        return {
            "node_id": self.config.node_id,
            "origin": self.origin,
            "state": self.state,
            "seq": self.commands.seq,
            "uptime_ms": int((time.monotonic() - self._started) * 1000),
            "digest": self.store.digest(),
            **self.store.stats(),
            **self.counters,
            "log": {
                "fsync": self.config.fsync,
                "next_offset": self.log.next_offset,
                "first_offset": self.log.first_offset(),
            },
        }

    def _shutdown(self) -> None:
        try:
            self.log.sync()
        finally:
            self.log.close()
            if self._api is not None:
                self._api.close()
            self.state = "stopped"
            log.info("node %s stopped", self.config.node_id)


def run_node(config: NodeConfig) -> None:
    """Run a node in this process until SIGTERM or SIGINT; returns after a clean stop."""

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        node = Node(config, ctx)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.stop)
        try:
            await node.run()
        finally:
            ctx.term()

    asyncio.run(main())
