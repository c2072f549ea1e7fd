"""Process tuning of the serving roles: the garbage collector, glibc's malloc, open files, logs.

Each role's ``run_*`` calls :func:`tune_gc` and :func:`raise_fd_limit` (and a
node :func:`tune_malloc`) at start-up; a node pauses the collector while it
catches up (:class:`CatchUpGc`).  The command line puts a :class:`RepeatFilter`
on the log handler, so that a warning or error repeated in a loop cannot flood
the log.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import resource
import time
from collections.abc import Callable

from mesh.core.limits import MIB

log = logging.getLogger(__name__)

#: the soft open-file limit is raised to the hard one, but not past this (when the hard is huge)
FD_LIMIT_CAP = 65_536
#: a warning or error line repeated within this many seconds is held back (and counted)
LOG_REPEAT_INTERVAL_S = 10.0

#: the collector's generation-0 threshold in the serving roles (CPython's default: 700)
GC_GEN0_THRESHOLD = 5_000

#: glibc's mallopt parameters (malloc.h) and what a node sets them to
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_MMAP_THRESHOLD = 32 * MIB
MALLOC_TRIM_THRESHOLD = 64 * MIB


def tune_gc() -> None:
    """Run the cyclic garbage collector less often in a serving process.

    A node makes several objects per request and holds its whole store in
    tuples; at CPython's default thresholds the collector ran every few dozen
    requests and kept rescanning the growing store, about a third of the time
    of a catch-up here.  The serving paths make no reference cycles.  The
    older generations are what rescanned the store; generation 0 is scanned
    once per new object whatever its threshold, which only sets the length
    of each pause: at 50,000 a node under 10,000 replicated writes/s stalled
    13-20 ms every 5 s (replication lag p99 8.5-9.1 ms; at 5,000, 8.2-8.4).
    """
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)


def tune_malloc() -> None:
    """Let a node reuse the memory of freed large buffers instead of unmapping it.

    Each catch-up batch passes through buffers of a few MiB (the frame ZeroMQ
    receives, its Python copy, the log write).  glibc gave each its own
    mapping, or trimmed the heap once they were freed, so every batch
    page-faulted its buffers again: about 7,000 of a catch-up's 43,000 page
    faults here.  Past these thresholds glibc still maps and returns memory.
    Other C libraries keep their defaults.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    except (OSError, AttributeError):  # no mallopt here
        pass


class HeapTrim:
    """Give the heap's free pages back to the system after the key map grew.

    A dict that grows frees its old table; under :func:`tune_malloc`'s mmap
    threshold tables up to 32 MiB live in the heap, so the old ones stayed as
    free pages in the resident set: about 30 bytes per key at 1,000,000 keys
    (issue 15).  ``malloc_trim`` hands them back (2.5 ms then, nothing to do
    otherwise); :meth:`after_growth` calls it once the live keys grew or shrank
    by half since the last call.  A no-op without glibc.
    """

    def __init__(self) -> None:
        self._trim: Callable[[int], int] | None
        try:
            self._trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            self._trim = None
        self._mark = 0

    def after_growth(self, keys: int) -> bool:
        """Trim when ``keys`` moved by half since the last trim; True if it did."""
        if self._trim is None or (2 * keys < 3 * self._mark and 2 * keys > self._mark):
            return False
        self._mark = max(keys, 1024)
        self._trim(0)
        return True

    def now(self) -> None:
        """Trim whatever the key count (after a snapshot freed its buffers)."""
        if self._trim is not None:
            self._trim(0)


class CatchUpGc:
    """No cyclic garbage collection while a node catches up; collect again once it is ready.

    A catch-up adds hundreds of thousands of long-lived entries, which the
    collector would keep traversing (about 7% of a catch-up here); the
    catch-up path makes no reference cycles.  On resuming, every object that
    exists then is left out of collection for good (``gc.freeze``): all that
    the catch-up allocated sat in the youngest generation, so the first
    collections after it would each traverse the whole store (about 50 ms
    for 200,000 entries here, right when the node turns ready), and the
    entries, which form no cycles, would be traversed again by every full
    collection after that.
    """

    def __init__(self) -> None:
        self._paused = False

    def pause(self) -> None:
        """Stop cyclic collection, if it runs."""
        if gc.isenabled():
            gc.disable()
            self._paused = True

    def resume(self) -> None:
        """Collect again (freezing what exists now), if :meth:`pause` stopped it."""
        if self._paused:
            self._paused = False
            gc.freeze()
            gc.enable()


def raise_fd_limit(cap: int = FD_LIMIT_CAP) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard limit (at most ``cap``); the soft limit now.

    As Redis and nginx do: the usual soft limit of 1024 is a few hundred
    clients on the HTTP port.  A soft limit already above ``cap`` is kept.
    The result is logged; the HTTP servers cap their connections below it
    (:func:`mesh.roles.http_limits.default_max_connections`).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning(
                "open files: soft limit %d kept, raising it to %d failed: %s", soft, target, exc
            )
            return soft
        log.info("open files: soft limit raised from %d to %d (hard limit %s)", soft, target, hard)
        return target
    log.info("open files: soft limit %s (hard limit %s)", soft, hard)
    return soft


class RepeatFilter(logging.Filter):
    """Let a repeated warning or error through at most once per ``interval`` seconds.

    A line counts as repeated when its logger, level and formatted message
    are the same (its traceback is not compared).  The first one passes;
    the next ones within ``interval`` s are dropped and counted; the first
    one after it passes with ``(N more like it suppressed in the last S s)``.
    Lines below WARNING (the access log among them) always pass, unread.
    """

    def __init__(
        self, interval: float = LOG_REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key: [passed at, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        key = (record.name, record.levelno, message)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = (
                f"{message} ({int(seen[1])} more like it suppressed in the last "
                f"{self.interval:g} s)"
            )
            record.args = None
        if len(self._seen) >= 1024:  # forget lines not seen for an interval
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
        self._seen[key] = [now, 0]
        return True
