"""The lag guard: a node that knows it is behind its peers stops serving until it has caught up.

Pure (the time is passed in).  :class:`LagGuard` judges, from what the peers'
heartbeats say they hold, whether this node is too far behind to serve:

- **Entries.**  For every origin, the ``seq`` live peers (heard within
  :data:`LIVE_MS`) claim, corroborated (:func:`corroborated`: not one
  member's word alone), minus this node's; summed over the origins.  Behind
  past ``max_entries``.
- **Age.**  How long the oldest of those claims has gone unmet (a claim is
  met when this node's version vector reaches it).  Behind past ``max_ms``.
- **A stall.**  When the node's loop did not run for :data:`STALL_MS` (a
  SIGSTOP, a VM pause, a loop blocked on a long snapshot), whatever it heard
  before is old, and so are the heartbeats queued in its sockets meanwhile:
  it is behind at once, and stays so until every peer it knew has sent a
  heartbeat stamped after the stall (the peer's wall clock, in the
  heartbeat, past the one of its last heartbeat before the stall plus the
  stall's length: no comparison of two machines' clocks).  Old heartbeats
  drain from the sockets first (a long pause queues many); a peer that sends
  nothing at all for :data:`LIVE_MS` after the stall is not waited for (it
  died meanwhile), nor anyone after :data:`FRESH_TIMEOUT_MS`.

Back to serving once within a tenth of ``max_entries`` and a quarter of
``max_ms`` (hysteresis), with fresh news from every peer, for :data:`HOLD_MS`.
A limit of 0 turns that check off; both 0 turn the guard off.
Origins whose entries the clock guard refuses are not counted (``ignore``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Mapping
from dataclasses import dataclass

BEHIND = "behind"
"""A node's state while it knows it is too far behind its peers to serve."""
DEFAULT_MAX_LAG_ENTRIES = 1000
"""Entries a node may lack (that its live peers hold) and still serve (``--max-lag-entries``)."""
DEFAULT_MAX_LAG_MS = 1000
"""How long a claimed entry may go missing before the node stops serving (``--max-lag-ms``)."""
STALL_MS = 300
"""A loop that did not run this long was stalled: what it heard before is old."""
FRESH_TIMEOUT_MS = 30_000
"""After a stall, wait at most this long for fresh heartbeats (a peer's clock stepped back)."""
LIVE_MS = 1500
"""Only peers heard this recently count (as :data:`mesh.core.peerview.STARTUP_TIMEOUT_MS`)."""
HOLD_MS = 200
"""Back within bounds this long (two heartbeats) before serving again."""
#: most claims remembered per origin (the oldest is always kept: it gives the age)
_CLAIMS_KEPT = 64


@dataclass(frozen=True)
class LagVerdict:
    """What :meth:`LagGuard.judge` found: behind or not, entries lacking, the age of the
    oldest unmet claim (ms), and the peers whose news predates the last stall."""

    behind: bool
    entries: int
    ms: int
    stale: tuple[str, ...] = ()
    stall_ms: int = 0


class LagGuard:
    """Whether this node is too far behind its peers to serve (see the module doc)."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_LAG_ENTRIES,
        max_ms: int = DEFAULT_MAX_LAG_MS,
        *,
        stall_ms: int = STALL_MS,
        hold_ms: int = HOLD_MS,
        live_ms: int = LIVE_MS,
        fresh_timeout_ms: int = FRESH_TIMEOUT_MS,
    ) -> None:
        self.max_entries = max_entries
        self.max_ms = max_ms
        self.enabled = bool(max_entries or max_ms)
        self.stall_ms = stall_ms
        self.hold_ms = hold_ms
        self.live_ms = live_ms
        self.fresh_timeout_ms = fresh_timeout_ms
        self.behind = False
        self.stalls = 0
        self.verdict = LagVerdict(False, 0, 0)
        self._touched: int | None = None  # when the loop last ran (monotonic ms)
        self._walls: dict[str, int] = {}  # peer -> wall clock of its last heartbeat
        self._heard: dict[str, int] = {}  # peer -> when its last heartbeat arrived (monotonic)
        self._waiting: dict[str, int] = {}  # peer -> wall its next news must be stamped past
        self._resumed = 0
        self._gap = 0
        self._claims: dict[str, deque[tuple[int, int]]] = {}  # origin -> (seq, first seen ms)
        self._within_since: int | None = None

    def touch(self, now_ms: int) -> bool:
        """The node's loop runs at ``now_ms``; True when that ends a stall (the node is
        then behind until fresh heartbeats come)."""
        last, self._touched = self._touched, now_ms
        if not self.enabled or last is None or now_ms - last < self.stall_ms:
            return False
        self.stalls += 1
        self._resumed, self._gap = now_ms, now_ms - last
        self._waiting = {peer: wall + self._gap for peer, wall in self._walls.items()}
        if not self._waiting:
            return False  # a node that never heard a peer has nobody to be behind
        self.behind, self._within_since = True, None
        return True

    def busy(self, now_ms: int) -> None:
        """The loop was busy (a snapshot written in it), not stopped, until ``now_ms``:
        that gap is no stall.  Its news is as old as the work was long, as before a
        stall-detecting guard; refusing every op after each snapshot would be worse."""
        self._touched = now_ms

    def heard(self, peer: str, their_wall: int, now_ms: int) -> bool:
        """A heartbeat of ``peer`` stamped ``their_wall`` (its wall clock) arrived; False
        when it is old news (sent before the end of this node's last stall)."""
        self.touch(now_ms)  # first: a stall ends before anything queued during it counts
        self._walls[peer], self._heard[peer] = their_wall, now_ms
        need = self._waiting.get(peer)
        if need is None:
            return True
        if their_wall < need:
            return False
        del self._waiting[peer]
        return True

    def reset(self) -> None:
        """Not behind, and waiting for nobody (the node is not serving yet)."""
        self.behind, self._within_since = False, None
        self._waiting.clear()

    def forget(self, peer: str) -> None:
        """Drop a peer that left."""
        self._walls.pop(peer, None)
        self._heard.pop(peer, None)
        self._waiting.pop(peer, None)

    def judge(
        self,
        vv: Mapping[str, int],
        peers: Mapping[str, tuple[Mapping[str, int], int]],
        now_ms: int,
        ignore: Container[str] = (),
    ) -> LagVerdict:
        """Judge this node (version vector ``vv``) against ``peers``: per peer id, the
        version vector of its last heartbeat and when it was heard (-1: never)."""
        self.touch(now_ms)

        def live(heard: int) -> bool:
            return heard >= 0 and now_ms - heard <= self.live_ms

        if self._waiting and now_ms - self._resumed >= self.fresh_timeout_ms:
            self._waiting.clear()
        for peer in list(self._waiting):  # silent since the stall: it died meanwhile
            if now_ms - max(self._heard.get(peer, 0), self._resumed) > self.live_ms:
                del self._waiting[peer]
        best = corroborated(vv, [pvv for pvv, heard in peers.values() if live(heard)], ignore)
        entries, oldest = 0, now_ms
        for origin in [o for o in self._claims if best.get(o, 0) <= vv.get(o, 0)]:
            del self._claims[origin]
        for origin, claimed in best.items():
            mine = vv.get(origin, 0)
            if claimed <= mine:
                continue
            entries += claimed - mine
            claims = self._claims.setdefault(origin, deque())
            while claims and claims[0][0] <= mine:
                claims.popleft()
            if not claims or claims[-1][0] < claimed:
                if len(claims) >= _CLAIMS_KEPT:
                    claims.pop()  # keep the oldest (the age) and the newest
                claims.append((claimed, now_ms))
            oldest = min(oldest, claims[0][1])
        age = now_ms - oldest
        if self.enabled:
            self._decide(entries, age, now_ms)
        stale = tuple(sorted(self._waiting))
        self.verdict = LagVerdict(self.behind, entries, age, stale, self._gap if stale else 0)
        return self.verdict

    def _decide(self, entries: int, age: int, now_ms: int) -> None:
        over = (self.max_entries and entries > self.max_entries) or (
            self.max_ms and age > self.max_ms
        )
        if not self.behind:
            self.behind = bool(over)
            return
        within = (
            not self._waiting
            and (not self.max_entries or entries <= self.max_entries // 10)
            and (not self.max_ms or age <= self.max_ms // 4)
        )
        if not within:
            self._within_since = None
        elif self._within_since is None:
            self._within_since = now_ms
        if self._within_since is not None and now_ms - self._within_since >= self.hold_ms:
            self.behind, self._within_since = False, None

    def reason(self) -> str:
        """Why the node is behind, for NOT_READY replies and the log."""
        v = self.verdict
        if v.stale:
            return (
                f"its loop stalled for {v.stall_ms} ms; waiting for news from "
                f"{', '.join(v.stale)} sent since"
            )
        return (
            f"{v.entries} entries behind its peers (max {self.max_entries}), the oldest "
            f"missing for {v.ms} ms (max {self.max_ms} ms)"
        )


def corroborated(
    vv: Mapping[str, int], claims: list[Mapping[str, int]], ignore: Container[str] = ()
) -> dict[str, int]:
    """Per origin, the highest seq that the next-to-middle of the claims (this node's
    ``vv`` among them) reaches: one member claiming entries nobody else has, a
    member with a bug, cannot make every other node think it is behind.

    With this node and two peers, the second highest claim counts (one peer
    holding an entry is enough only with one peer: there is nobody to ask).
    """
    origins = {o for pvv in claims for o in pvv if o not in ignore}
    best = {}
    for origin in origins:
        seqs = sorted((pvv.get(origin, 0) for pvv in (vv, *claims)), reverse=True)
        best[origin] = seqs[(len(seqs) - 1) // 2]
    return best
