"""Process tuning of the serving roles: the cyclic garbage collector and glibc's malloc.

Each role's ``run_*`` calls :func:`tune_gc` (and a node :func:`tune_malloc`)
at start-up; a node pauses the collector while it catches up
(:func:`pause_gc`, :func:`resume_gc`).
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


def pause_gc() -> bool:
    """Stop cyclic collection for a catch-up; return whether this call stopped it.

    A catch-up adds hundreds of thousands of long-lived entries, which the
    collector would keep traversing (about 7% of a catch-up here); the
    catch-up path makes no reference cycles.
    """
    if not gc.isenabled():
        return False
    gc.disable()
    return True


def resume_gc() -> None:
    """Collect again, leaving out every object that exists now (``gc.freeze``).

    All that the catch-up allocated sat in the youngest generation, so the
    first collections after it would each traverse the whole store (about
    50 ms for 200,000 entries here, right when the node turns ready); and
    the entries, which form no cycles, would be traversed again by every
    full collection after that.
    """
    gc.freeze()
    gc.enable()
