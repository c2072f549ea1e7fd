"""Process tuning of the serving roles: the cyclic garbage collector and glibc's malloc.

Each role's ``run_*`` calls :func:`tune_gc` (and a node :func:`tune_malloc`)
at start-up; a node pauses the collector while it catches up
(:class:`CatchUpGc`).
"""

from __future__ import annotations

import ctypes
import gc

from mesh.core.limits import MIB

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
