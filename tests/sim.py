"""Deterministic simulation of PyCache replication, as FoundationDB and TigerBeetle test theirs.

The whole cluster runs in one process on a virtual clock: 3 to 5 nodes, each a
real :class:`mesh.core.store.Store`, :class:`mesh.core.clock.HybridClock` and
:class:`mesh.core.replication.Replica` over a model log, driven the way
``mesh.roles.peering`` drives them, and a seeded network between them.  Every
random choice comes from one ``random.Random(seed)``; events run from a heap
ordered by (virtual time, insertion counter); nothing reads the real clock.
So ``run(seed)`` always does exactly the same thing, and a failure names the
seed that replays it::

    python tests/sim.py --seed 1234 --trace

What is modelled
----------------
Node
    A client write (SET, DEL of a live key, MSET) becomes full-state mutations
    stamped ``origin = "<node>/<incarnation>"``, ``seq = vv[origin] + 1 ...``
    and ``hlc = clock.now()``, as :mod:`mesh.core.commands` does; they are applied,
    ``commit_local``-ed, fsynced, and only then PUBlished to every peer and
    recorded as acknowledged (w=1).  Clients write to ready nodes (as the
    balancer does), and now and then to one still catching up.  A PUB batch
    goes to ``receive``; a FETCH to ``serve``, whose BATCH goes back to
    ``on_batch``; after that, ``take_snapshot_due`` persists a snapshot.
    Heartbeats go out every 100 ms and after every applied batch.  ``poll``
    runs after every event and on a per-node tick of 20 to 50 ms.
Log and disk
    Records in append order with a synced prefix.  Local writes fsync before
    they are acknowledged; replicated batches fsync at once or (``torn``) only
    at the node's next heartbeat tick.  A snapshot (store entries, vv, floor, log position) is
    taken after a full sync and on compaction, which then drops some or all of
    the log prefix it covers and raises the log's ``floor()``.
Faults (until the heal)
    Message drop, duplication, delay (1..``delay_ms``) and reordering (``slow``:
    an extra delay of up to ``slow_ms``); partitions (a group cut off from the
    rest, both ways or one way, in-flight messages lost); crash-restart keeping
    the disk (the unsynced log tail is lost, or a random prefix of it survives:
    a torn tail), at a random time or right after a deferred fsync whose vv a
    heartbeat already advertised; crash losing the whole disk (a new
    incarnation, empty store); per-node clock skew of up to ``skew_ms`` either
    way, and clock steps (a wall clock jumping to another skew, backwards
    too).  Pauses (``pause``, a SIGSTOP: the node's timers, the messages and
    client requests to it wait, then run in order; drawn at random since
    ``tests/simfaults.py``'s ``pauses``); every node runs its lag guard
    (:mod:`mesh.core.lagguard`) on its ticks and heartbeats.  Messages are
    bound to the receiver's process (its ``life``): as
    with TCP connections, nothing sent to a process reaches its successor.
    Faults added since, each drawn from a random stream of its own (a seed
    with them off replays as before): a record cut out of the middle of a
    log, a memory limit and tombstone collection (``tests/simfaults.py``),
    peers found by HELLO (``tests/simhello.py``), concurrent INCRBYs of
    counters on every node (``tests/simcounters.py``, checked exact at the end),
    SETs with a TTL, EXPIREs and PERSISTs (``tests/simttl.py``: an expired key
    leaves a tombstone of its version, which the checks below already take).
Heal and settle
    At ``duration_ms`` every partition heals, every down node restarts, drops,
    duplicates and long delays stop (short random delays stay) and clients
    stop; the cluster then runs until every node is ready with equal digests
    and equal version vectors, within ``SETTLE_MS`` of virtual time.

What is checked
---------------
1. Every acknowledged write is present on every node after the heal: the
   version the node holds for the key (live or tombstone) is >= the write's
   ``(hlc, origin)``.  The one excuse is a lost disk: with w=1 a write that no
   other node held durably (snapshot or synced log, newer versions of the key
   included) when its origin lost its disk is gone by design; such writes are
   counted in ``stats["excused"]`` and every other acknowledged write of the
   lost incarnation must survive.
2. All ``store.digest()`` equal (and all version vectors, ignoring zeros).
3. No key's version goes backwards on a node: after every delivery or write,
   for the keys it carried, and on every heartbeat tick for all the node's
   keys (a key, once held, must stay held, unless a memory limit or tombstone
   collection, ``tests/simfaults.py``, may drop it: then it must not come back
   older).  Across a crash-restart keeping the disk the node legitimately
   loses replicated state whose log tail was unsynced: there the check is
   that the rebuilt store holds, for every key, at least the version of the
   last acknowledged write this node originated on it; then the watermarks
   restart from the rebuilt store.  After a disk loss they restart empty.
4. A node's own write wins locally (its HLC is above everything it applied).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mesh.core.acks import PendingAcks, Waiting, nodes_needed
from mesh.core.catchup import Batch, Fetch
from mesh.core.clock import HybridClock
from mesh.core.lagguard import LagGuard
from mesh.core.mutation import Mutation
from mesh.core.replication import READY, Replica
from mesh.core.store import Store
from mesh.core.tombstones import StableFrontier

if __package__ in (None, ""):  # run as a script (``python tests/sim.py --seed N``)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import simcounters, simfaults, simhello, simttl  # noqa: E402
from tests.simmodel import (  # noqa: E402
    Params,
    Result,
    SimFailure,
    SimLog,
    SimNode,
    Snapshot,
    Version,
    Write,
    held,
    more_params,
    random_params,
)

WALL_EPOCH_MS = 1_700_000_000_000
"""Wall-clock ms at virtual time 0 (skew moves each node's wall off it)."""
HEARTBEAT_MS = 100
CHECK_MS = 50
"""How often the settle phase checks for convergence."""
SETTLE_MS = 40_000
"""Virtual ms after the heal by which the cluster must have converged."""
WRITE_TRIES = 60
"""How often a scheduled write that finds no ready node is tried again (every
WRITE_RETRY_MS, past the heal if need be) before the run fails."""
WRITE_RETRY_MS = (200, 400)

ACK_TIMEOUT_MS = 2000
"""A w > 1 write not logged by enough nodes by then is NOT_ACKNOWLEDGED (``ack_timeout_ms``)."""

PUB, HB, FETCH, BATCH = "pub", "hb", "fetch", "batch"
PUB_ACK = "pub_ack"
"""A PUB whose origin holds a reply until others log it (``["E", ..., ack=True]``)."""

STATS = (
    "sent",  # messages handed to the network
    "dropped",  # dropped at send: loss, partition or a test's rule
    "duplicated",
    "lost",  # dropped at delivery: receiver down or restarted, or partitioned meanwhile
    "need_full",  # catch-up replies saying "the log does not reach back: snapshot"
    "snapshot_chunks",
    "crashes",
    "disk_losses",
    "torn_lost",  # unsynced log records lost in crashes
    "compactions",
    "compacted",  # log records dropped by compaction
    "excused",  # acknowledged writes lost with their origin's disk, held nowhere else
    "partitions",
    "writes_at_catching_up",  # client writes taken by a node not yet ready
    "writes_deferred",  # scheduled writes that found no ready node: tried again later
    "writes_given_up",  # scheduled writes that found no ready node WRITE_TRIES times
    "writes_noop",  # client writes that changed nothing (a DEL of a missing key)
    "acked_w",  # writes acknowledged once w > 1 nodes logged them
    "not_acknowledged",  # w > 1 writes that timed out (applied, not acknowledged)
    "cut_records",  # records cut out of the middle of a log (tests/simfaults.py)
    "excused_cut",  # acknowledged writes whose only durable copy was a cut record
    "unsubscribed",  # PUB and heartbeats from a peer the receiver does not know yet
    "budget_resurrections",  # keys back older after the tombstone budget dropped some
    "excused_budget",  # DELs whose copies went after the tombstone budget dropped some
    "incrs",  # INCRBYs acknowledged (tests/simcounters.py)
    "excused_incrs",  # ... lost with their incarnation's history (lost disk, cut log)
    "incr_slots_whole",  # counter slots of current incarnations checked whole
    "ttl_rewrites",  # EXPIREs and PERSISTs that wrote a new deadline (tests/simttl.py)
)

Rule = Callable[[str, str, str, Any], "int | None"]
"""``rule(kind, src, dst, payload)``: None no opinion, -1 drop, else the delay in ms."""


class Sim:
    """A seeded cluster on a virtual clock.  ``run`` builds a random one; tests script one."""

    def __init__(
        self,
        seed: int,
        params: Params,
        rng: random.Random,
        *,
        trace: bool = False,
        replay: str = "",
        xrng: random.Random | None = None,
        frng: random.Random | None = None,
    ) -> None:
        self.seed = seed
        self.p = params
        self.xrng = xrng or random.Random(seed)  # the features' own stream (see make)
        self.frng = frng or random.Random(seed)  # tests/simfaults.py's own stream
        self.crng = random.Random(f"sim-counters/{seed}")  # tests/simcounters.py's own
        self.trng = random.Random(f"sim-ttl/{seed}")  # tests/simttl.py's own
        self.prng = random.Random(f"sim-pauses/{seed}")  # pauses' own (tests/simfaults.py)
        # Counter keys an EXPIRE or PERSIST rebased (tests/simttl.py): a rebase wins over
        # the increments that had not seen it, and the key's version is its base's, no
        # longer its newest write's, so only equal values on every node are checked.
        self.rebased: set[str] = set()
        self.issued_incrs: dict[tuple[str, str], list[int]] = {}  # (key, origin) -> deltas
        self._budget_dropped = False  # see budget_dropped
        self.issued: dict[tuple[str, int], Mutation] = {}  # (origin, seq) -> what it was
        self.replay = replay or f"`python tests/sim.py --seed {seed} --trace`"
        self.rng = rng
        self.now = 0
        self.quiet = False
        self.done = False
        self.events = 0
        self.trace: list[tuple] | None = [] if trace else None
        self.rules: list[Rule] = []
        self.hooks: list[Callable[[Sim, str, str, str], None]] = []
        # Participants that are no SimNode (tests/byzantine.py): messages to them go
        # to their handler; message kinds of their own are delivered by theirs.
        self.outsiders: dict[str, Callable[[str, str, Any], None]] = {}
        self.handlers: dict[str, Callable[[SimNode, str, Any], None]] = {}
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        self.acked: list[Write] = []
        self.required: list[Write] = []
        self.blocked: dict[tuple[str, str], int] = {}
        self._queue: list[tuple] = []
        self._counter = 0
        self._values = 0
        self.settled_ms = -1
        self.scheduled = 0  # client writes of the random schedule
        self.unwritten = 0  # ... not yet written (retrying) nor given up
        ids = [f"n{i + 1}" for i in range(params.nodes)]
        self.nodes: dict[str, SimNode] = {
            i: SimNode(i, rng.randint(-params.skew_ms, params.skew_ms), rng.randint(20, 50))
            for i in ids
        }
        if params.hello:
            simhello.install(self)
        for node in self.nodes.values():
            self._boot(node)

    # ------------------------------------------------------------------ plumbing

    def fail(self, what: str) -> None:
        raise SimFailure(self.explain(what))

    def explain(self, what: str) -> str:
        recent = ""
        if self.trace:
            recent = "\n  last events:\n" + "\n".join(f"    {e}" for e in self.trace[-60:])
        return (
            f"seed={self.seed} at virtual {self.now} ms: {what}\n"
            f"  params: {self.p}\n"
            f"  replay with {self.replay}{recent}"
        )

    def at(self, t: int, fn: Callable[..., None], *args: Any) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (t, self._counter, fn, args))

    def note(self, *what: Any) -> None:
        if self.trace is not None:
            self.trace.append((self.now, *what))

    def run_until(self, t_end: int) -> None:
        """Run the events due by ``t_end``; an exception from the core names the seed."""
        queue = self._queue
        try:
            while queue and not self.done and queue[0][0] <= t_end:
                t, _, fn, args = heapq.heappop(queue)
                self.now = t
                self.events += 1
                fn(*args)
        except SimFailure:
            raise
        except Exception as exc:
            raise SimFailure(self.explain(f"{type(exc).__name__}: {exc}")) from exc

    # ------------------------------------------------------------------ network

    def send(self, kind: str, src: str, dst: str, payload: Any, life: int | None = None) -> None:
        """Send one message; ``life`` binds it to a receiver process (default: the current)."""
        p, rng = self.p, self.rng
        self.stats["sent"] += 1
        if dst in self.outsiders:
            self.at(self.now + rng.randint(1, p.delay_ms), self.outsiders[dst], kind, src, payload)
            return
        if life is None:
            life = self.nodes[dst].life
        delay = None
        for rule in self.rules:
            delay = rule(kind, src, dst, payload)
            if delay is not None:
                break
        if delay is not None and delay < 0:
            self.stats["dropped"] += 1
            return
        if self.blocked.get((src, dst)):
            self.stats["dropped"] += 1
            return
        copies = 1
        if not self.quiet:
            if p.drop and rng.random() < p.drop:
                self.stats["dropped"] += 1
                return
            if p.dup and rng.random() < p.dup:
                copies = 2
                self.stats["duplicated"] += 1
        for _ in range(copies):
            d = delay if delay is not None else rng.randint(1, p.delay_ms)
            if p.slow and not self.quiet and rng.random() < p.slow:
                d += rng.randint(0, p.slow_ms)
            self.at(self.now + d, self._deliver, kind, src, dst, life, payload)

    def _deliver(self, kind: str, src: str, dst: str, life: int, payload: Any) -> None:
        node = self.nodes[dst]
        if not node.up or node.life != life or self.blocked.get((src, dst)):
            self.stats["lost"] += 1
            return
        if self.p.hello and kind in (PUB, PUB_ACK, HB) and src not in node.known:
            self.stats["unsubscribed"] += 1  # it subscribes to the peers it knows only
            return
        if self.now < node.paused_until:  # queued in its socket, in order, until it resumes
            self.at(node.paused_until, self._deliver, kind, src, dst, life, payload)
            return
        self.note(kind, src, dst)
        node.lag.touch(self.now)
        if kind in (PUB, PUB_ACK):
            self._on_pub(node, payload, kind == PUB_ACK)
        elif kind == HB:
            hb_node, origin, state, vv, logged, wall = payload
            node.replica.on_heartbeat(hb_node, origin, state, vv, self.now, logged)
            node.lag.heard(hb_node, wall, self.now)
            self._check_acks(node)
            self._poll(node)
        elif kind == FETCH:
            self._on_fetch(node, src, *payload)
        elif kind in self.handlers:
            self.handlers[kind](node, src, payload)
        else:
            self._on_batch(node, src, payload)
        for hook in self.hooks:
            hook(self, kind, src, dst)

    def broadcast(self, kind: str, node: SimNode, payload: Any) -> None:
        for peer in self.nodes:
            if peer != node.id:
                self.send(kind, node.id, peer, payload)

    def heartbeat(self, node: SimNode) -> None:
        hb = node.replica.heartbeat()
        logged = node.log.synced >= node.log.end  # only such beats count toward w > 1
        wall = WALL_EPOCH_MS + self.now + node.skew_ms
        payload = (hb["node"], hb["origin"], hb["state"], dict(hb["vv"]), logged, wall)
        self.broadcast(HB, node, payload)

    # ------------------------------------------------------------------ node events

    def _on_pub(self, node: SimNode, entries: list[Mutation], ack: bool = False) -> None:
        applied = node.replica.receive(entries, self.now)
        if applied:
            self._after_apply(node, urgent=ack)
        self._watch(node, entries)
        self._poll(node)

    def _on_fetch(self, node: SimNode, src: str, fetch: Fetch, src_life: int) -> None:
        batch = node.replica.serve(src, fetch, self.now)
        if batch.need_full:
            self.stats["need_full"] += 1
        if batch.snapshot:
            self.stats["snapshot_chunks"] += 1
        self.send(BATCH, node.id, src, batch, life=src_life)
        self._poll(node)

    def _on_batch(self, node: SimNode, src: str, batch: Batch) -> None:
        replica = node.replica
        ahead = replica.prefetch(src, batch)  # as Peering does: the next fetch goes first
        if ahead is not None:
            self.send(FETCH, node.id, src, (ahead, node.life))
        applied = replica.on_batch(src, batch, self.now)
        if replica.take_snapshot_due():
            self.note("snapshot", node.id)
            self._persist_snapshot(node)
        if applied:
            self._after_apply(node)
        self._watch(node, batch.entries)
        self._poll(node)

    def _after_apply(self, node: SimNode, urgent: bool = False) -> None:
        """As ``Peering._after_apply`` for entries that want acks.

        Fsync now (or at the next beat: torn, unless an origin waits for
        acks: ``urgent``), then heartbeat (saying whether all is logged).
        """
        if not urgent and self.p.torn and not self.quiet and self.rng.random() < self.p.torn:
            node.unsynced = True
        else:
            node.log.sync()
        self.heartbeat(node)
        if node.unsynced and node.armed:
            self.at(self.now, self.crash, node.id, node.armed[0], False, node.armed[1])
            node.armed = None

    def _poll(self, node: SimNode) -> None:
        for peer, fetch in node.replica.poll(self.now):
            self.send(FETCH, node.id, peer, (fetch, node.life))

    def _tick(self, node: SimNode, life: int) -> None:
        if not node.up or node.life != life:
            return
        if self.now < node.paused_until:
            self.at(node.paused_until, self._tick, node, life)
            return
        replica = node.replica
        peers = {p.node_id: (p.vv, p.heard_ms) for p in replica.peers.values()}
        node.lag.judge(replica.vv, peers, self.now, replica.gate.refusing())
        if self.p.collect:  # as Node._sweep: drop the tombstones every member moved past
            node.stable.collect(replica)
        self._check_acks(node)
        self._poll(node)
        self.at(self.now + node.tick_ms, self._tick, node, life)

    def _beat(self, node: SimNode, life: int) -> None:
        if not node.up or node.life != life:
            return
        if self.now < node.paused_until:
            self.at(node.paused_until, self._beat, node, life)
            return
        node.lag.touch(self.now)
        if node.unsynced:  # the deferred fsync of replicated records (``torn``)
            node.log.sync()
            node.unsynced = False
        self.heartbeat(node)
        self._scan(node)
        self.at(self.now + HEARTBEAT_MS, self._beat, node, life)

    def _persist_snapshot(self, node: SimNode) -> None:
        node.log.sync()
        node.unsynced = False
        replica = node.replica
        node.snapshot = Snapshot(
            list(node.store.entries()),
            dict(replica.vv),
            dict(replica.floor),
            node.log.end,
            replica.held_past_holes(),
        )

    # ------------------------------------------------------------------ clients

    def client_write(
        self,
        node_id: str,
        ops: Sequence[tuple[str, bytes | None] | tuple[str, bytes | None, int]],
        w: int | str = 1,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        """A client op at ``node_id`` (one write or an MSET; value None is a DEL; a
        third item is a deadline, and a value may then be a function of the
        write's hlc, a rebased counter's state: ``tests/simttl.py``).

        ``w`` > 1: the reply waits until that many nodes logged it, as
        ``mesh.roles.node`` holds it (:class:`~mesh.core.acks.PendingAcks`,
        :meth:`Replica.logged_by`); the write is acknowledged then, or never:
        NOT_ACKNOWLEDGED, or the node crashed; then ``on_failure`` runs (the
        client tries again).
        """
        node = self.nodes[node_id]
        if not node.up:
            return
        replica, store, clock = node.replica, node.store, node.clock
        if replica.state != READY:
            self.stats["writes_at_catching_up"] += 1
        seq = replica.vv.get(node.origin, 0)
        mutations = []
        for key, value, *until in ops:
            if value is None and store.get(key, record_stats=False) is None:
                continue  # DEL of a missing key: nothing to write (as CommandExecutor)
            seq += 1
            hlc = clock.now()
            if callable(value):
                value = value(hlc)
            m = Mutation(node.origin, seq, hlc, key, value, until[0] if until else 0)
            if self.issued.setdefault((m.origin, seq), m) is not m:
                self.fail(f"{node.id} reused seq {seq} of {m.origin}: {self.issued[m[:2]]}, {m}")
            if not store.apply(m):
                self.fail(f"{node.id}'s own write {m} lost to {held(store, key)} locally")
            mutations.append(m)
        if not mutations:
            self.stats["writes_noop"] += 1
            return
        replica.commit_local(mutations)
        node.log.sync()
        node.unsynced = False
        needed = 1 if w == 1 else nodes_needed(w, 1 + len(replica.peers))  # as Node does
        self.note("write", node.id, tuple((m.key, m.seq, m.value) for m in mutations), w)
        if needed > 1:
            deadline = self.now + ACK_TIMEOUT_MS
            waiting = (mutations, on_failure)
            node.acks.hold(Waiting(mutations[-1].seq, needed, deadline, [], 0, waiting))
            self.broadcast(PUB_ACK, node, mutations)
        else:
            self._acknowledge(node, mutations, 1)
            self.broadcast(PUB, node, mutations)
        self._watch(node, mutations)
        self._poll(node)

    def _acknowledge(self, node: SimNode, mutations: list[Mutation], needed: int) -> None:
        logged_on: tuple[str, ...] = ()
        logged_as: tuple[str, ...] = ()
        if needed > 1:
            seq, origin = mutations[-1].seq, node.origin
            peers = node.replica.peers.items()
            said = [(p, v.origin) for p, v in peers if v.logged.get(origin, 0) >= seq]
            logged_on = (node.id, *(p for p, _ in said))
            logged_as = (origin, *(o for _, o in said))
            self.stats["acked_w"] += len(mutations)
            self.note("acked", node.id, seq, logged_on)
        for m in mutations:
            write = Write(node.id, self.now, m, needed, logged_on, logged_as)
            self.acked.append(write)
            self.required.append(write)

    def _check_acks(self, node: SimNode) -> None:
        """Answer the held w > 1 writes that enough nodes logged (``Node._check_acks``)."""
        if not len(node.acks):
            return
        done, expired = node.acks.resolve(node.replica.logged_by, self.now)
        for waiting in done:
            self._acknowledge(node, waiting.result[0], waiting.needed)
        self._fail_writes(node, expired)

    def _fail_writes(self, node: SimNode, failed: list[tuple[Waiting, int]]) -> None:
        for waiting, have in failed:
            self.stats["not_acknowledged"] += 1
            self.note("not acknowledged", node.id, waiting.seq, have, waiting.needed)
            on_failure = waiting.result[1]
            if on_failure is not None:
                on_failure()

    def value(self, node_id: str) -> bytes:
        self._values += 1
        return f"{node_id}:{self._values}".encode()

    # ------------------------------------------------------------------ faults

    def crash(self, node_id: str, down_ms: int, lose_disk: bool = False, keep: int = -1) -> None:
        """Crash ``node_id`` now; it restarts after ``down_ms`` (or at the heal).

        ``keep``: how many unsynced records survive (-1: a random number).
        """
        node = self.nodes[node_id]
        if not node.up or self.quiet:
            return
        self.stats["crashes"] += 1
        self.budget_dropped()  # its store's count goes with the process
        self._fail_writes(node, node.acks.resolve(lambda seq: 0, 1 << 62)[1])  # no reply
        node.life += 1
        node.totals = node.counters()
        node.up = False
        node.unsynced = False
        if lose_disk:
            self.stats["disk_losses"] += 1
            self._lose_disk(node)
        else:
            unsynced = node.log.end - node.log.synced
            if keep < 0:
                keep = self.rng.randint(0, unsynced)
            self.stats["torn_lost"] += node.log.crash(min(keep, unsynced))
        self.note("crash", node_id, lose_disk)
        self.at(self.now + down_ms, self._restart, node, node.life)

    def pause(self, node_id: str, ms: int) -> None:
        """SIGSTOP ``node_id`` for ``ms``: its timers and messages wait, then run in order
        (and the client requests sent to it: :meth:`_random_write`, :meth:`writable_node`)."""
        node = self.nodes[node_id]
        if not node.up or self.quiet:
            return
        node.paused_until = max(node.paused_until, self.now + ms)
        self.note("pause", node_id, ms)

    def _paused(self, node: SimNode, retry: Callable[..., None], *args: Any) -> bool:
        """Whether ``node`` is paused: then ``retry(*args)`` runs once it resumes (a
        request waits in the socket of a stopped process)."""
        if node.up and self.now < node.paused_until:
            self.at(node.paused_until, retry, *args)
            return True
        return False

    def arm_crash(self, node_id: str, down_ms: int, keep: int = -1) -> None:
        """Crash ``node_id`` right after it next defers the fsync of replicated records."""
        node = self.nodes[node_id]
        if node.up:
            node.armed = (down_ms, keep)

    def _restart(self, node: SimNode, life: int) -> None:
        if not node.up and node.life == life:
            self._boot(node)

    def _lose_disk(self, node: SimNode) -> None:
        """The disk is gone: excuse the w=1 writes no other node holds durably.

        A write acknowledged with w > 1 was logged by other nodes too: unless
        each of those has lost its disk since it logged it, losing it is a failure.
        """
        durable = [self._durable(n) for n in self.nodes.values() if n is not node]
        keep, excused = [], []
        for w in self.required:
            if any(d.get(w.mutation.key, (-1, "")) >= w.version for d in durable):
                keep.append(w)
                continue
            holders = w.holders(self.origins(), but=node.id)
            excused.append(w)
            if self.forgets and not any(w.mutation.key in d for d in durable):
                # evicted and its tombstone dropped, or a DEL collected, as check() allows
                self.stats["excused"] += 1
                continue
            if (
                w.needed > 1
                and holders
                and not simfaults.budget_forfeits(self, w, holders)
                and w.mutation.key not in self.rebased
            ):
                self.fail(
                    f"{node.id} lost its disk and with it {w.mutation}, acknowledged with "
                    f"{w.needed} nodes logging it ({w.logged_on} at {w.at_ms} ms), though "
                    f"{holders} kept their disks: none holds it durably"
                )
            self.stats["excused"] += 1
        self.required = keep
        node.log = SimLog()
        node.snapshot = None
        if self.p.hello:
            simhello.lose_disk(node)
        node.incarnation += 1
        for w in excused:
            simfaults.excuse_superseded(self, w, durable)

    @property
    def settle_ms(self) -> int:
        """The replicas' settle time (``origins_settled``): over twice the longest a
        message is in flight here (as ``ORIGIN_SETTLE_MS`` is over twice the TCP user timeout)."""
        return 2 * (self.p.delay_ms + self.p.slow_ms) + 1

    def origins(self) -> dict[str, str]:
        """Each node's origin (its incarnation) now."""
        return {n.id: n.origin for n in self.nodes.values()}

    @staticmethod
    def _durable(node: SimNode) -> dict[str, Version]:
        """Per key, the highest version ``node`` would rebuild from its disk."""
        out: dict[str, Version] = {}
        log = node.log
        records = log.records[: log.synced - log.base]
        for m in (*(node.snapshot.entries if node.snapshot else ()), *records):
            v = (m[2], m[0])
            if v > out.get(m[3], (0, "")):
                out[m[3]] = v
        return out

    def _boot(self, node: SimNode) -> None:
        """Start a node process from its disk: snapshot, then the log after it."""
        log, snap = node.log, node.snapshot
        store = Store(now_ms=lambda: WALL_EPOCH_MS + self.now, seed=0, max_memory=self.p.max_memory)
        node.stable = StableFrontier()
        vv: dict[str, int] = {}
        floor: dict[str, int] = {}
        top = 0
        start = log.base
        if snap is not None:
            for m in snap.entries:
                store.apply(m)
                top = max(top, m[2])
            vv, floor, start = dict(snap.vv), dict(snap.floor), snap.pos
        for m in log.records[max(0, start - log.base) :]:
            store.apply(m)
        for m in log.records:
            if m[1] > vv.get(m[0], 0):
                vv[m[0]] = m[1]
            top = max(top, m[2])
        past_hole: dict[str, set[int]] = {}
        if node.damaged or (snap is not None and snap.held):  # as replay.recover: a
            # log that lost records mid-way (tests/simfaults.py), or a snapshot held past one
            vv, past_hole = simfaults.damaged_vv(node)
        clock = HybridClock(lambda: WALL_EPOCH_MS + self.now + node.skew_ms, floor=top)
        node.store, node.clock = store, clock
        node.replica = Replica(
            node.id,
            node.origin,
            store,
            log,
            clock,
            vv=vv,
            floor=floor,
            held=past_hole,
            peers=sorted(node.known) if self.p.hello else [n for n in self.nodes if n != node.id],
            now_ms=self.now,
            fetch_entries=self.p.fetch_entries,
            settle_ms=self.settle_ms,
            members=lambda: [n for n in self.nodes if n != node.id],
            max_offset_ms=self.p.max_offset_ms or 1000 + 2 * self.p.skew_ms,
        )
        node.lag = LagGuard(self.p.max_lag_entries, self.p.max_lag_ms)
        node.paused_until = 0
        node.up = True
        node.life += 1
        node.acks = PendingAcks()  # replies held by the last process are gone with it
        # Checker 3 across the restart: only unacknowledged replicated state may be lost.
        for w in self.acked:
            m = w.mutation
            v = held(store, m.key)
            if (v is None and self.forgets) or m.key in self.rebased:
                continue  # evicted and its tombstone dropped, or a collected DEL; rebased
            if m.origin == node.origin and (v or (0, "")) < w.version:
                if self.forgets and self.budget_dropped():  # replay under the budget
                    self.stats["budget_resurrections"] += 1
                    continue
                self.fail(f"{node.id} restarted without its acknowledged write {m}")
        node.high = {}
        self._scan(node)
        self.note("boot", node.id, node.origin, tuple(sorted(vv.items())))
        if self.p.hello:
            simhello.boot(self, node)
        self.at(self.now + self.rng.randint(0, node.tick_ms), self._tick, node, node.life)
        self.at(self.now + self.rng.randint(0, HEARTBEAT_MS), self._beat, node, node.life)

    def partition(self, group: Iterable[str], duration_ms: int, one_way: bool = False) -> None:
        """Cut ``group`` off from the others now (``one_way``: only its sends)."""
        if self.quiet:
            return
        inside = list(group)
        outside = [n for n in self.nodes if n not in inside]
        pairs = [(a, b) for a in inside for b in outside]
        if not one_way:
            pairs += [(b, a) for a, b in pairs]
        for pair in pairs:
            self.blocked[pair] = self.blocked.get(pair, 0) + 1
        self.stats["partitions"] += 1
        self.note("partition", tuple(inside), one_way)
        self.at(self.now + duration_ms, self._unblock, pairs)

    def _unblock(self, pairs: list[tuple[str, str]]) -> None:
        for pair in pairs:
            if self.blocked.get(pair):
                self.blocked[pair] -= 1
                if not self.blocked[pair]:
                    del self.blocked[pair]

    def compact(self, node_id: str, share: float = 1.0) -> None:
        """Snapshot ``node_id``, then drop that ``share`` of the log the snapshot covers."""
        node = self.nodes[node_id]
        if not node.up or self.quiet:
            return
        self._persist_snapshot(node)
        log = node.log
        self.stats["compactions"] += 1
        self.stats["compacted"] += log.compact(log.base + round(share * (log.end - log.base)))
        self.note("compact", node_id, log.base)

    def step_clock(self, node_id: str, skew_ms: int) -> None:
        """Step ``node_id``'s wall clock to ``skew_ms`` off the virtual time (maybe back)."""
        self.nodes[node_id].skew_ms = skew_ms
        self.note("clock", node_id, skew_ms)

    # ------------------------------------------------------------------ checkers

    def _watch(self, node: SimNode, entries: Iterable[Mutation]) -> None:
        """Checker 3 for the keys an event carried."""
        store, high = node.store, node.high
        for m in entries:
            key = m[3]
            v = held(store, key)
            h = high.get(key)
            if h is not None and (v is None or v < h) and not self._forgot(node, key, v, h):
                self.fail(f"{node.id}: version of {key!r} went back from {h} to {v}")
            if v is not None:
                high[key] = v

    def _scan(self, node: SimNode) -> None:
        """Checker 3 for all keys of ``node``."""
        store, high = node.store, node.high
        for key, h in list(high.items()):
            v = held(store, key)
            if (v is None or v < h) and not self._forgot(node, key, v, h):
                self.fail(f"{node.id}: version of {key!r} went back from {h} to {v}")
        for key in [*store.live_keys(), *store._tombs]:  # a counter's version: its newest write's
            high[key] = store.version(key)

    @property
    def forgets(self) -> bool:
        """Whether nodes may forget a key's version (tests/simfaults.py: memory)."""
        return bool(self.p.max_memory or self.p.collect)

    def _forgot(self, node: SimNode, key: str, v: Version | None, h: Version) -> bool:
        """Checker 3 under a memory limit or tombstone collection: a key may go
        (evicted, then its tombstone dropped; a DEL collected once stable) but
        not come back older than it was (``h`` is kept), unless this node's
        tombstone budget dropped tombstones before they were stable (documented:
        an older write still on its way may then bring a key back, here or, by a
        full sync from this node, elsewhere: see :meth:`budget_dropped`).
        A rebased counter (``rebased``) is checked for equal values only."""
        if key in self.rebased:
            return True
        if not self.forgets:
            return False
        if v is None:
            return True
        if self.budget_dropped():
            self.stats["budget_resurrections"] += 1
            node.high[key] = v
            return True
        return False

    def budget_dropped(self) -> bool:
        """Whether a node's tombstone budget dropped tombstones before they were
        stable (any node, any life): from then on the checks let a key be older."""
        if not self._budget_dropped:
            self._budget_dropped = any(n.up and n.store._dropped for n in self.nodes.values())
        return self._budget_dropped

    def converged(self) -> bool:
        nodes = list(self.nodes.values())
        if not all(n.up and n.replica.state == READY and not n.replica._held for n in nodes):
            return False
        if self.p.hello and not simhello.complete(self):
            return False
        first = nodes[0]
        digest = first.store.digest()
        vv = {o: s for o, s in first.replica.vv.items() if s}
        for n in nodes[1:]:
            if n.store.digest() != digest and not self.p.max_memory:  # eviction is local
                return False
            if {o: s for o, s in n.replica.vv.items() if s} != vv:
                return False
        return True

    def _settle_check(self, heal_ms: int) -> None:
        # The w > 1 replies still held are decided first (acknowledged, or tried again),
        # unless a byzantine member (tests/byzantine.py), which never logs, holds them up.
        pending = not self.outsiders and any(len(n.acks) for n in self.nodes.values())
        if not self.unwritten and not pending and self.converged():
            self.done = True
            self.settled_ms = self.now - heal_ms
            return
        if self.now - heal_ms >= SETTLE_MS:
            self.fail(f"no convergence {SETTLE_MS} ms after the heal:\n{self.describe()}")
        self.at(self.now + CHECK_MS, self._settle_check, heal_ms)

    def describe(self) -> str:
        lines = []
        for n in self.nodes.values():
            if not n.up:
                lines.append(f"  {n.id}: down")
                continue
            r = n.replica
            assert r is not None and n.store is not None
            lines.append(
                f"  {n.id} ({n.origin}) {r.state} digest={n.store.digest()} vv={r.vv} "
                f"floor={r.floor} buffered={r._buffered} lagging={r._lagging} "
                f"fetching={ {p: v.fetching for p, v in r.peers.items() if v.fetching} }"
            )
        return "\n".join(lines)

    def check(self) -> None:
        """Checkers 1 and 2 (3 and 4 run throughout)."""
        held_by = {}
        for n in self.nodes.values():
            self._scan(n)
            held_by[n.id] = {m.key: m.version() for m in n.store.entries()}
        for w in self.required:
            if w.mutation.key in self.rebased:
                continue  # tests/simttl.py: equal values only (simcounters.check)
            for node_id, versions in held_by.items():
                v = versions.get(w.mutation.key)
                if v is None and self.forgets:
                    continue  # evicted, its tombstone dropped; or a DEL collected
                if v is not None and v < w.version and self.budget_dropped():
                    self.stats["budget_resurrections"] += 1
                    continue
                if v is None or v < w.version:
                    self.fail(
                        f"acknowledged write {w.mutation} (at {w.node}, {w.at_ms} ms) "
                        f"missing on {node_id}, which holds {v}\n{self.describe()}"
                    )
        if self.p.hello:
            simhello.check(self)
        simcounters.check(self)
        if self.p.max_memory:  # eviction is local: no live version but the newest
            simfaults.check_live(self, held_by)
            return
        digests = {n.id: n.store.digest() for n in self.nodes.values()}
        if len(set(digests.values())) != 1:
            self.fail(f"digests differ after the heal: {digests}\n{self.describe()}")

    def check_writes(self) -> None:
        """The run tested acknowledged writes, not just convergence: every scheduled
        write reached a node, and at least one was acknowledged (unless every one
        changed nothing: seed 3400031963 drew five DELs of missing keys)."""
        if not self.scheduled:
            return
        given_up = self.stats["writes_given_up"]
        if given_up:
            self.fail(
                f"{given_up} of the {self.scheduled} scheduled writes given up after "
                f"{WRITE_TRIES} tries (no ready node, or w > 1 not acknowledged), over "
                f"{WRITE_TRIES * WRITE_RETRY_MS[0]} ms or more"
            )
        if not self.acked and self.stats["writes_noop"] < self.scheduled:
            self.fail(f"no write acknowledged of the {self.scheduled} scheduled")

    # ------------------------------------------------------------------ running

    def random_schedule(self) -> None:
        """Draw the writes, partitions, crashes and compactions of a random run."""
        p, rng, ids = self.p, self.rng, list(self.nodes)
        keys = [f"k{i}" for i in range(p.keys)]
        for _ in range(p.writes):
            t, node_id = rng.randint(0, p.duration_ms), rng.choice(ids)
            r = rng.random()
            if r < 0.6:
                ops: list[tuple[str, bytes | None]] = [(rng.choice(keys), b"")]
            elif r < 0.8:
                ops = [(rng.choice(keys), None)]
            else:
                ops = [(k, b"") for k in rng.sample(keys, min(len(keys), rng.randint(2, 3)))]
            w: int | str = 1
            if p.w_share and self.xrng.random() < p.w_share:
                w = self.xrng.choice((2, "quorum", "all"))
            self.at(t, self._random_write, node_id, ops, w)
        self.scheduled += p.writes
        self.unwritten += p.writes
        for _ in range(p.partitions):
            group = rng.sample(ids, rng.randint(1, len(ids) - 1))
            self.at(
                rng.randint(0, p.duration_ms),
                self.partition,
                group,
                rng.randint(50, 1500),
                rng.random() < 0.25,
            )
        for _ in range(p.crashes):
            t, node_id, down = rng.randint(0, p.duration_ms), rng.choice(ids), rng.randint(10, 1500)
            if rng.random() < p.disk_loss:
                self.at(t, self.crash, node_id, down, True)
            elif p.torn and rng.random() < 0.5:
                self.at(t, self.arm_crash, node_id, down)
            else:
                self.at(t, self.crash, node_id, down)
        for _ in range(p.compactions):
            share = rng.choice((0.0, 0.5, 1.0, rng.random()))
            self.at(rng.randint(0, p.duration_ms), self.compact, rng.choice(ids), share)
        for _ in range(p.clock_steps if p.skew_ms else 0):
            skew = rng.randint(-p.skew_ms, p.skew_ms)
            self.at(rng.randint(0, p.duration_ms), self.step_clock, rng.choice(ids), skew)
        simfaults.schedule(self)  # draws from self.frng only
        simcounters.schedule(self)  # draws from self.crng only
        simttl.schedule(self)  # draws from self.trng only
        simfaults.schedule_pauses(self)  # draws from self.prng only

    def writable_node(
        self, node_id: str, rng: random.Random, again: Callable[[int], None], tries: int
    ) -> SimNode | None:
        """Where a client write of a feature (tests/simcounters.py, simttl.py) goes:
        ``node_id`` if ready, else a ready node (``rng`` chooses); None when no node
        is ready, and then ``again(tries + 1)`` runs later, up to WRITE_TRIES times
        (as :meth:`_random_write`, which draws from the run's own stream)."""
        if tries > WRITE_TRIES:
            self.stats["writes_given_up"] += 1
            self.unwritten -= 1
            return None
        node = self.nodes[node_id]
        if not (node.up and node.replica.state == READY):
            ready = [n for n in self.nodes.values() if n.up and n.replica.state == READY]
            if not ready:
                self.at(self.now + rng.randint(*WRITE_RETRY_MS), again, tries + 1)
                return None
            node = rng.choice(ready)
        if self._paused(node, again, tries):
            return None
        self.unwritten -= 1
        return node

    def _random_write(
        self, node_id: str, ops: list[tuple[str, bytes | None]], w: int | str = 1, tries: int = 0
    ) -> None:
        """A client write: to ``node_id`` if ready, else to a ready node (as the balancer
        does; now and then to ``node_id`` still catching up).  With no node ready
        (or up) the client tries again later, up to WRITE_TRIES times, past the
        heal if need be: a write is never dropped silently."""
        if tries > WRITE_TRIES:
            self.stats["writes_given_up"] += 1
            self.unwritten -= 1
            return
        node = self.nodes[node_id]
        if not (node.up and node.replica.state == READY) and (
            self.rng.random() < 0.9 or not node.up
        ):
            ready = [n for n in self.nodes.values() if n.up and n.replica.state == READY]
            if not ready:
                self.stats["writes_deferred"] += 1
                retry = self.now + self.rng.randint(*WRITE_RETRY_MS)
                self.at(retry, self._random_write, node_id, ops, w, tries + 1)
                return
            node = self.rng.choice(ready)
        if self._paused(node, self._random_write, node.id, ops, w, tries):
            return
        self.unwritten -= 1
        values = [(k, None if v is None else self.value(node.id)) for k, v in ops]

        def again() -> None:  # NOT_ACKNOWLEDGED (w > 1), or no reply: try again
            self.unwritten += 1
            retry = self.now + self.rng.randint(*WRITE_RETRY_MS)
            self.at(retry, self._random_write, node_id, ops, w, tries + 1)

        self.client_write(node.id, values, w, again)

    def heal(self) -> None:
        """End the faults: heal partitions, restart down nodes, stop drops and clients."""
        self.quiet = True
        self.blocked.clear()
        for node in self.nodes.values():
            if not node.up:
                self._boot(node)
        self.note("heal")

    def run(self) -> Result:
        """Run the faults until ``duration_ms``, heal, settle, check."""
        self.run_until(self.p.duration_ms)
        self.now = self.p.duration_ms
        self.heal()
        heal_ms = self.now
        self.at(self.now, self._settle_check, heal_ms)
        self.run_until(heal_ms + SETTLE_MS + CHECK_MS)
        if not self.done:
            self.fail("the event queue ran dry before convergence")
        self.check()
        self.check_writes()
        counters: dict[str, int] = {}
        for n in self.nodes.values():
            for k, v in n.counters().items():
                counters[k] = counters.get(k, 0) + v
        return Result(
            self.seed,
            self.p,
            self.settled_ms,
            self.events,
            len(self.acked),
            self.stats,
            counters,
            {n.id: n.store.digest() for n in self.nodes.values()},
            self.trace,
        )


def make(seed: int, *, trace: bool = False, **params: Any) -> Sim:
    """A simulator with random params for ``seed``, overridden by ``params``, no schedule."""
    rng = random.Random(seed)
    drawn = random_params(rng)  # drawn even when overridden: the same seed, the same run
    xrng = random.Random(f"sim-features/{seed}")  # str seeds hash the same in every process
    drawn = dataclasses.replace(drawn, **more_params(xrng))
    frng = random.Random(f"sim-faults/{seed}")
    drawn = dataclasses.replace(drawn, **simfaults.fault_params(frng))
    mrng = random.Random(f"sim-memory/{seed}")
    drawn = dataclasses.replace(drawn, **simfaults.memory_params(mrng))
    drawn.hello = random.Random(f"sim-hello/{seed}").choice((0, 1))
    crng = random.Random(f"sim-counters-params/{seed}")
    drawn = dataclasses.replace(drawn, **simcounters.counter_params(crng))
    trng = random.Random(f"sim-ttl-params/{seed}")
    drawn = dataclasses.replace(drawn, **simttl.ttl_params(trng))
    prng = random.Random(f"sim-pauses-params/{seed}")
    drawn = dataclasses.replace(drawn, **simfaults.pause_params(prng))
    flags = "".join(f" --set {k}={v}" for k, v in params.items())
    args = "".join(f", {k}={v!r}" for k, v in params.items())
    replay = f"`python tests/sim.py --seed {seed}{flags} --trace` or tests/sim.py run({seed}{args})"
    return Sim(
        seed,
        dataclasses.replace(drawn, **params),
        rng,
        trace=trace,
        replay=replay,
        xrng=xrng,
        frng=frng,
    )


QUIET = {"drop": 0.0, "dup": 0.0, "slow": 0.0, "torn": 0.0, "skew_ms": 0, "delay_ms": 5}
QUIET |= {
    "cuts": 0,
    "max_memory": 0,
    "collect": 0,
    "hello": 0,
    "incrs": 0,
    "ttls": 0,
    "pauses": 0,
}  # tests/simfaults.py's, simhello.py's, simcounters.py's, simttl.py's: off unless asked
"""Params of a fault-free network, for scripted scenarios."""


def scripted(seed: int = 0, *, trace: bool = False, **params: Any) -> Sim:
    """A fault-free simulator with nothing scheduled: tests add writes, rules and faults."""
    defaults = {"nodes": 3, "fetch_entries": 4096, "duration_ms": 1500, **QUIET}
    sim = make(seed, trace=trace, **{**defaults, **params})
    sim.replay = "the test that scripted this scenario (it is deterministic too)"
    return sim


def run(seed: int, *, trace: bool = False, **params: Any) -> Result:
    """Run one seeded random simulation; raises :class:`SimFailure` naming the seed."""
    sim = make(seed, trace=trace, **params)
    sim.random_schedule()
    return sim.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, default=1, help="run seeds seed..seed+count-1")
    parser.add_argument("--trace", action="store_true", help="print every event")
    parser.add_argument(
        "--set", action="append", default=[], metavar="PARAM=VALUE", help="override a param"
    )
    args = parser.parse_args(argv)
    kinds = {f.name: f.type for f in dataclasses.fields(Params)}
    overrides: dict[str, Any] = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in kinds:
            parser.error(f"unknown param {name!r}: one of {', '.join(kinds)}")
        overrides[name] = float(value) if kinds[name] == "float" else int(value)
    failed = 0
    for seed in range(args.seed, args.seed + args.count):
        try:
            result = run(seed, trace=args.trace, **overrides)
        except SimFailure as exc:
            failed += 1
            print(f"FAIL {exc}", flush=True)
            continue
        if args.trace:
            for event in result.trace or ():
                print(*event)
        print(
            f"ok seed={seed} settled={result.settled_ms}ms events={result.events} "
            f"acked={result.acked} stats={result.stats} counters={result.counters} "
            f"params={result.params}",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
