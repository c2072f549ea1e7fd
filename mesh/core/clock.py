"""Hybrid logical clock (HLC): the timestamps that order every mutation.

An HLC timestamp packs wall-clock milliseconds and a logical counter into one
unsigned 63-bit integer, so timestamps compare, sort and travel as plain ints::

    hlc = physical_ms << LOGICAL_BITS | logical      (LOGICAL_BITS = 16)

The physical part follows the wall clock whenever the wall clock moves forward;
when it stands still or steps back, the logical counter keeps the clock strictly
monotonic.  When the counter overflows (more than 65,536 events in one
millisecond) it carries into the physical part, which then runs slightly ahead
of the wall clock until the wall clock catches up.  In the packed form all of
this is one rule: the next timestamp is ``max(wall << 16, last + 1)``.

Receiving a message merges its timestamp with the standard HLC receive rule
(Kulkarni et al., 2014): the receive event gets a timestamp greater than both
the local clock and the remote one, so every later local event sorts after
everything this node has seen.

A clock is not thread-safe: one node owns one clock on its event loop.  After a
restart, pass the highest timestamp found on disk as ``floor`` so the new clock
never reissues an old timestamp, even if the wall clock went back meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mesh.core.errors import ConfigError

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_HLC = (1 << 63) - 1
MAX_PHYSICAL_MS = MAX_HLC >> LOGICAL_BITS


def pack(physical_ms: int, logical: int) -> int:
    """Pack wall-clock milliseconds and a logical counter into one timestamp."""
    if not 0 <= physical_ms <= MAX_PHYSICAL_MS:
        raise ValueError(f"physical_ms {physical_ms} is outside 0..{MAX_PHYSICAL_MS}")
    if not 0 <= logical <= LOGICAL_MASK:
        raise ValueError(f"logical {logical} is outside 0..{LOGICAL_MASK}")
    return physical_ms << LOGICAL_BITS | logical


def unpack(hlc: int) -> tuple[int, int]:
    """Split a timestamp into ``(physical_ms, logical)``."""
    return hlc >> LOGICAL_BITS, hlc & LOGICAL_MASK


def physical_ms(hlc: int) -> int:
    """The wall-clock milliseconds part of a timestamp."""
    return hlc >> LOGICAL_BITS


def wall_ms() -> int:
    """Milliseconds since the epoch from the system wall clock."""
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """Milliseconds of a clock that never steps: for timeouts, periods and lag ages."""
    return time.monotonic_ns() // 1_000_000


def _check_hlc(value: object, what: str) -> int:
    # bool is an int subclass; a True timestamp is a bug, not a 1.
    if type(value) is not int or not 0 <= value <= MAX_HLC:
        raise ValueError(f"{what} must be an int in 0..2**63-1, got {value!r}")
    return value


class HybridClock:
    """A node's hybrid logical clock.

    ``wall`` returns wall-clock milliseconds (inject a fake one in tests);
    ``floor`` is the highest timestamp known from before this clock existed,
    such as the largest ``hlc`` in the log after a restart.
    """

    __slots__ = ("_last", "_wall")

    def __init__(self, wall: Callable[[], int] = wall_ms, floor: int = 0) -> None:
        if not callable(wall):
            raise ConfigError("wall must be a callable returning milliseconds")
        try:
            self._last = _check_hlc(floor, "floor")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._wall = wall

    @property
    def last(self) -> int:
        """The highest timestamp this clock has issued or merged."""
        return self._last

    def wall(self) -> int:
        """The wall-clock milliseconds this clock reads now."""
        return self._wall()

    def now(self) -> int:
        """A new timestamp for a local event, greater than any seen before."""
        ts = self._wall() << LOGICAL_BITS
        nxt = self._last + 1
        if ts < nxt:
            ts = nxt
        if ts > MAX_HLC:
            raise OverflowError("the hybrid logical clock ran past 2**63-1")
        self._last = ts
        return ts

    def observe(self, remote: int) -> None:
        """Merge a timestamp carried by a received message (HLC receive rule).

        Raises ValueError when ``remote`` is not an int in 0..2**63-1: peer
        input is range-checked before (:mod:`mesh.core.peerfields`,
        :class:`mesh.core.clockguard.FutureGate`), so this never raises on it.
        """
        _check_hlc(remote, "remote timestamp")
        ts = self._wall() << LOGICAL_BITS
        nxt = (remote if remote > self._last else self._last) + 1
        if ts < nxt:
            ts = nxt
        if ts > MAX_HLC:
            raise OverflowError("the hybrid logical clock ran past 2**63-1")
        self._last = ts

    def __repr__(self) -> str:
        phys, logical = unpack(self._last)
        return f"<HybridClock last={phys}ms+{logical}>"
