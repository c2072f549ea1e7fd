"""When a tombstone may be forgotten: causal stability from the version vectors.

A tombstone keeps a key's version so that an older write arriving late cannot
bring the key back.  It is needed only while such a write can still arrive.
:class:`StableFrontier` tells when none can, per origin, from what this node
knows of every member's version vector (their heartbeats); :class:`TombstoneQueue`
keeps the store's tombstones in the order they become collectable, so that
:meth:`mesh.core.store.Store.collect_stable` drops them without a scan.

Why two rounds.  Say a tombstone is the entry ``(o, s)`` with version ``h``.
Once every member's *logged* vv has ``vv[o] >= s``, every member has applied
it, so its hybrid clock is past ``h`` and every write it makes from then on is
newer.  Writes older than ``h`` may still exist, though: made before their
node saw the tombstone, and not yet here.  Each is at most the seq its origin
had reached then, which the member's heartbeat vv bounds, as it bounds every
other origin's entries that member holds.  So the frontier ``low`` (the
pointwise minimum of the members' logged vvs and this node's vv) becomes
*stable* once this node's own vv reaches ``high`` (the pointwise maximum of
the members' vvs, taken at the same time): then every write older than a
tombstone at or below ``low`` has been applied here, and loses to it or was
overwritten.  A member whose vv does not cover an entry (down, partitioned,
catching up) keeps its tombstones: ``--tombstone-horizon-ms`` and the store's
tombstone budget bound them meanwhile.

A new incarnation: a member may come back as a new origin while a PUB of its
old one is still on its way (the simulator found it, seed 3100014889: a
message 844 ms late, applied after the others had collected a tombstone it
predated).  So nothing is collected until
:func:`~mesh.core.peerview.origins_settled`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from mesh.core.clock import LOGICAL_BITS

TOMBSTONE_OVERHEAD = 240
"""Estimated bytes a tombstone costs beyond its key (tracemalloc, CPython 3.11)."""

if TYPE_CHECKING:
    from mesh.core.replication import Replica

Frontier = dict[str, int]
"""Per origin, the highest seq at or below which tombstones may be dropped."""


class StableFrontier:
    """The stable frontier of one node, advanced on every call to :meth:`advance`."""

    def __init__(self) -> None:
        self.frontier: Frontier = {}
        self._pending: tuple[Frontier, Frontier] | None = None  # (low, high needed)

    def collect(self, replica: Replica) -> int:
        """Advance from ``replica``'s vv and its peers' heartbeats (every member's view
        counts), then drop its store's stable tombstones; return how many.

        While a member the trust keys name is not among the replica's peers yet
        (a node that lost its disk learns them again by HELLO:
        :attr:`~mesh.core.replication.Replica.members_known`), nothing is collected.
        """
        if not replica.members_known:
            return 0
        peers = list(replica.peers.values())
        if (
            not replica.settled
            or not replica.origins_settled
            or not _dead_origins_agree(replica.origin, replica.vv, peers)
        ):
            self._pending = None  # not a time to take a frontier, nor to promote one
            return 0
        frontier = self.advance(replica.vv, [p.logged for p in peers], [p.vv for p in peers])
        replica.collected = frontier  # full syncs from before it are refused
        return replica.store.collect_stable(frontier, replica.vv, collect_horizon(replica))

    def advance(
        self,
        vv: Mapping[str, int],
        logged_vvs: Iterable[Mapping[str, int]],
        peer_vvs: Iterable[Mapping[str, int]],
    ) -> Frontier:
        """Promote the pending frontier once ``vv`` reached its ``high``; start the next.

        ``vv`` is this node's version vector, ``logged_vvs`` the members' last
        logged vvs and ``peer_vvs`` their last vvs (one of each per member,
        in any order; a member never heard gives ``{}``).
        """
        if self._pending is not None:
            stable, needed = self._pending
            if all(vv.get(o, 0) >= seq for o, seq in needed.items()):
                self.frontier, self._pending = stable, None
        if self._pending is None:
            logged = list(logged_vvs)
            low: Frontier = {}
            for o, own in vv.items():
                seq = min([own, *(v.get(o, 0) for v in logged)])
                if seq > 0:
                    low[o] = seq
            high: Frontier = {}
            for v in peer_vvs:
                for o, seq in v.items():
                    if seq > high.get(o, 0):
                        high[o] = seq
            self._pending = (low, high)
        return self.frontier


def collect_horizon(replica: Replica) -> int:
    """The hlc a tombstone must be below to be collected: this node's wall clock less
    the clock offset its peers may have (``--max-clock-offset-ms``).

    A member whose clock is behind stamps a new write below the hlc of a DEL it
    follows.  While the tombstone is held, the DEL wins there; once it is
    collected on some nodes and not others, those take the write and the others
    refuse it, for good (simulator seeds 6500051333, 6500070039, 6600034061:
    a node back from a lost disk, its clock seconds behind).  A clock within the
    offset stamps every write above this horizon.
    """
    return (replica.clock.wall() - replica.gate.max_offset_ms) << LOGICAL_BITS


def _dead_origins_agree(origin: str, vv: Mapping[str, int], peers: list[Any]) -> bool:
    """Whether every peer's vv equals ``vv`` on the origins nobody writes as any more
    (incarnations that lost their disk or their log, this node's ``origin`` and the
    peers' being alive): nobody can say how far such an origin got, so its entries
    past what some member applied may still turn up (held in a buffer, or past a
    hole in a log) and bring back what a collected tombstone deleted."""
    alive = {origin, *(p.origin for p in peers)}
    return all(p.vv.get(o, 0) == seq for o, seq in vv.items() if o not in alive for p in peers)


class TombstoneQueue:
    """The store's tombstones by origin and seq, for :meth:`collect`.

    Writes only append ``(origin, seq, key, hlc)`` to :attr:`inbox` (seq 0 when
    the entry's seq is unknown: snapshot and full-sync entries, evictions,
    expiries).  :meth:`collect` files the inbox per origin, an unknown seq
    taking the vv's (the entry was applied, so its seq is at most that), and
    pops each origin's queue up to the frontier.  Items whose tombstone was
    overwritten since are skipped then, and dropped by :meth:`compact` once
    they are more than the tombstones held: O(1) amortized per tombstone.
    """

    def __init__(self) -> None:
        self.inbox: list[tuple[str, int, str, int]] = []
        self.queues: dict[str, deque[tuple[int, str, int]]] = {}
        self.limit = 4096  # compact when the inbox grows past this

    def __len__(self) -> int:
        return len(self.inbox) + sum(map(len, self.queues.values()))

    def collect(
        self,
        tombs: MutableMapping[str, tuple],
        frontier: Mapping[str, int],
        vv: Mapping[str, int],
        below_hlc: int | None = None,
    ) -> list[str]:
        """Drop from ``tombs`` every tombstone at or below ``frontier`` (and, given
        ``below_hlc``, stamped below it: :func:`collect_horizon`); return their keys."""
        queues, later = self.queues, []
        for item in self.inbox:
            origin, seq, key, hlc = item
            if not seq:
                seq = vv.get(origin, 0)
                if not seq:  # its origin is not in the vv yet: look again next time
                    later.append(item)
                    continue
            queue = queues.get(origin)
            if queue is None:
                queue = queues[origin] = deque()
            queue.append((seq, key, hlc))
        self.inbox[:] = later
        dropped = []
        for origin, queue in queues.items():
            top = frontier.get(origin, 0)
            while queue and queue[0][0] <= top and (below_hlc is None or queue[0][2] < below_hlc):
                _, key, hlc = queue.popleft()
                tomb = tombs.get(key)
                if tomb is not None and tomb[1] == hlc and tomb[2] == origin:
                    del tombs[key]
                    dropped.append(key)
        for origin in [o for o, q in queues.items() if not q]:
            del queues[origin]
        if len(self) > 2 * len(tombs) + 4096:
            self.compact(tombs)
        return dropped

    def compact(self, tombs: Mapping[str, tuple]) -> None:
        """Keep only the items whose tombstone is still held (in place)."""
        get = tombs.get
        self.inbox[:] = [
            i for i in self.inbox if (t := get(i[2])) is not None and t[1] == i[3] and t[2] == i[0]
        ]
        for origin, queue in list(self.queues.items()):
            kept = [
                i for i in queue if (t := get(i[1])) is not None and t[1] == i[2] and t[2] == origin
            ]
            if kept:
                self.queues[origin] = deque(kept)
            else:
                del self.queues[origin]
        self.limit = 2 * len(tombs) + 4096


def collect_older(tombs: OrderedDict[str, tuple], cutoff_ms: int, budget: int) -> list[str]:
    """Drop tombstones stamped before ``cutoff_ms`` (the horizon), looking at up to
    ``budget`` of them, oldest inserted first (the others move to the back, so
    every one is looked at in turn); return the keys dropped."""
    dropped = []
    for _ in range(min(budget, len(tombs))):
        key, entry = tombs.popitem(last=False)
        if entry[1] >> LOGICAL_BITS < cutoff_ms:
            dropped.append(key)
        else:
            tombs[key] = entry
    return dropped


def trim_oldest(tombs: OrderedDict[str, tuple], size: int, limit: int) -> tuple[int, int]:
    """Past ``limit`` estimated bytes (``size`` now), drop the oldest tombstones down
    to 15/16 of it, so that not every write trims; return the new size and how many."""
    dropped = 0
    if size > limit:
        while tombs and size > limit - (limit >> 4):
            key, _ = tombs.popitem(last=False)
            size -= len(key) + TOMBSTONE_OVERHEAD
            dropped += 1
    return size, dropped
