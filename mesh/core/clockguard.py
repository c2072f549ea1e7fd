"""The clock offset guard, as CockroachDB's max-offset: one bad clock must not drag the others.

Two halves, both pure (the wall clock and the time are passed in):

- :class:`ClockGuard` judges this node's own clock.  Every heartbeat carries
  its sender's wall clock (ms); at receipt, ``their wall - our wall`` is that
  peer's offset.  PUB/SUB is one-way, so the measure includes the network
  delay (about 0 on loopback): the guard's precision is that delay.  When a
  majority of the members (this node counted) are peers heard within
  :data:`HEARD_WINDOW_MS` whose offset is beyond ``max_offset_ms``, this
  node's clock is the odd one out: it reports state :data:`CLOCK_OFFSET`
  and serves no data until the offsets come back within bounds.
- :class:`FutureGate` protects the HLC: entries whose hlc's physical time is
  more than ``max_offset_ms`` ahead of this node's wall clock are refused
  (counted, logged once per origin per change, not applied), and catch-up of
  that origin backs off (1 s, doubling to 8 s) so a refused entry is not
  fetched in a tight loop; once the clock allows it they are taken as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from dataclasses import dataclass

from mesh.core.clock import LOGICAL_BITS, LOGICAL_MASK, MAX_HLC

log = logging.getLogger(__name__)

CLOCK_OFFSET = "clock-offset"
"""A node's state when its wall clock is beyond the max offset from the majority's."""
HEARD_WINDOW_MS = 3000
"""Only peers heard this recently count."""
STALL_MS = 1000
"""A gap this long between two judgements means this node was stalled (paused, say)."""
REFUSE_BACKOFF_MS = 1000
"""First wait before fetching an origin's refused entries again (doubles)."""
REFUSE_BACKOFF_MAX_MS = 8000
#: Room left above the highest hlc accepted, so that later local events never overflow.
_HEADROOM = 1 << 40


@dataclass(frozen=True)
class Verdict:
    """What :meth:`ClockGuard.judge` found.

    ``offset_ms``: how far this node's clock is ahead of its peers (the median
    of the offending peers' when ``bad``, else of all heard; negative: behind).
    """

    bad: bool
    offset_ms: int
    far: int
    heard: int


class ClockGuard:
    """Per peer, the last measured clock offset; judges whether this node's clock is off."""

    def __init__(self, max_offset_ms: int, window_ms: int = HEARD_WINDOW_MS) -> None:
        self.max_offset_ms = max_offset_ms
        self.window_ms = window_ms
        self._seen: dict[str, tuple[int, int]] = {}  # peer -> (their wall - ours, when: mono ms)
        self._judged_ms: int | None = None
        self._quiet_until = 0

    def observe(self, peer: str, their_wall: int, our_wall: int, now_ms: int) -> None:
        """A heartbeat of ``peer`` stamped ``their_wall`` arrived at ``our_wall`` (``now_ms``
        on the monotonic clock)."""
        self._seen[peer] = (their_wall - our_wall, now_ms)

    def forget(self, peer: str) -> None:
        """Drop a peer that left."""
        self._seen.pop(peer, None)

    def busy(self, now_ms: int) -> None:
        """The loop was busy (not stopped) until ``now_ms``: that gap is no stall."""
        if self._judged_ms is not None:
            self._judged_ms = now_ms

    def offsets(self, now_ms: int) -> dict[str, int]:
        """Per peer heard within the window: its clock minus ours (ms)."""
        return {p: off for p, (off, at) in self._seen.items() if now_ms - at <= self.window_ms}

    def judge(self, members: int, now_ms: int) -> Verdict:
        """Whether this node's clock is off: a majority of ``members`` (itself
        included) are recently heard peers beyond the max offset.

        After this node was stalled (judgements ``STALL_MS`` or more apart: a
        SIGSTOP, a long block), the heartbeats that queued meanwhile arrive
        late and make every peer look behind by the stall: no verdict of
        ``bad`` is given until the stall's length (at most 10 s) has passed
        again, by when the queue has drained and fresh beats count.
        """
        if self._judged_ms is not None and now_ms - self._judged_ms >= STALL_MS:
            self._quiet_until = now_ms + min(now_ms - self._judged_ms, 10_000)
        self._judged_ms = now_ms
        heard = list(self.offsets(now_ms).values())
        far = [off for off in heard if abs(off) > self.max_offset_ms]
        bad = 2 * len(far) > members and now_ms >= self._quiet_until
        basis = far if bad else heard
        # The low median, as statistics.median_low (whose imports cost a node ~10 ms at start).
        offset = -sorted(basis)[(len(basis) - 1) // 2] if basis else 0
        return Verdict(bad, offset, len(far), len(heard))


class FutureGate:
    """Refuses entries stamped too far ahead of this node's wall clock (see the module doc)."""

    def __init__(self, max_offset_ms: int) -> None:
        self.max_offset_ms = max_offset_ms
        self.refused = 0
        self._refusing: dict[str, tuple[int, int]] = {}  # origin -> (retry at ms, wait ms)

    def limit(self, wall_ms: int) -> int:
        """The highest hlc accepted when the wall clock reads ``wall_ms``."""
        top = (wall_ms + self.max_offset_ms) << LOGICAL_BITS | LOGICAL_MASK
        return min(top, MAX_HLC - _HEADROOM)

    def split(self, entries: list, limit: int, now_ms: int) -> list:
        """``entries`` without those above ``limit``, nor any later entry of their origin
        (which would only wait behind the hole)."""
        cut: dict[str, int] = {}
        for m in entries:
            if m[2] > limit and m[1] < cut.get(m[0], MAX_HLC):
                cut[m[0]] = m[1]
        kept = [m for m in entries if m[1] < cut.get(m[0], MAX_HLC)]
        self.refused += len(entries) - len(kept)
        for origin, seq in cut.items():
            self._refuse(origin, seq, now_ms)
        return kept

    def _refuse(self, origin: str, seq: int, now_ms: int) -> None:
        retry, wait = self._refusing.get(origin, (0, 0))
        if not wait:
            log.warning(
                "refusing entries of %s from seq %d: stamped more than %d ms ahead of this "
                "node's clock",
                origin,
                seq,
                self.max_offset_ms,
            )
            wait = REFUSE_BACKOFF_MS
        elif now_ms >= retry:  # the retry was refused again
            wait = min(2 * wait, REFUSE_BACKOFF_MAX_MS)
        self._refusing[origin] = (now_ms + wait, wait)

    def accepted(self, origins: Container[str]) -> None:
        """Entries of ``origins`` were applied: those refused before are taken again."""
        for origin in [o for o in self._refusing if o in origins]:
            del self._refusing[origin]
            log.warning("accepting entries of %s again", origin)

    @property
    def active(self) -> bool:
        """True while some origin's entries are being refused."""
        return bool(self._refusing)

    def holding(self, origin: str, now_ms: int) -> bool:
        """True while fetching ``origin``'s entries again should wait."""
        entry = self._refusing.get(origin)
        return entry is not None and now_ms < entry[0]

    def refusing(self) -> list[str]:
        """The origins whose entries were refused and not taken since."""
        return list(self._refusing)
