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
from dataclasses import dataclass
from typing import Protocol

from mesh.core.mutation import Mutation, Record
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
    cannot serve the request and a snapshot is needed.
    """

    request_id: int
    entries: Sequence[Record]
    vv: dict[str, int]
    more: bool = False
    snapshot: bool = False
    session: int = 0
    cursor: int = 0
    need_full: bool = False


def read_batch(
    log: ReplicaLog,
    fetch: Fetch,
    vv: dict[str, int],
    snapshot_floor: dict[str, int],
    max_entries: int,
) -> Batch:
    """The answer from ``log`` to ``fetch``: what its requester lacks of ``vv``, up
    to ``max_entries`` entries and about FETCH_BYTES, or ``need_full`` when the
    log no longer reaches back far enough (below ``snapshot_floor``, the seqs
    this node got by snapshot, or below the log's own floor)."""
    floor = {
        **snapshot_floor,
        **{o: max(s, snapshot_floor.get(o, 0)) for o, s in log.floor().items()},
    }
    entries: list[Record] = []
    more = False
    budget = FETCH_BYTES
    for origin, mine in vv.items():
        theirs = fetch.vv.get(origin, 0)
        if theirs >= mine:
            continue
        if theirs < floor.get(origin, 0):
            return Batch(fetch.request_id, [], dict(vv), need_full=True)
        room = max_entries - len(entries)
        if room <= 0 or budget <= 0:
            more = True
            break
        got, size = log.read_range(origin, theirs + 1, min(mine, theirs + room), budget)
        if not got or got[0][1] != theirs + 1:
            return Batch(fetch.request_id, [], dict(vv), need_full=True)
        entries += got
        budget -= size
        more = more or got[-1][1] < mine
    return Batch(fetch.request_id, entries, dict(vv), more=more)


@dataclass
class Session:
    """One snapshot being streamed to a peer."""

    node_id: str  # the requester: session ids restart with the process, so check whose
    entries: Iterator[Mutation]  # captured when the session starts, read chunk by chunk
    vv: dict[str, int]
    used_ms: int
    position: int = 0  # entries handed out so far
    last: tuple[int, list[Mutation], bool] = (-1, [], False)  # (start, chunk, more) resent on retry


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
    ) -> Batch:
        """The snapshot chunk ``fetch`` (``full``) asks for: the next of its session,
        the last one again, or the first of a new session (id from ``new_id``)
        capturing ``store`` and ``vv`` now."""
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
            session = self._sessions[sid] = Session(node_id, store.entries(), dict(vv), now_ms)
        session.used_ms = now_ms
        if session.last[0] == fetch.cursor and fetch.cursor != session.position:
            start, chunk, more = session.last  # the reply to this was lost: send it again
        else:
            start, chunk, more = session.position, *_chunk(session.entries, max_entries)
            session.position += len(chunk)
            session.last = (start, chunk, more)
        return Batch(fetch.request_id, chunk, session.vv, more, True, sid, start + len(chunk))

    def expire(self, now_ms: int) -> None:
        """Drop the sessions nobody read for SESSION_IDLE_MS."""
        for sid in [
            s for s, sess in self._sessions.items() if now_ms - sess.used_ms > SESSION_IDLE_MS
        ]:
            del self._sessions[sid]


def _chunk(entries: Iterator[Mutation], max_entries: int) -> tuple[list[Mutation], bool]:
    """The next snapshot chunk (bounded in entries and bytes) and whether more follow."""
    chunk: list[Mutation] = []
    budget = FETCH_BYTES
    for m in entries:
        chunk.append(m)
        budget -= len(m.value or b"") + len(m.key)
        if budget <= 0 or len(chunk) >= max_entries:
            break
    else:
        return chunk, False
    return chunk, True
