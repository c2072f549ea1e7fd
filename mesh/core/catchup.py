"""Serving catch-up: the Fetch and Batch messages, and the answers to a fetch.

Pure logic, like :mod:`mesh.core.replication`, whose :class:`~mesh.core.replication.Replica`
sends :class:`Fetch` requests and answers its peers' with a :class:`Batch`
built here: either the bounded run of log entries the requester lacks
(:func:`read_batch`), or the next chunk of a snapshot of the store streamed
to it in a session (:class:`SnapshotSessions`).  A session captures the
store's entries and version vector when it starts and hands them out chunk by
chunk; a chunk whose reply was lost is sent again when asked for again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import Protocol

from mesh.core.mutation import Mutation, Record, raise_seqs
from mesh.core.store import Store

FETCH_ENTRIES = 16384
"""Most entries in one catch-up batch."""
FETCH_BYTES = 4 * 1024 * 1024
"""Most record bytes in one catch-up batch (at least one entry is always sent)."""
SESSION_IDLE_MS = 30_000
"""A snapshot session nobody read for this long is dropped."""


class ReplicaLog(Protocol):
    """What the core needs from a log (``mesh.storage.log.Log`` and the simulator's)."""

    def append(
        self, mutations: Sequence[Record], records: Sequence[bytes] | None = None
    ) -> int: ...

    def read_range(
        self, origin: str, first: int, last: int, max_bytes: int
    ) -> tuple[list[Record], int]: ...

    def floor(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Fetch:
    """A catch-up request: here is my version vector, send me what I miss.

    ``full`` asks for a snapshot; ``session``/``cursor`` continue one (0: start).
    """

    request_id: int
    vv: dict[str, int]
    full: bool = False
    session: int = 0
    cursor: int = 0


@dataclass(frozen=True)
class Batch:
    """A catch-up reply: entries the requester lacks, or a snapshot chunk.

    ``vv`` is the server's version vector (for a snapshot: as of the
    snapshot).  ``more`` says the server has more; ``need_full`` that its log
    cannot serve the request and a snapshot is needed.  ``held``: a snapshot's
    seqs past its vv that its store holds (a server whose log has a hole:
    :mod:`mesh.core.holes`), per origin; empty almost always.
    """

    request_id: int
    entries: Sequence[Record]
    vv: dict[str, int]
    more: bool = False
    snapshot: bool = False
    session: int = 0
    cursor: int = 0
    need_full: bool = False
    raw: RawEntries | None = None  # the entries as the log holds them (served, not parsed)
    packed: bytes | None = None  # a snapshot chunk's entries as received (mesh.core.snapimage)
    held: dict[str, list[int]] = field(default_factory=dict)

    def count(self) -> int:
        """How many entries the batch carries."""
        return len(self.raw if self.raw is not None else self.entries)


class RawEntries:
    """Entries as a log holds them: each the msgpack payload of its record, which is
    how a BATCH carries an entry inline (see :mod:`mesh.core.peerwire`), so they
    are sent without decoding or encoding them again.  One run per origin:
    ``runs`` maps each origin to the first and last seq of its run."""

    __slots__ = ("payloads", "runs")

    def __init__(self, payloads: list[bytes], runs: dict[str, tuple[int, int]]) -> None:
        self.payloads = payloads
        self.runs = runs

    def __len__(self) -> int:
        return len(self.payloads)


LackingReader = Callable[[dict[str, tuple[int, int]], int, int], tuple[RawEntries, bool]]
"""Reads, in one pass of the log, the records of each origin with seq in its
``(first, last)``, up to a number of entries and about a number of bytes; says
whether it stopped for that bound (``mesh.storage.lacking.read_lacking``)."""


def read_batch(
    log: ReplicaLog,
    fetch: Fetch,
    vv: dict[str, int],
    snapshot_floor: dict[str, int],
    max_entries: int,
    reader: LackingReader | None = None,
) -> Batch:
    """The answer from ``log`` to ``fetch``: what its requester lacks of ``vv``, up
    to ``max_entries`` entries and about FETCH_BYTES, or ``need_full`` when the
    log no longer reaches back far enough (below ``snapshot_floor``, the seqs
    this node got by snapshot, or below the log's own floor).  With ``reader``,
    every origin is read in one pass of the log and the batch's entries are
    ``raw``; without, origin after origin with ``log.read_range``."""
    floor = {
        **snapshot_floor,
        **{o: max(s, snapshot_floor.get(o, 0)) for o, s in log.floor().items()},
    }
    wants: dict[str, tuple[int, int]] = {}
    for origin, mine in vv.items():
        theirs = fetch.vv.get(origin, 0)
        if theirs >= mine:
            continue
        if theirs < floor.get(origin, 0):
            return Batch(fetch.request_id, [], dict(vv), need_full=True)
        wants[origin] = (theirs + 1, mine)
    if reader is None:
        return _read_each(log, fetch.request_id, wants, vv, max_entries)
    raw, bounded = reader(wants, max_entries, FETCH_BYTES)
    more = False
    for origin, (first, mine) in wants.items():
        got = raw.runs.get(origin)
        if (got is not None and got[0] != first) or (got is None and not bounded):
            return Batch(fetch.request_id, [], dict(vv), need_full=True)  # not in the log
        more = more or (got[1] if got else first - 1) < mine
    return Batch(fetch.request_id, [], dict(vv), more=more, raw=raw)


def served_tops(fetch_vv: dict[str, int], batch: Batch) -> dict[str, int]:
    """``fetch_vv`` raised to the highest seq of each origin ``batch`` carries: the
    requester's vv once it has applied the batch."""
    if batch.raw is None:
        return raise_seqs(fetch_vv, batch.entries)
    out = dict(fetch_vv)
    for origin, (_, last) in batch.raw.runs.items():
        out[origin] = max(out.get(origin, -1), last)
    return out


def fetch_after(request_id: int, vv: dict[str, int], batch: Batch) -> Fetch:
    """The fetch that follows ``batch`` (one with ``more``), sent before it is applied
    (:meth:`mesh.core.replication.Replica.prefetch`): for a snapshot chunk, the
    next chunk of its session, which the peer packs while this node checks
    and stages this one (should this one not carry on from what was staged,
    the snapshot starts over and that reply is dropped as stale); else the
    entries that follow, from the version vector that applying it gives."""
    if batch.snapshot:
        return Fetch(request_id, dict(vv), True, batch.session, batch.cursor)
    return Fetch(request_id, served_tops(vv, batch))


def _read_each(
    log: ReplicaLog,
    request_id: int,
    wants: dict[str, tuple[int, int]],
    vv: dict[str, int],
    max_entries: int,
) -> Batch:
    """:func:`read_batch` origin after origin, with ``log.read_range``."""
    entries: list[Record] = []
    more = False
    budget = FETCH_BYTES
    for origin, (first, mine) in wants.items():
        room = max_entries - len(entries)
        if room <= 0 or budget <= 0:
            more = True
            break
        got, size = log.read_range(origin, first, min(mine, first - 1 + room), budget)
        if not got or got[0][1] != first:
            return Batch(request_id, [], dict(vv), need_full=True)
        entries += got
        budget -= size
        more = more or got[-1][1] < mine
    return Batch(request_id, entries, dict(vv), more=more)


@dataclass
class Session:
    """One snapshot being streamed to a peer."""

    node_id: str  # the requester: session ids restart with the process, so check whose
    entries: Iterator[Mutation]  # captured when the session starts, read chunk by chunk
    vv: dict[str, int]
    used_ms: int
    position: int = 0  # entries handed out so far
    pending: list[Mutation] = field(default_factory=list)  # taken from ``entries``, not sent yet
    last: tuple[int, list[Mutation], bool] = (-1, [], False)  # (start, chunk, more) resent on retry
    held: dict[str, list[int]] = field(default_factory=dict)  # seqs past vv the store holds


class SnapshotSessions:
    """The snapshots this node streams to its peers, by session id."""

    def __init__(self) -> None:
        self._sessions: dict[int, Session] = {}

    def serve(
        self,
        node_id: str,
        fetch: Fetch,
        now_ms: int,
        store: Store,
        vv: dict[str, int],
        new_id: Callable[[], int],
        max_entries: int,
        held: Callable[[], dict[str, list[int]]] = dict,
    ) -> Batch:
        """The snapshot chunk ``fetch`` (``full``) asks for: the next of its session,
        the last one again, or the first of a new session (id from ``new_id``)
        capturing ``store``, ``vv`` and what ``held`` gives (the seqs past ``vv``
        that ``store`` holds) now."""
        session = self._sessions.get(fetch.session)
        sid = fetch.session
        if (
            session is None
            or fetch.cursor == 0
            or session.node_id != node_id
            or fetch.cursor not in (session.position, session.last[0])
        ):
            # A new session starts at 0, even when its id is the one asked for
            # (ids restart with the process: the request was for the last one's).
            sid = new_id()
            session = Session(node_id, store.entries(), dict(vv), now_ms, held=held())
            self._sessions[sid] = session
        session.used_ms = now_ms
        if session.last[0] == fetch.cursor and fetch.cursor != session.position:
            start, chunk, more = session.last  # the reply to this was lost: send it again
        else:
            start, chunk, more = session.position, *_chunk(session, max_entries)
            session.position += len(chunk)
            session.last = (start, chunk, more)
        cursor, held_now = start + len(chunk), session.held
        return Batch(fetch.request_id, chunk, session.vv, more, True, sid, cursor, held=held_now)

    def expire(self, now_ms: int) -> None:
        """Drop the sessions nobody read for SESSION_IDLE_MS."""
        for sid in [
            s for s, sess in self._sessions.items() if now_ms - sess.used_ms > SESSION_IDLE_MS
        ]:
            del self._sessions[sid]


def first_chunk(batch: Batch) -> bool:
    """Whether ``batch`` is the first chunk of a snapshot: staging starts over with it."""
    return batch.cursor == len(batch.entries)


def stage(staged: list[Record], batch: Batch) -> list[Record] | None:
    """``staged`` (a peer's snapshot chunks so far) with ``batch``'s chunk added, or
    None when that chunk does not carry on from them (the snapshot starts over).

    Chunks are staged and applied only once the snapshot is complete: one
    abandoned halfway must leave no trace, or the store would hold writes
    its vv does not cover, which no catch-up reconciles once no log holds
    them any more (their origin lost its disk): digests would never agree.
    """
    if first_chunk(batch):  # a new snapshot (or the server started over): drop what was staged
        staged = []
    elif batch.cursor - len(batch.entries) != len(staged):
        return None
    staged += batch.entries
    return staged


_SLICE = 256
"""Snapshot entries taken from the store's iterator at a time (see :func:`_chunk`)."""


def _chunk(session: Session, max_entries: int) -> tuple[list[Mutation], bool]:
    """The next snapshot chunk of ``session`` (bounded in entries and bytes, at least
    one entry) and whether more follow.

    Entries are taken a slice at a time and measured with C-level passes; the
    slice that crosses the byte budget is cut after the entry that crosses it,
    and its rest kept for the next chunk.
    """
    chunk: list[Mutation] = []
    budget, max_entries = FETCH_BYTES, max(1, max_entries)
    while len(chunk) < max_entries:
        want = min(_SLICE, max_entries - len(chunk))
        part, session.pending = session.pending[:want], session.pending[want:]
        if len(part) < want:
            part += islice(session.entries, want - len(part))
        size = sum(map(len, map(_KEY, part))) + sum(map(len, filter(None, map(_VALUE, part))))
        if size >= budget:
            cut = _cut(part, budget)
            session.pending[:0] = part[cut:]
            chunk += part[:cut]
            return chunk, True
        chunk += part
        budget -= size
        if len(part) < want:
            return chunk, False
    return chunk, True


_KEY, _VALUE = itemgetter(3), itemgetter(4)


def _cut(part: list[Mutation], budget: int) -> int:
    """How many of ``part`` to take: up to the entry whose size uses up ``budget``."""
    for i, m in enumerate(part):
        budget -= len(m.key) + len(m.value or b"")
        if budget <= 0:
            return i + 1
    return len(part)
