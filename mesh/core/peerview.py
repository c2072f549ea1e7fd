"""What a node knows about each peer, and the replication core's timings and states.

Kept apart from :mod:`mesh.core.replication` (which re-exports the names its
callers use) so that the core's decisions read on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh.core.catchup import Fetch
from mesh.core.mutation import Record

log = logging.getLogger("mesh.core.replication")

FETCH_TIMEOUT_MS = 1000
"""A fetch unanswered this long is abandoned and may go to another peer."""
LAG_GRACE_MS = 300
"""How long a third party may be ahead of us before we fetch from it."""
STARTUP_TIMEOUT_MS = 1500
"""A peer silent this long after start is unreachable: do not wait for it."""
READY_DEADLINE_MS = 15_000
"""Ready after this long whatever the peers do (a warning is logged)."""
BUFFER_LIMIT = 100_000
"""Most out-of-order entries buffered; past it, new ones wait for catch-up."""
EMPTY_BACKOFF_MS = 300
"""A ready node's fetch that brought nothing new waits this long before the next
to that peer (one whose heartbeats claim more than it serves is not asked in a loop)."""
DEFAULT_MAX_OFFSET_MS = 1000
"""How far ahead of this node's clock an entry's hlc may be (``--max-clock-offset-ms``)."""
ORIGIN_SETTLE_MS = 10_000
"""After a peer is first heard under an origin, how long every peer must be heard from
again before this node takes what they have as all there is (see :func:`origins_settled`)."""

CATCHING_UP = "catching-up"
READY = "ready"


@dataclass
class PeerView:
    """What this node knows about one peer."""

    node_id: str
    origin: str = ""
    state: str = "unknown"
    vv: dict[str, int] = field(default_factory=dict)
    logged: dict[str, int] = field(default_factory=dict)  # vv of its last logged-vv heartbeat
    heard_ms: int = -1
    beat_ms: int = -1  # when its last heartbeat came (heard_ms counts replies too)
    origin_ms: int = -1  # when its first beat under ``origin`` came (monotonic ms)
    fetching: Fetch | None = None
    fetch_sent_ms: int = 0
    next_fetch: Fetch | None = None  # continuation to send as soon as possible
    ahead: Fetch | None = None  # sent (prefetch) while the reply to ``fetching`` is applied
    want_full: bool = False
    synced: bool = False  # answered "nothing more" since we started
    staged: list[Record] = field(default_factory=list)  # snapshot chunks not yet applied
    packed: list[tuple[int, bytes | None]] = field(default_factory=list)  # their sizes, bytes
    retry_ms: int = 0  # no fetch to this peer before then (monotonic ms)


def lag_report(
    peers: Iterable[PeerView],
    vv: dict[str, int],
    lagging: dict[str, tuple[int, int]],
    now_ms: int,
) -> dict[str, dict[str, Any]]:
    """Per peer: entries of its origin ``vv`` lacks, for how long (ms), and its state."""
    out = {}
    for peer in peers:
        behind = max(0, peer.vv.get(peer.origin, 0) - vv.get(peer.origin, 0))
        since = lagging.get(peer.origin, (0, now_ms))[1] if behind else now_ms
        out[peer.node_id] = {"entries": behind, "ms": max(0, now_ms - since), "state": peer.state}
    return out


def origins_settled(peers: Iterable[PeerView], settle_ms: int) -> bool:
    """Whether every peer's heartbeat came ``settle_ms`` or more after the last time one
    was first heard under its present origin (so after this node started, too).

    When a member comes back as a new origin (it lost its disk, or could not
    prove its log), nobody can say how far its old origin got: a PUB its old
    process sent just before it died may still be on its way to a peer, which
    will apply it.  A message is in flight for at most the TCP user timeout
    (3 s, :mod:`mesh.roles.liveness`); ``ORIGIN_SETTLE_MS`` is over twice that,
    so each peer's beat heard then speaks for a vv that counts whatever late
    message it got.  Until then this node neither collects a tombstone
    (:mod:`mesh.core.tombstones`) nor gives up a hole in its log as lost
    (:mod:`mesh.core.holes`): either would leave the late entry to bring back
    a deleted key, or to reach every node but this one.
    """
    views = list(peers)
    if not views:
        return True
    changed = max(p.origin_ms for p in views)
    return all(p.beat_ms >= changed + settle_ms for p in views)


def ready_due(peers: Iterable[PeerView], started_ms: int, progress_ms: int, now_ms: int) -> bool:
    """Whether a catching-up node may call itself ready: every peer that is up has
    answered "nothing more", or the catch-up made no progress for READY_DEADLINE_MS
    (counted from the last batch received, so a long catch-up that keeps making
    progress is never cut short)."""
    elapsed = now_ms - started_ms
    waiting = [
        p.node_id
        for p in peers
        if not p.synced and (p.heard_ms >= 0 or elapsed < STARTUP_TIMEOUT_MS)
    ]
    if waiting and now_ms - max(started_ms, progress_ms) >= READY_DEADLINE_MS:
        log.warning("ready without a full catch-up from %s", ", ".join(waiting))
        return True
    return not waiting
