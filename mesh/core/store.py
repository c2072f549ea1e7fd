"""The in-memory map: values, versions, tombstones, TTL deadlines and LRU eviction.

State only, no I/O: the node calls :meth:`Store.apply` with every mutation it
accepts, replicates or replays, and :meth:`Store.get` to serve reads.

Every key the store knows is held in exactly one of two ordered maps:

``live``
    keys with a value, from least to most recently used (the LRU list).
``tombstones``
    keys without a value, in insertion order, keeping only their version:
    DELs, expired keys and evicted keys.  A tombstone stops an older write that
    arrives late from bringing the key back.  :meth:`Store.collect_stable`
    drops it once no such write can arrive any more (every member has moved
    past it: :mod:`mesh.core.tombstones`); :meth:`Store.sweep` drops it anyway
    once its timestamp is older than ``tombstone_horizon_ms``.

Writes resolve by last-writer-wins on ``(hlc, origin)`` (strictly greater
applies), so any permutation of the same mutations gives the same state.
A counter's mutations carry its state instead of bin, and merge
(:mod:`mesh.core.counters`); the store holds a counter as a ``CounterValue``.

``live`` holds each key by its UTF-8 (5 bytes less than a ``str`` at 10**6
keys) as one compact object (:mod:`mesh.core.entry`: a small value and its
version in one ``bytes``), ``tombstones`` tuples laid out as :class:`Entry`.
Deadlines are in ``expires`` (as in Redis), sampled by :meth:`Store.sweep`
(:mod:`mesh.core.expiry`; reads expire due keys lazily too) and bucketed by
deadline, so that :meth:`Store.digest` finds the due keys without a scan.
The digest is hashed lazily (:mod:`mesh.core.digest`).

``bytes`` in :meth:`Store.stats` is an estimate: key length + value length +
:data:`ENTRY_OVERHEAD` per live key, key length + :data:`TOMBSTONE_OVERHEAD`
per tombstone (measured with tracemalloc).  ``max_memory`` bounds the live
part (LRU eviction); tombstones have a budget of their own, ``max_memory //
TOMBSTONE_SHARE``, past which the oldest are dropped: they never crowd out
live data (they once filled the limit and every SET was evicted at once).
"""

from __future__ import annotations

import random
import sys
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from heapq import heappush
from typing import Any

from mesh.core.clock import LOGICAL_BITS, wall_ms
from mesh.core.counters import CounterValue, eviction_version, resolve, slot_origins
from mesh.core.digest import fold, folded_share, unfolded
from mesh.core.entry import (
    HLC_SHIFT,
    HLC_SLICE,
    MAX_ORIGINS,
    META_BYTES,
    SMALL_VALUE,
    Entry,
    held_entries,
    unpack,
)
from mesh.core.errors import ConfigError
from mesh.core.expiry import DUE_SHIFT, due_buckets, expire_due, expire_sampled, still_timed
from mesh.core.mutation import Mutation, Record
from mesh.core.tombstones import TOMBSTONE_OVERHEAD, TombstoneQueue, collect_older, trim_oldest

ENTRY_OVERHEAD = 130
"""Estimated bytes a live key costs beyond its key and value (objects, map slots)."""

DEFAULT_TOMBSTONE_HORIZON_MS = 24 * 3600 * 1000
"""The longest a tombstone is kept by default, stable or not (a SET older than
it could revive its key)."""

TOMBSTONE_SHARE = 8
"""Under ``max_memory`` M, tombstones may take up to M // TOMBSTONE_SHARE estimated
bytes besides the live data; past that the oldest are dropped (``tombstones_dropped``)."""

SETTLE_MS = 1000
"""The sweep hashes an entry into the digest once it has gone this long unwritten
(by its hlc): a hot key is hashed about once per second, not twice per write
(:mod:`mesh.core.digest`).  :meth:`Store.digest` hashes the rest when asked."""

_new_tuple = tuple.__new__


def _check_limit(name: str, value: object) -> int:
    if type(value) is not int or value < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    return value


class Store:
    """The key-value map of one node.

    ``max_keys`` and ``max_memory`` (estimated bytes, see the module docstring)
    bound the live data, 0 meaning unlimited; least recently used keys are
    evicted past either.  ``now_ms`` is the wall clock and ``seed`` seeds the
    expiry sampling (inject both in tests).  Bad arguments raise
    :class:`mesh.core.errors.ConfigError`, a ValueError.
    """

    def __init__(
        self,
        *,
        max_keys: int = 0,
        max_memory: int = 0,
        tombstone_horizon_ms: int = DEFAULT_TOMBSTONE_HORIZON_MS,
        now_ms: Callable[[], int] = wall_ms,
        seed: int | None = None,
    ) -> None:
        self._max_keys = _check_limit("max_keys", max_keys)
        self._max_memory = _check_limit("max_memory", max_memory)
        self.tombstone_horizon_ms = _check_limit("tombstone_horizon_ms", tombstone_horizon_ms)
        if not callable(now_ms):
            raise ConfigError("now_ms must be a callable returning milliseconds")
        self._now_ms = now_ms
        self._bounded = bool(max_keys or max_memory)
        self._key_limit = max_keys or sys.maxsize
        self._byte_limit = max_memory or sys.maxsize
        self._tomb_limit = max_memory // TOMBSTONE_SHARE if max_memory else sys.maxsize
        self._rng = random.Random(seed)
        # LRU order only when something can be evicted (a dict inserts a third faster)
        self._live: dict[bytes, Any] = OrderedDict() if self._bounded else {}
        self._tombs: OrderedDict[str, tuple] = OrderedDict()
        self._tq = TombstoneQueue()  # the tombstones by origin and seq, for collect_stable
        self._tomb_bytes = 0
        self._dropped = 0  # tombstones dropped over their budget before they were stable
        self._expires: dict[bytes, int] = {}  # the deadline of every live key that has one
        self._ttl_keys: list[bytes] = []  # every live key with a deadline, maybe stale ones
        self._ttl_limit = 4096  # compact _ttl_keys past this length
        self._due: dict[int, list[bytes]] = {}  # the same keys by deadline bucket (expiry.py)
        self._due_order: list[int] = []  # the bucket ids of _due, a heap
        self._oids: dict[str, int] = {}  # origin -> its id in compact entries
        self._names: list[str] = []  # origin id -> origin (one shared str each)
        self._digest = 0  # XOR of the digests of the live entries that are folded
        self._dirty: list[bytes] = []  # keys written live since the sweep's last turn
        self._dirty_limit = 4096  # compact _dirty past this length
        self._settling: list[bytes] = []  # keys noted before that turn: the sweep hashes them
        self._turned_ms = 0  # when _dirty last became _settling
        self._bytes = 0
        self._hits = self._misses = self._expired = self._evicted = self._collected = 0

    @property
    def max_keys(self) -> int:
        """The live-key limit, 0 for none (fixed at construction)."""
        return self._max_keys

    @property
    def max_memory(self) -> int:
        """The estimated-bytes limit, 0 for none (fixed at construction)."""
        return self._max_memory

    # -- writes -------------------------------------------------------------

    def take_contents(self, other: Store) -> None:
        """Hold ``other``'s data from now on (a store rebuilt from disk), keeping
        this store's limits and counters (hits, misses, expired, ...)."""
        held = (
            "_live _tombs _tq _tomb_bytes _expires _ttl_keys _due _due_order _oids _names"
            " _digest _dirty _settling _bytes"
        )
        for name in held.split():
            setattr(self, name, getattr(other, name))

    def apply(self, m: Mutation) -> bool:
        """Apply one mutation by last-writer-wins; True when the held version changed.

        A mutation whose deadline has already passed is stored as a tombstone
        with its version (and counted as expired).
        """
        return self.apply_many((m,)) == 1

    def apply_many(self, mutations: Iterable[Record]) -> int:
        """:meth:`apply` each mutation in order; returns how many changed the held version.

        One call for a whole batch (replay, catch-up, PUB messages): the
        per-entry work is the same, without a call and the attribute lookups
        per entry (byte accounting included: kept in a local until the end,
        or until an eviction needs it).
        """
        live, tombs, expires, ttl_keys = self._live, self._tombs, self._expires, self._ttl_keys
        due = self._due
        oids, names, from_bytes = self._oids, self._names, int.from_bytes
        bounded, now, dirty, dirty_limit = self._bounded, 0, self._dirty, self._dirty_limit
        inbox, qlimit = self._tq.inbox, self._tq.limit  # the inbox is compacted in place
        room = self._tomb_limit - self._tomb_bytes  # for tsize, the tombstones' bytes
        changed = size = tsize = 0
        try:
            for origin, seq, hlc, key, value, deadline in mutations:
                kb = key.encode()
                raw = live.get(kb)
                if type(value) is tuple:  # a counter's state: merged (mesh.core.counters)
                    old = None if raw is None else self._entry(kb, raw)
                    won = resolve(old, tombs.get(key), origin, hlc, value, deadline)
                    if won is None:
                        continue
                    value, hlc, origin, deadline = won
                    seq = 0  # if it expires: the tombstone queue takes the vv's seq
                    if raw is None and key in tombs:
                        del tombs[key]
                        tsize -= len(key) + TOMBSTONE_OVERHEAD
                elif raw is not None:
                    held = from_bytes(raw[HLC_SLICE], "big") if type(raw) is bytes else raw[1]
                    if hlc < held or (hlc == held and origin <= self._entry(kb, raw)[2]):
                        continue
                elif tombs:
                    tomb = tombs.get(key)
                    if tomb is not None:
                        if hlc < tomb[1] or (hlc == tomb[1] and origin <= tomb[2]):
                            continue
                        del tombs[key]
                        tsize -= len(key) + TOMBSTONE_OVERHEAD
                if raw is not None:
                    if type(raw) is not bytes or raw[-1] & 1:  # its share is in the digest
                        self._digest ^= folded_share(kb, raw, names, expires)
                    size -= (
                        len(kb)
                        + ENTRY_OVERHEAD
                        + (len(raw) - META_BYTES if type(raw) is bytes else len(raw[0]))
                    )
                    if expires:
                        expires.pop(kb, None)
                changed += 1
                if deadline and value is not None:
                    now = now or self._now_ms()  # read once per call: a batch is one instant
                    if deadline <= now:
                        self._expired += 1
                        value = None
                oid = oids.get(origin)
                if oid is None:
                    oid = self._add_origin(origin)
                origin = names[oid]
                if value is None:
                    if raw is not None:
                        del live[kb]
                    tombs[key] = (None, hlc, origin, 0, 0)
                    tsize += len(key) + TOMBSTONE_OVERHEAD
                    inbox.append((origin, seq, key, hlc))
                    if tsize > room or len(inbox) > qlimit:
                        self._tomb_bytes += tsize
                        tsize = 0
                        self._tidy_tombs()
                        room, qlimit = self._tomb_limit - self._tomb_bytes, self._tq.limit
                else:
                    if type(value) is bytes and len(value) <= SMALL_VALUE:
                        meta = (hlc << HLC_SHIFT) | (oid << 1)
                        live[kb] = value + meta.to_bytes(META_BYTES, "big")
                    else:
                        live[kb] = (value, hlc, oid, 0)
                    dirty.append(kb)
                    if len(dirty) > dirty_limit:
                        self._compact_dirty()
                        dirty, dirty_limit = self._dirty, self._dirty_limit
                    size += len(kb) + len(value) + ENTRY_OVERHEAD
                    if deadline:
                        expires[kb] = deadline
                        ttl_keys.append(kb)
                        bucket = due.get(deadline >> DUE_SHIFT)
                        if bucket is None:
                            self._add_due_bucket(deadline >> DUE_SHIFT, kb)
                        else:
                            bucket.append(kb)
                        if len(ttl_keys) > self._ttl_limit:
                            self._compact_ttl()
                            ttl_keys, due = self._ttl_keys, self._due
                    if raw is not None and bounded:
                        live.move_to_end(kb)  # type: ignore[attr-defined]
                if bounded:
                    self._bytes += size
                    size = 0
                    if len(live) > self._key_limit or self._bytes > self._byte_limit:
                        self._evict()
                        room, qlimit = self._tomb_limit - self._tomb_bytes, self._tq.limit
        finally:
            self._bytes += size
            self._tomb_bytes += tsize
        if self._tomb_bytes > self._tomb_limit:
            self._tidy_tombs()
        return changed

    def _add_origin(self, origin: str) -> int:
        """A new id for ``origin`` in the origin table."""
        if len(self._names) >= MAX_ORIGINS:
            raise OverflowError(f"a store tells at most {MAX_ORIGINS} origins apart")
        oid = self._oids[origin] = len(self._names)
        self._names.append(origin)
        return oid

    def _entry(self, key: bytes, raw: Any) -> Entry:
        """The :class:`Entry` of a held compact entry (its deadline from ``expires``)."""
        value, hlc, oid = unpack(raw)
        share = 0 if type(raw) is bytes else raw[3]
        return _new_tuple(Entry, (value, hlc, self._names[oid], self._expires.get(key, 0), share))

    def _drop_share(self, key: bytes, raw: Any) -> int:
        """Take a live entry that is going out of the digest; returns its value's length."""
        self._digest ^= folded_share(key, raw, self._names, self._expires)
        return len(raw) - META_BYTES if type(raw) is bytes else len(raw[0])

    def _evict(self) -> None:
        """Turn least recently used keys into tombstones while over a limit."""
        live, tombs, inbox, expires = self._live, self._tombs, self._tq.inbox, self._expires
        key_limit, over = self._key_limit, self._bytes - self._byte_limit
        freed = tsize = evicted = 0
        while live and (len(live) > key_limit or freed < over):
            kb, raw = live.popitem(last=False)  # type: ignore[call-arg]
            hlc, origin = eviction_version(self._entry(kb, raw))
            freed += len(kb) + self._drop_share(kb, raw) + ENTRY_OVERHEAD
            if expires:
                expires.pop(kb, None)
            key = kb.decode()
            tombs[key] = (None, hlc, origin, 0, 0)
            tsize += len(key) + TOMBSTONE_OVERHEAD
            inbox.append((origin, 0, key, hlc))  # its seq: the vv's, later
            evicted += 1
        self._bytes, self._evicted = self._bytes - freed, self._evicted + evicted
        self._tomb_bytes += tsize
        if self._tomb_bytes > self._tomb_limit or len(inbox) > self._tq.limit:
            self._tidy_tombs()

    def _tidy_tombs(self) -> None:
        """Drop the oldest tombstones past their budget; compact the queue past its limit."""
        self._tomb_bytes, dropped = trim_oldest(self._tombs, self._tomb_bytes, self._tomb_limit)
        self._dropped += dropped
        if len(self._tq.inbox) > self._tq.limit:
            self._tq.compact(self._tombs)

    def _expire(self, kb: bytes) -> None:
        """Turn a due live entry into a tombstone of its version."""
        raw = self._live.pop(kb)
        _, hlc, origin, _, _ = self._entry(kb, raw)
        self._bytes -= len(kb) + self._drop_share(kb, raw) + ENTRY_OVERHEAD
        del self._expires[kb]
        key = kb.decode()
        self._tombs[key] = (None, hlc, origin, 0, 0)
        self._tomb_bytes += len(key) + TOMBSTONE_OVERHEAD
        self._tq.inbox.append((origin, 0, key, hlc))  # its seq: the vv's, later
        self._expired += 1
        if self._tomb_bytes > self._tomb_limit or len(self._tq.inbox) > self._tq.limit:
            self._tidy_tombs()

    def _compact_ttl(self) -> None:
        """Keep ``_ttl_keys`` under twice the keys with a deadline (amortized O(1)),
        and ``_due`` too (each holds an item per write with a deadline)."""
        self._ttl_keys = still_timed(self._ttl_keys, self._expires)
        self._ttl_limit = 2 * len(self._ttl_keys) + 4096
        if sum(map(len, self._due.values())) > 2 * len(self._expires) + 4096:
            self._due, self._due_order = due_buckets(self._expires)

    def _add_due_bucket(self, bucket_id: int, kb: bytes) -> None:
        self._due[bucket_id] = [kb]
        heappush(self._due_order, bucket_id)

    # -- reads --------------------------------------------------------------

    def get(self, key: str, *, record_stats: bool = True) -> Entry | None:
        """The live entry for ``key`` or None; expires the key if its deadline passed.

        With ``record_stats`` (the default) the read counts as a hit or a miss
        and makes the key the most recently used.
        """
        kb = key.encode()
        raw = self._held(kb, record_stats)
        return None if raw is None else self._entry(kb, raw)

    def value(self, key: str) -> bytes | None:
        """The live value of ``key`` or None: :meth:`get` for GET, recording stats."""
        raw = self._held(key.encode(), True)
        if raw is None:
            return None
        return raw[:-META_BYTES] if type(raw) is bytes else raw[0]

    def _held(self, key: bytes, record_stats: bool) -> Any:
        raw = self._live.get(key)
        if raw is not None and self._expires:
            deadline = self._expires.get(key)
            if deadline is not None and deadline <= self._now_ms():
                self._expire(key)
                raw = None
        if raw is None:
            if record_stats:
                self._misses += 1
            return None
        if record_stats:
            self._hits += 1
            if self._bounded:
                self._live.move_to_end(key)  # type: ignore[attr-defined]
        return raw

    def version(self, key: str) -> tuple[int, str] | None:
        """The version held for ``key``, live (even if due) or tombstone, else None;
        a counter's is its newest write's.  No stats, no LRU change."""
        kb = key.encode()
        raw = self._live.get(kb)
        if raw is None:
            tomb = self._tombs.get(key)
            return None if tomb is None else (tomb[1], tomb[2])
        return eviction_version(self._entry(kb, raw))  # a counter's newest write's

    def live_keys(self) -> list[str]:
        """The live keys (due ones not yet expired included), in the map's order."""
        return [key.decode() for key in self._live]

    def tombstone(self, key: str) -> tuple | None:
        """The tombstone held for ``key`` (laid out as :class:`Entry`), or None."""
        return self._tombs.get(key)

    def ttl_ms(self, key: str) -> int:
        """Milliseconds left to live, as Redis PTTL: -2 no such key, -1 no TTL."""
        kb = key.encode()
        if self._held(kb, False) is None:
            return -2
        deadline = self._expires.get(kb)
        return -1 if deadline is None else deadline - self._now_ms()

    def __len__(self) -> int:
        """Live keys, counting expired keys not yet collected (as Redis DBSIZE)."""
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is live; no stats, no LRU change."""
        if type(key) is not str or (kb := key.encode()) not in self._live:
            return False
        deadline = self._expires.get(kb)
        return deadline is None or deadline > self._now_ms()

    # -- housekeeping -------------------------------------------------------

    def sweep(
        self,
        *,
        samples: int = 20,
        max_rounds: int = 16,
        gc_scan: int = 1000,
        hash_budget: int = 2000,
    ) -> int:
        """Active expiry and tombstone collection; returns how many keys expired.

        Each round samples up to ``samples`` keys that have a deadline and
        expires the due ones; another round follows while more than a quarter
        of the sample was due, up to ``max_rounds``.  Then up to ``gc_scan``
        tombstones are examined, oldest inserted first: those whose timestamp
        is older than the horizon are dropped, the others move to the back, so
        every tombstone is looked at in turn.  Last, up to ``hash_budget``
        entries written since the last :meth:`digest` and left unwritten for
        :data:`SETTLE_MS` since are hashed, so that call stays short.
        """
        if samples < 1 or max_rounds < 1 or gc_scan < 0 or hash_budget < 0:
            raise ValueError("samples, max_rounds must be >= 1; gc_scan, hash_budget >= 0")
        now = self._now_ms()
        expired = expire_sampled(
            self._ttl_keys, self._expires, now, self._rng, samples, max_rounds, self._expire
        )
        old = collect_older(self._tombs, now - self.tombstone_horizon_ms, gc_scan)
        self._tomb_bytes -= sum(map(len, old)) + TOMBSTONE_OVERHEAD * len(old)
        self._collected += len(old)
        self._hash_settled(hash_budget, now)
        return expired

    def _hash_settled(self, budget: int, now: int) -> None:
        """Every :data:`SETTLE_MS`, the keys noted since become ``_settling``;
        SETTLE_MS later they are hashed, ``budget`` per call, but for entries
        written again meanwhile, which are noted once more."""
        if now - self._turned_ms < SETTLE_MS:
            return
        if not self._settling:
            self._settling, self._dirty = self._dirty, []
            self._turned_ms = now
            return
        settled = (now - SETTLE_MS) << LOGICAL_BITS
        live, names, expires = self._live, self._names, self._expires
        self._digest ^= fold(live, self._settling, names, expires, budget, settled, self._dirty)

    def unhashed(self) -> int:
        """At most how many live entries :meth:`digest` has still to hash (the keys
        noted since they were last hashed, repeats included)."""
        return len(self._settling) + len(self._dirty)

    def hash_some(self, budget: int) -> None:
        """Hash up to ``budget`` of the noted keys into the digest: a slice of the
        work of :meth:`digest`, for a caller that spreads it out."""
        live, names, expires = self._live, self._names, self._expires
        first = min(budget, len(self._settling))
        self._digest ^= fold(live, self._settling, names, expires, first)
        self._digest ^= fold(live, self._dirty, names, expires, budget - first)

    def collect_stable(
        self, frontier: dict[str, int], vv: dict[str, int], below_hlc: int | None = None
    ) -> int:
        """Drop the tombstones at or below ``frontier`` (from
        :class:`~mesh.core.tombstones.StableFrontier`), stamped below ``below_hlc`` if
        given; ``vv``: the node's, for the unknown seqs.  Returns how many;
        O(those + tombstones since the last call)."""
        dropped = self._tq.collect(self._tombs, frontier, vv, below_hlc)
        self._tomb_bytes -= sum(map(len, dropped)) + TOMBSTONE_OVERHEAD * len(dropped)
        self._collected += len(dropped)
        return len(dropped)

    def drop_unlisted(self, listed: Iterable[str], covered: Collection[str]) -> int:
        """Drop the live keys not in ``listed`` whose writes all came from ``covered``
        origins (a counter: its base and every slot); returns how many.

        A full sync's image lists every key its sender holds, tombstones included,
        and covers some origins as far as this node knows them: a key of this
        store that the image lacks, written by such an origin, was deleted there
        and the tombstone collected (or trimmed).  Nothing stands in for it, as
        nothing stands for a collected tombstone.  O(live keys).
        """
        oids = {self._oids[o] for o in covered if o in self._oids}
        if not oids:
            return 0
        keep = {key.encode() for key in listed}
        live = self._live
        gone = [kb for kb, raw in live.items() if kb not in keep and self._all_from(raw, oids)]
        for kb in gone:
            raw = live.pop(kb)
            self._bytes -= len(kb) + self._drop_share(kb, raw) + ENTRY_OVERHEAD
            self._expires.pop(kb, None)
        return len(gone)

    def _all_from(self, raw: Any, oids: set[int]) -> bool:
        """Whether every write a held compact entry carries is from an origin in ``oids``."""
        value, _, oid = unpack(raw)
        if oid not in oids:
            return False
        if type(value) is not CounterValue:
            return True
        return all(self._oids.get(origin, -1) in oids for origin in slot_origins(value.state))

    # -- whole-store views --------------------------------------------------

    def entries(self) -> Iterator[Mutation]:
        """Every held entry, tombstones included, as ``Mutation(origin, 0, ...)``.

        The entries are captured when this is called (O(keys) pointer copies),
        so the caller may keep writing while it iterates.  Keys whose deadline
        has passed come out as tombstones.  Applying the result to an empty
        store rebuilds the same state.
        """
        # Two lists of pointers, no tuple per key: those would stay behind as
        # fragmented arenas (issue 15).  dict.keys: the raw table order, much
        # faster than the LRU linked list.
        live = zip(list(dict.keys(self._live)), list(dict.values(self._live)), strict=True)
        tombs = list(dict.items(self._tombs))
        return held_entries(live, tombs, dict(self._expires), list(self._names), self._now_ms())

    def digest(self) -> str:
        """An order-independent digest of the live data, as 16 hex digits.

        Equal on two stores holding the same live keys with the same values,
        versions and deadlines, however they got there: the XOR of a 64-bit
        hash per live entry (:mod:`mesh.core.digest`).  This call expires the
        due keys (O(keys due since the last call), :func:`~mesh.core.expiry.expire_due`)
        and hashes the entries written since they were last hashed (:meth:`sweep`
        hashes a bounded number per call).
        """
        expire_due(self._due, self._due_order, self._expires, self._now_ms(), self._expire)
        self.hash_some(self.unhashed())
        return f"{self._digest:016x}"

    def _compact_dirty(self) -> None:
        """Keep ``_dirty`` under twice the live keys: amortized O(1) per write."""
        if len(self._dirty) > 2 * len(self._live):
            self._dirty = unfolded(self._dirty, self._live)
        self._dirty_limit = 2 * len(self._live) + 4096

    def stats(self) -> dict[str, int]:
        """Counters and sizes; ``keys`` counts live keys only."""
        return {
            "keys": len(self._live),
            "tombstones": len(self._tombs),
            "bytes": self._bytes + self._tomb_bytes,
            "tombstone_bytes": self._tomb_bytes,
            "tombstones_dropped": self._dropped,
            "hits": self._hits,
            "misses": self._misses,
            "expired": self._expired,
            "evicted": self._evicted,
            "collected": self._collected,
            "max_keys": self._max_keys,
            "max_memory": self._max_memory,
        }
