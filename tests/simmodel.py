"""The model half of the deterministic simulation (``tests/sim.py``): a run's
params, a node's disk (the model log, snapshots) and process, and the records
the checkers keep (acknowledged writes, results).  ``tests/sim.py`` holds the
cluster: network, faults, clients, checkers.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any, NamedTuple

from mesh.core.acks import PendingAcks
from mesh.core.clock import HybridClock
from mesh.core.lagguard import DEFAULT_MAX_LAG_ENTRIES, DEFAULT_MAX_LAG_MS, LagGuard
from mesh.core.mutation import Mutation, encode_records
from mesh.core.replication import Replica
from mesh.core.store import Store
from mesh.core.tombstones import StableFrontier

Version = tuple[int, str]


class SimFailure(AssertionError):
    """A checker failed; the message names the seed that replays it."""


@dataclasses.dataclass
class Params:
    """One run's shape; :func:`random_params` draws one per seed."""

    nodes: int = 3
    keys: int = 6
    writes: int = 20
    duration_ms: int = 1500
    drop: float = 0.0
    dup: float = 0.0
    delay_ms: int = 5
    slow: float = 0.0
    slow_ms: int = 300
    partitions: int = 0
    crashes: int = 0
    disk_loss: float = 0.0
    torn: float = 0.0
    skew_ms: int = 0
    compactions: int = 0
    clock_steps: int = 0
    fetch_entries: int = 4096
    max_offset_ms: int = 0  # the clock guard's bound; 0: wider than any skew drawn
    max_lag_entries: int = DEFAULT_MAX_LAG_ENTRIES  # the lag guard's bounds
    max_lag_ms: int = DEFAULT_MAX_LAG_MS
    # Drawn from a second stream (:func:`more_params`), so that the draws above,
    # and the runs of seeds with these off, are those of before they existed.
    w_share: float = 0.0  # share of client writes asking w = 2, quorum or all
    cuts: int = 0  # records cut out of the middle of a log (tests/simfaults.py), each a crash
    max_memory: int = 0  # each store's max_memory (evictions, the tombstone budget)
    collect: int = 0  # 1: every tick drops the stable tombstones (Node._sweep)
    hello: int = 0  # 1: node k starts knowing n1..n(k-1), learns the rest by HELLO
    incrs: int = 0  # INCRBYs of counters on random nodes (tests/simcounters.py)
    ttls: int = 0  # SETs with a TTL, EXPIREs and PERSISTs (tests/simttl.py)
    pauses: int = 0  # SIGSTOPs of random nodes (tests/simfaults.py)


def random_params(rng: random.Random) -> Params:
    """Draw a small run: a few nodes, a few dozen writes on a few keys, some faults."""
    return Params(
        nodes=rng.randint(3, 5),
        keys=rng.randint(2, 10),
        writes=rng.randint(5, 40),
        duration_ms=rng.randint(300, 2500),
        drop=rng.choice((0.0, 0.02, 0.1, 0.3)),
        dup=rng.choice((0.0, 0.05, 0.2)),
        delay_ms=rng.choice((1, 5, 20, 60)),
        slow=rng.choice((0.0, 0.02, 0.1)),
        slow_ms=rng.choice((100, 400, 1500)),
        partitions=rng.randint(0, 3),
        crashes=rng.randint(0, 3),
        disk_loss=rng.choice((0.0, 0.0, 0.3, 1.0)),
        torn=rng.choice((0.0, 0.3, 1.0)),
        skew_ms=rng.choice((0, 50, 1000, 5000)),
        compactions=rng.randint(0, 3),
        clock_steps=rng.randint(0, 2),
        fetch_entries=rng.choice((1, 3, 16, 4096)),
    )


def more_params(rng: random.Random) -> dict[str, Any]:
    """The params added since: drawn from their own stream (see :func:`make`)."""
    return {"w_share": rng.choice((0.0, 0.0, 0.3, 1.0))}


class Write(NamedTuple):
    """An acknowledged mutation; ``logged_on``: the nodes that had logged it then (w > 1),
    ``logged_as``: the incarnation (origin) of each whose word the origin took for it."""

    node: str
    at_ms: int
    mutation: Mutation
    needed: int = 1
    logged_on: tuple[str, ...] = ()
    logged_as: tuple[str, ...] = ()

    @property
    def version(self) -> Version:
        return self.mutation.version()

    def holders(self, origins: dict[str, str], but: str = "") -> list[str]:
        """The nodes (not ``but``) that logged it and are still the incarnation that
        said so (``origins``: node id -> its origin now).

        A node that lost its disk, even before the acknowledgement, is a new
        incarnation: a beat its old one sent before the loss and that arrived
        after it could still count toward the acknowledgement, as it may in a
        real network, but the copy it spoke of is gone.
        """
        return [
            node
            for node, origin in zip(self.logged_on, self.logged_as, strict=True)
            if node != but and origins[node] == origin
        ]


class Snapshot(NamedTuple):
    """A durable snapshot: the store's entries, vv and floor, and the log position;
    ``held``: the seqs its store holds past a hole (``snapshot_meta``'s "held")."""

    entries: list[Mutation]
    vv: dict[str, int]
    floor: dict[str, int]
    pos: int
    held: dict[str, list[int]] | None = None


class SimLog:
    """The model log (``mesh.core.catchup.ReplicaLog``): a synced prefix, compaction.

    ``base`` is the absolute position of ``records[0]``; ``synced`` the absolute
    end of what survives a crash.
    """

    def __init__(self) -> None:
        self.records: list[Mutation] = []
        self.base = 0
        self.synced = 0
        self._floor: dict[str, int] = {}

    @property
    def end(self) -> int:
        return self.base + len(self.records)

    def append(self, mutations: Sequence[Mutation], records: Sequence[bytes] | None = None) -> int:
        if records is not None:
            assert records == encode_records(mutations), "records that are not the mutations"
        self.records.extend(mutations)
        return self.end - 1

    def read_range(
        self, origin: str, first: int, last: int, max_bytes: int
    ) -> tuple[list[Mutation], int]:
        out, size = [], 0
        for m in self.records:
            if m[0] == origin and first <= m[1] <= last:
                out.append(m)
                size += len(m.key) + len(m.value or b"") + 32
                if size >= max_bytes:
                    break
        return out, size

    def floor(self) -> dict[str, int]:
        return dict(self._floor)

    def sync(self) -> None:
        self.synced = self.end

    def crash(self, keep: int) -> int:
        """Lose the unsynced tail but its first ``keep`` records; returns how many were lost."""
        cut = self.synced + keep
        lost = self.end - cut
        del self.records[cut - self.base :]
        self.synced = self.end
        return lost

    def compact(self, upto: int) -> int:
        """Drop the records before absolute position ``upto``; returns how many."""
        drop = self.records[: upto - self.base]
        for m in drop:
            if m[1] > self._floor.get(m[0], 0):
                self._floor[m[0]] = m[1]
        del self.records[: len(drop)]
        self.base += len(drop)
        return len(drop)


def held(store: Store, key: str) -> Version | None:
    """The version ``store`` holds for ``key``, live or tombstone (a counter's:
    its newest write's)."""
    return store.version(key)


class SimNode:
    """One simulated node: its disk (log, snapshot) survives crashes, the rest does not."""

    def __init__(self, node_id: str, skew_ms: int, tick_ms: int) -> None:
        self.id = node_id
        self.skew_ms = skew_ms
        self.tick_ms = tick_ms
        self.incarnation = 1
        self.life = 0  # bumped on every crash and boot: messages are bound to one life
        self.up = False
        self.log = SimLog()
        self.snapshot: Snapshot | None = None
        # The process: set by Sim._boot, stale (and unused) while the node is down.
        self.store: Store
        self.clock: HybridClock
        self.replica: Replica
        self.unsynced = False  # replicated records appended, fsync deferred to the beat
        self.armed: tuple[int, int] | None = None  # crash (down ms, keep) after a deferred fsync
        self.high: dict[str, Version] = {}  # the version watermark per key (checker 3)
        self.totals: dict[str, int] = {}  # replica counters of past lives
        self.stable: StableFrontier  # the tombstone collection's frontier (per process)
        self.lag: LagGuard  # the lag guard, as mesh.roles.node_status drives it
        self.paused_until = 0  # a SIGSTOP: nothing runs, messages queue, until then
        self.acks = PendingAcks()  # replies held for w > 1 (lost with the process)
        self.configured: set[str] = set()  # tests/simhello.py: the peers it starts with
        self.known: set[str] = set()  # ... and those it knows (peers.json)
        self.unanswered: set[str] = set()  # ... said HELLO to, no answer yet
        self.damaged = False  # its log lost records mid-way: boots with the contiguous vv

    @property
    def origin(self) -> str:
        return f"{self.id}/{self.incarnation}"

    def counters(self) -> dict[str, int]:
        """The replica counters summed over this node's lives."""
        out = dict(self.totals)
        if self.up:
            for k, v in self.replica.counters.items():
                out[k] = out.get(k, 0) + v
        return out


@dataclasses.dataclass
class Result:
    """What one run did and ended with."""

    seed: int
    params: Params
    settled_ms: int
    events: int
    acked: int
    stats: dict[str, int]
    counters: dict[str, int]
    digests: dict[str, str]
    trace: list[tuple] | None = None
