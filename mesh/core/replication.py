"""The replication core: version vectors, gap repair, catch-up and full-sync decisions.

Pure logic: no sockets, no clock, no randomness of its own.  The node's socket
loop (:mod:`mesh.roles.peering`) and the seeded simulator (``tests/sim.py``) drive a
:class:`Replica` by calling its ``on_*`` methods with what arrived and the
current time, and by sending what :meth:`Replica.poll` and :meth:`Replica.serve`
return.  The store, log and clock are injected; the log only needs
``append``, ``read_range`` and ``floor`` (see :class:`~mesh.core.catchup.ReplicaLog`).
The messages, and the answers this node serves to its peers' fetches, are
:mod:`mesh.core.catchup`'s; this module makes the decisions.

The protocol, in one paragraph: every node applies its own writes and PUBlishes them in batches;
every node SUBscribes to every peer. A receiver keeps, per origin, the highest contiguous
``seq`` it has applied (its version vector, ``vv``) and applies entries strictly in ``seq``
order per origin, buffering what arrives past a hole. Heartbeats carry each sender's ``vv``, so
a lost tail is noticed too. A hole, or a peer that is ahead, makes the receiver send that peer a
:class:`~mesh.core.catchup.Fetch` ("here is my vv"); the peer answers with a bounded
:class:`~mesh.core.catchup.Batch` of what the requester lacks, read from its log (any node can
serve any origin, since every node logs what it applies). The requester asks again while
``more`` is set, and asks for the next batch as soon as one arrives, before applying it
(:meth:`Replica.prefetch`): two batches in flight per peer are the credit that keeps a slow
receiver from being flooded while the peer reads ahead. When the peer's log no longer reaches
back far enough (its ``floor``), or the requester holds nothing at all (a new incarnation), the
peer streams a snapshot of its store instead, in chunks, then the tail. Tombstones travel in
snapshots like any entry, so nothing deleted comes back. Last-writer-wins on ``(hlc, origin)``
makes duplicates and any order of application harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

from mesh.core.catchup import (
    FETCH_ENTRIES,
    Batch,
    Fetch,
    LackingReader,
    ReplicaLog,
    SnapshotSessions,
    fetch_after,
    first_chunk,
    read_batch,
    stage,
)
from mesh.core.clock import HybridClock
from mesh.core.clockguard import REFUSE_BACKOFF_MS, FutureGate
from mesh.core.holes import HeldSeqs
from mesh.core.mutation import Mutation, Record
from mesh.core.peerview import (
    BUFFER_LIMIT,
    CATCHING_UP,
    DEFAULT_MAX_OFFSET_MS,
    EMPTY_BACKOFF_MS,
    FETCH_TIMEOUT_MS,
    LAG_GRACE_MS,
    ORIGIN_SETTLE_MS,
    READY,
    PeerView,
    lag_report,
    origins_settled,
    ready_due,
)
from mesh.core.store import Store


class Replica:
    """The replication state of one node (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        origin: str,
        store: Store,
        log: ReplicaLog,
        clock: HybridClock,
        *,
        vv: dict[str, int] | None = None,
        floor: dict[str, int] | None = None,
        held: Mapping[str, Iterable[int]] | None = None,
        peers: Iterable[str] = (),
        now_ms: int = 0,
        fetch_entries: int = FETCH_ENTRIES,
        max_offset_ms: int = DEFAULT_MAX_OFFSET_MS,
        settle_ms: int = ORIGIN_SETTLE_MS,
        members: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self.node_id = node_id
        self.origin = origin
        self.store = store
        self.log = log
        self.clock = clock
        self.vv: dict[str, int] = dict(vv or {})
        self.floor: dict[str, int] = dict(floor or {})
        self.collected: dict[str, int] = {}  # tombstones up to this are gone (tombstones.py)
        self._held = HeldSeqs(held)  # seqs past a hole in a damaged log
        self.peers: dict[str, PeerView] = {p: PeerView(p) for p in peers if p != node_id}
        self.state = CATCHING_UP
        self.fetch_entries = fetch_entries
        self.settle_ms = settle_ms  # see origins_settled (the simulator passes its own)
        self.members = members  # the other members the trust keys name, when there are keys
        self.counters = {"gaps": 0, "repaired": 0, "fetches": 0, "full_syncs": 0, "refused": 0}
        self.counters["image_dropped"] = 0  # keys a full sync's image had deleted (collected)
        # kept by the socket loop (mesh.roles.peering), which sends what serve() returns:
        # entries served, fetches answered by the batch prepared ahead, those thrown away
        self.counters.update(served=0, prepared_used=0, prepared_dropped=0)
        # entries refused for an hlc too far ahead of this node's clock (clockguard)
        self.gate = FutureGate(max_offset_ms)
        self._refused_now = False
        self._started_ms = now_ms
        self._buffer: dict[str, dict[int, Record]] = {}
        self._buffered = 0
        self._lagging: dict[str, tuple[int, int]] = {}  # origin -> (target seq, since ms)
        self._sessions = SnapshotSessions()
        # Ids start from the clock: a restarted process does not reuse its last one's.
        self._ids = now_ms * 1000
        self._snapshot_due = False
        self._progress_ms = now_ms

    def on_hello(self, node_id: str, now_ms: int) -> None:
        """A peer answered our HELLO: it is up, so wait for it while catching up."""
        peer = self.add_peer(node_id)
        if peer is not None:
            peer.heard_ms = max(peer.heard_ms, now_ms)

    def add_peer(self, node_id: str) -> PeerView:
        """Know about ``node_id`` (idempotent); returns its view."""
        view = self.peers.get(node_id)
        if view is None and node_id != self.node_id:
            view = self.peers[node_id] = PeerView(node_id, synced=self.state == READY)
        return view  # type: ignore[return-value]

    def remove_peer(self, node_id: str) -> None:
        """Forget ``node_id`` (no longer a member): no fetches, waits or acks count it."""
        self.peers.pop(node_id, None)

    def held_past_holes(self) -> dict[str, list[int]]:
        """Per origin, the seqs this node holds past a hole in its log (none, unless its
        log was damaged): a snapshot records them, for the store it saves holds them
        while the vv does not count them."""
        return self._held.as_lists()

    @property
    def members_known(self) -> bool:
        """Whether every other member the trust keys name is a known peer (always true
        without keys: then the peers are all the members there are)."""
        return self.members is None or all(m in self.peers for m in self.members())

    @property
    def origins_settled(self) -> bool:
        """Whether no message of an origin gone can still be on its way
        (:func:`~mesh.core.peerview.origins_settled`)."""
        return origins_settled(self.peers.values(), self.settle_ms)

    @property
    def settled(self) -> bool:
        """Nothing held past a hole: not in the buffer, nor in a damaged log."""
        return not self._buffered and not self._held

    def commit_local(
        self, mutations: Sequence[Mutation], records: Sequence[bytes] | None = None
    ) -> None:
        """Log this origin's own mutations (already applied by the commands);
        ``records`` are them encoded, if already done."""
        if mutations:
            self.log.append(mutations, records)
            self.vv[self.origin] = mutations[-1].seq

    # ------------------------------------------------------------------ receiving

    def receive(self, mutations: Sequence[Record], now_ms: int) -> list[Record]:
        """Apply, log and return what is next in line per origin; buffer the rest.

        Duplicates (``seq`` at or below the version vector) are dropped, and so
        are entries stamped too far ahead of this node's clock
        (:class:`~mesh.core.clockguard.FutureGate`).
        """
        if not mutations:
            return []
        top = max(map(itemgetter(2), mutations))  # -1 below: not known
        if top > self.gate.limit(self.clock.wall()):
            mutations, top, self._refused_now = self._refuse(mutations, now_ms), -1, True
        after = self._next_in_line(mutations)
        if after is not None:  # the usual case, checked without a Python loop per entry
            applied = list(mutations)
            self.vv.update(after)
        else:
            applied, top = self._sort_out(mutations), -1
        if self._held and self._count_held(applied):
            top = -1
        if applied:
            self._apply(applied, top)
            self.log.append(applied)
            self._clear_lag(now_ms)
            if self.gate.active:
                self.gate.accepted(set(map(itemgetter(0), applied)))
        return applied

    def _refuse(self, mutations: Sequence[Record], now_ms: int) -> list[Record]:
        kept = self.gate.split(list(mutations), self.gate.limit(self.clock.wall()), now_ms)
        self.counters["refused"] = self.gate.refused
        return kept

    def _next_in_line(self, mutations: Sequence[Record]) -> dict[str, int] | None:
        """The vv entries that applying all of ``mutations`` gives, when each is
        next in line: they come in runs of one origin, each run contiguous and
        carrying on from the vv, with nothing buffered for its origin (a PUB
        message is one run; a catch-up batch interleaves a few).  Else None.
        """
        after: dict[str, int] = {}
        for origin, run in groupby(mutations, key=itemgetter(0)):
            seqs = list(map(itemgetter(1), run))
            first = after.get(origin, self.vv.get(origin, 0)) + 1
            if origin in self._buffer or seqs != list(range(first, first + len(seqs))):
                return None
            after[origin] = first + len(seqs) - 1
        return after

    def _sort_out(self, mutations: Sequence[Record]) -> list[Record]:
        """Take what is next in line, entry by entry, raising the vv; hold what is
        ahead of it (a gap before it) and drop what is behind it."""
        applied: list[Record] = []
        vv, add, buffer = self.vv, applied.append, self._buffer
        for m in mutations:
            origin, seq = m[0], m[1]
            have = vv.get(origin, 0)
            if seq == have + 1:
                vv[origin] = seq
                add(m)
                if buffer and origin in buffer:
                    self._drain(origin, applied, raised_to=seq)
            elif seq > have:
                self._hold(m)
        return applied

    def _apply(self, accepted: list[Record], top: int = -1) -> None:
        """Apply entries counted in the vv: one store call, one clock merge (``top``: max hlc)."""
        self.store.apply_many(accepted)
        self.clock.observe(top if top >= 0 else max(map(itemgetter(2), accepted)))

    def _drain(self, origin: str, applied: list[Record], raised_to: int = 0) -> None:
        """Move what ``origin``'s buffer holds next in line to ``applied`` (raising the
        vv) and drop what the vv has passed.

        ``raised_to``: the vv was just raised by one, to this seq, so only that seq
        can have been passed.  Otherwise (a jump) the whole buffer is looked at:
        once per entry, that made a catch-up under write load quadratic (every
        entry of a batch scanned the PUB entries buffered meanwhile).
        """
        held = self._buffer.get(origin)
        if not held:
            return
        if raised_to and held.pop(raised_to, None) is not None:
            self._buffered -= 1
        seq = self.vv.get(origin, 0) + 1  # after a snapshot, the origin may still be unknown
        while seq in held:
            m = held.pop(seq)
            self.vv[origin] = seq
            applied.append(m)  # applied to the store by the caller, with the rest
            self._buffered -= 1
            self.counters["repaired"] += 1
            seq += 1
        if not raised_to:
            for stale in [s for s in held if s < seq]:
                del held[stale]
                self._buffered -= 1
        if not held:
            del self._buffer[origin]

    def _count_held(self, applied: list[Record]) -> bool:
        """Raise the vv over the held seqs (:mod:`mesh.core.holes`) that now carry on
        from it, draining the buffer past them into ``applied``; whether it drained any."""
        before = len(applied)
        for origin in self._held.raise_vv(self.vv):
            self._drain(origin, applied)
        return len(applied) > before

    def _drain_apply(self, origins: Iterable[str]) -> list[Record]:
        """Apply and log what the buffer holds next in line for ``origins``."""
        applied: list[Record] = []
        for origin in origins:
            self._drain(origin, applied)
        self._count_held(applied)
        if applied:
            self._apply(applied)
            self.log.append(applied)
        return applied

    def _hold(self, m: Record) -> None:
        held = self._buffer.setdefault(m[0], {})
        if m[1] in held or self._buffered >= BUFFER_LIMIT:
            return
        if not held:
            self.counters["gaps"] += 1
        held[m[1]] = m
        self._buffered += 1

    def on_heartbeat(
        self,
        node_id: str,
        origin: str,
        state: str,
        vv: dict[str, int],
        now_ms: int,
        logged: bool = True,
    ) -> None:
        """A peer's heartbeat: its origin, state and version vector.

        ``logged``: the peer has logged all that ``vv`` counts (as its fsync
        policy requires); only such beats count toward acknowledgements.  A beat
        of a new incarnation (another origin) voids what the old one said it
        logged: a node that lost its disk, or could not prove its log, holds
        none of it, and while it catches up its beats say nothing is logged.
        """
        peer = self.add_peer(node_id)
        if peer is None:
            return
        if origin != peer.origin:
            peer.logged, peer.origin_ms = {}, now_ms
        peer.origin, peer.state, peer.vv = origin, state, vv
        peer.heard_ms = peer.beat_ms = now_ms
        if logged:
            peer.logged = vv
        for o, seq in vv.items():
            if seq > self.vv.get(o, 0):
                target, since = self._lagging.get(o, (0, now_ms))
                if o == origin:  # the origin itself says so: its PUB lost something
                    since = min(since, now_ms - LAG_GRACE_MS)
                self._lagging[o] = (max(target, seq), since)

    def _clear_lag(self, now_ms: int) -> None:
        for o in [o for o, (target, _) in self._lagging.items() if self.vv.get(o, 0) >= target]:
            del self._lagging[o]

    # ------------------------------------------------------------------ catch-up client

    def poll(self, now_ms: int) -> list[tuple[str, Fetch]]:
        """The fetches to send now (one in flight per peer; see :meth:`prefetch` for two)."""
        self._expire(now_ms)
        if self.state != READY:
            self._check_ready(now_ms)
        elif self._held and self.members_known and self.origins_settled:
            self._drain_apply(self._held.skip_lost(self.vv, self.peers.values()))
        out = []
        # One snapshot at a time: a new node fetches the whole data set from one
        # peer, then only the tails from the others.  While catching up after a
        # start, one peer at a time: each answers with everything we lack, so
        # asking two at once would fetch every entry twice.
        full_busy = any(
            (p.fetching is not None and (p.fetching.full or self.state != READY))
            or (p.next_fetch is not None and (p.next_fetch.full or self.state != READY))
            for p in self.peers.values()
        )
        for peer in self.peers.values():
            if peer.fetching is not None or now_ms < peer.retry_ms:
                continue
            fetch = peer.next_fetch
            if fetch is None and self._should_fetch(peer, now_ms):
                full = peer.want_full or not self.vv
                if (full or self.state != READY) and full_busy:
                    continue
                full_busy = full_busy or full or self.state != READY
                fetch = self._new_fetch(full=full)
            if fetch is not None:
                peer.next_fetch = None
                peer.fetching, peer.fetch_sent_ms = fetch, now_ms
                self.counters["fetches"] += 1
                out.append((peer.node_id, fetch))
        return out

    def _should_fetch(self, peer: PeerView, now_ms: int) -> bool:
        if self.state != READY:
            return not peer.synced
        if peer.heard_ms < 0:
            return False
        holding = self.gate.holding
        for o, held in self._buffer.items():
            if held and peer.vv.get(o, 0) > self.vv.get(o, 0) and not holding(o, now_ms):
                return True
        for o, (_, since) in self._lagging.items():
            if (
                now_ms - since >= LAG_GRACE_MS
                and peer.vv.get(o, 0) > self.vv.get(o, 0)
                and not holding(o, now_ms)
            ):
                return self._best_source(o) is peer
        return False

    def _best_source(self, origin: str) -> PeerView | None:
        live = [p for p in self.peers.values() if p.heard_ms >= 0 and p.fetching is None]
        return max(live, key=lambda p: (p.vv.get(origin, 0), p.origin == origin), default=None)

    def _new_fetch(self, *, full: bool = False, session: int = 0, cursor: int = 0) -> Fetch:
        self._ids += 1
        return Fetch(self._ids, dict(self.vv), full, session, cursor)

    def _expire(self, now_ms: int) -> None:
        for node_id, peer in list(self.peers.items()):
            # A snapshot's first chunk waits while the peer captures its store.
            limit = FETCH_TIMEOUT_MS * (5 if peer.fetching and peer.fetching.full else 1)
            if peer.fetching is not None and now_ms - peer.fetch_sent_ms >= limit:
                peer.fetching = peer.ahead = None
                self.peers[node_id] = self.peers.pop(node_id)  # try the others first next
        self._sessions.expire(now_ms)

    def _check_ready(self, now_ms: int) -> None:
        if ready_due(self.peers.values(), self._started_ms, self._progress_ms, now_ms):
            self.state = READY

    def on_batch(self, node_id: str, batch: Batch, now_ms: int) -> list[Record]:
        """A catch-up reply; returns the entries applied (and logged)."""
        peer = self.add_peer(node_id)
        if peer is None or peer.fetching is None or peer.fetching.request_id != batch.request_id:
            return []  # late reply to an abandoned fetch
        peer.fetching, peer.heard_ms = None, now_ms
        self._progress_ms = now_ms
        if batch.need_full:
            peer.want_full = True
            peer.next_fetch = self._new_fetch(full=True)
            return []
        if batch.snapshot:
            return self._on_snapshot(peer, batch, now_ms)
        self._refused_now = False
        applied = self.receive(batch.entries, now_ms)
        if self._refused_now or (not applied and not batch.more and self.state == READY):
            # Refused (or nothing new from a peer that claimed more): do not ask
            # again at once, nor follow up the fetch already sent ahead.
            peer.ahead = peer.next_fetch = None
            peer.synced = True
            peer.retry_ms = now_ms + EMPTY_BACKOFF_MS
            return applied
        if batch.more and peer.ahead is not None:  # the next one is on its way already
            peer.fetching, peer.ahead, peer.fetch_sent_ms = peer.ahead, None, now_ms
        elif batch.more:
            peer.next_fetch = self._new_fetch()
        else:
            peer.synced = True
        return applied

    def prefetch(self, node_id: str, batch: Batch) -> Fetch | None:
        """The fetch that follows ``batch``, to send before :meth:`on_batch` applies it.

        A catch-up would otherwise alternate between the peer reading a batch
        and this node applying it; asking for the next one first lets both
        work at once (two batches in flight).  The fetch names the version
        vector that applying ``batch`` gives: a batch read from a log is
        contiguous per origin from where our vv stood.  Were that guess wrong,
        the next batch would leave a hole that gap repair fills, and
        duplicates are harmless.  A snapshot chunk is followed by the fetch of
        the next chunk (:func:`~mesh.core.catchup.fetch_after`).  None when
        ``batch`` is not one to follow up this way: a last batch or chunk, a
        stale reply, or a fetch already ahead.
        """
        peer = self.peers.get(node_id)
        if (
            peer is None
            or peer.fetching is None
            or peer.fetching.request_id != batch.request_id
            or peer.fetching.full != batch.snapshot
            or peer.ahead is not None
            or batch.need_full
            or not batch.more
        ):
            return None
        self._ids += 1
        peer.ahead = fetch_after(self._ids, self.vv, batch)
        self.counters["fetches"] += 1
        return peer.ahead

    def _on_snapshot(self, peer: PeerView, batch: Batch, now_ms: int) -> list[Record]:
        staged = stage(peer.staged, batch)  # applied once complete (see stage)
        if staged is None:  # not the continuation of what we staged: start over
            peer.staged, peer.packed = [], []
            peer.next_fetch, peer.ahead = self._new_fetch(full=True), None
            return []
        if first_chunk(batch):  # stage() started over
            peer.packed = []
        peer.staged = staged
        peer.packed.append((len(batch.entries), batch.packed))
        if batch.more and peer.ahead is not None:  # the next chunk is on its way already
            peer.fetching, peer.ahead, peer.fetch_sent_ms = peer.ahead, None, now_ms
            return []
        if batch.more:
            peer.next_fetch = self._new_fetch(full=True, session=batch.session, cursor=batch.cursor)
            return []
        top = max(map(itemgetter(2), peer.staged), default=0)
        # An image from before a DEL collected here would bring back what it deleted.
        stale = any(batch.vv.get(o, 0) < seq for o, seq in self.collected.items())
        if stale or top > self.gate.limit(self.clock.wall()):
            if not stale:  # not a snapshot to apply in part: its vv covers what is refused
                self._refuse(peer.staged, now_ms)
            peer.staged, peer.packed, peer.synced, peer.want_full = [], [], True, stale
            peer.retry_ms = now_ms + REFUSE_BACKOFF_MS
            return []
        covered = self._covered_by(batch.vv) if len(self.store) else ()
        if peer.staged:
            self._apply(peer.staged)
        if covered:
            listed = map(itemgetter(3), peer.staged)
            self.counters["image_dropped"] += self.store.drop_unlisted(listed, covered)
        peer.staged, peer.packed = [], []
        # Complete: everything up to the snapshot's vv is in the store, but not in
        # our log, so we can no longer serve those entries from it (our floor).
        for o, seq in batch.vv.items():
            if seq > self.vv.get(o, 0):
                self.vv[o] = seq
            self.floor[o] = max(self.floor.get(o, 0), seq)
        # So are the seqs its server held past a hole: held here too, till the vv reaches them.
        self._held.add(batch.held, self.vv)
        applied = self._drain_apply(list(self._buffer))
        self._clear_lag(now_ms)
        peer.want_full = False
        peer.next_fetch = self._new_fetch()  # then the tail
        self.counters["full_syncs"] += 1
        self._snapshot_due = True
        return applied

    def _covered_by(self, vv: Mapping[str, int]) -> list[str]:
        """The origins whose every write this node holds is at or below ``vv``: a
        full sync's image holds, or has deleted, whatever of theirs this store holds.

        Never this node's own origin: the group commit applies its writes before
        the vv counts them.  (A DEL of its own write that it lacks means a damaged
        log, after which it writes under a new origin.)
        """
        return [
            o
            for o, seq in vv.items()
            if seq >= max(self.vv.get(o, 0), self._held.top(o)) and o != self.origin
        ]

    def reset_to_disk(
        self,
        vv: Mapping[str, int],
        floor: Mapping[str, int],
        held: Mapping[str, Iterable[int]],
        now_ms: int,
    ) -> None:
        """The store was rebuilt from this node's disk (a log write failed: the disk is
        full): hold what the log holds, forget what was applied but not logged and
        every fetch under way, and catch up again (not ready until the peers have
        brought the rest)."""
        self.vv, self.floor = dict(vv), dict(floor)
        self._held = HeldSeqs(held)
        self._buffer.clear()
        self._buffered = 0
        for peer in self.peers.values():
            peer.fetching = peer.ahead = peer.next_fetch = None
            peer.staged, peer.packed = [], []
            peer.synced = False
        self.state = CATCHING_UP
        self._started_ms = self._progress_ms = now_ms

    def take_snapshot_due(self) -> bool:
        """True once after a full sync: persist a snapshot with ``vv`` and ``floor``."""
        due, self._snapshot_due = self._snapshot_due, False
        return due

    # ------------------------------------------------------------------ catch-up server

    def serve(
        self, node_id: str, fetch: Fetch, now_ms: int, reader: LackingReader | None = None
    ) -> Batch:
        """Answer a peer's fetch from the log (read by ``reader``), or with a snapshot chunk."""
        self.add_peer(node_id)
        if fetch.full:
            return self._sessions.serve(
                node_id,
                fetch,
                now_ms,
                self.store,
                self.vv,
                self._next_id,
                self.fetch_entries,
                self._held.as_lists,
            )
        return read_batch(self.log, fetch, self.vv, self.floor, self.fetch_entries, reader)

    def _next_id(self) -> int:
        """A new request or session id."""
        self._ids += 1
        return self._ids

    def heartbeat(self) -> dict[str, Any]:
        """What to publish every ~100 ms and after each applied batch."""
        return {"node": self.node_id, "origin": self.origin, "state": self.state, "vv": self.vv}

    def logged_by(self, seq: int) -> int:
        """How many nodes (this one included) have logged this origin's ``seq``."""
        return 1 + sum(1 for p in self.peers.values() if p.logged.get(self.origin, 0) >= seq)

    def lag(self, now_ms: int) -> dict[str, dict[str, Any]]:
        """Per peer: entries of its origin we lack, and for how long (ms)."""
        return lag_report(self.peers.values(), self.vv, self._lagging, now_ms)
