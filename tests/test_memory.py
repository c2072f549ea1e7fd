"""A node under ``--max-memory-mib`` keeps holding data, and its RSS stays bounded.

Issue 13, point 2: tombstones of evicted and deleted keys used to count
against the limit without ever being evicted themselves, so live keys fell to
0 and every later SET was answered True and gone at once.  Here a real node
process takes many 1 KiB SETs (and set-then-delete pairs) under a small limit;
after them the last SET must be readable, the node must hold live keys, and
its resident set must stay within the bound ``docs/architecture.md`` states
(measured by ``bench/memory_bench.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import NodeProcess, Processes

MIB = 1024 * 1024
VALUE = b"x" * 1024
PIPELINE = 1_000
#: The bound stated in docs/architecture.md: RSS <= RSS_BASE + RSS_FACTOR x the limit.
RSS_BASE = 60 * MIB
RSS_FACTOR = 2.5


def rss_of(node: NodeProcess) -> int:
    """The node process's resident set (VmRSS), in bytes."""
    assert node.process is not None
    for line in Path(f"/proc/{node.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def write_many(node: NodeProcess, total: int, delete: bool, deadline: float) -> int:
    """``total`` SETs of 1 KiB (each deleted again when ``delete``) in pipelines;
    every reply checked; returns the highest RSS seen (sampled per pipeline)."""
    peak = 0
    with node.client(timeout=10.0) as c:
        for start in range(0, total, PIPELINE):
            assert time.monotonic() < deadline, f"only {start} of {total} writes in time"
            with c.pipeline() as pipe:
                for i in range(start, min(start + PIPELINE, total)):
                    pipe.set(f"key:{i:08d}", VALUE)
                    if delete:
                        pipe.delete(f"key:{i:08d}")
                results = pipe.execute()
            assert all(r is True or r == 1 for r in results), results[:5]
            peak = max(peak, rss_of(node))
    return peak


def check_holds_data(node: NodeProcess, prefix: str, peak: int, limit: int) -> None:
    with node.client(timeout=10.0) as c:
        fresh = [f"{prefix}:{i}" for i in range(20)]
        for key in fresh:
            assert c.set(key, VALUE) is True
        readable = [k for k in fresh if c.get(k) == VALUE]
        assert readable == fresh, f"{len(readable)} of 20 fresh SETs readable"
        stats = c.stats()
    assert stats["keys"] >= 20
    bound = RSS_BASE + RSS_FACTOR * limit
    assert peak <= bound, f"RSS {peak / MIB:.1f} MiB over {bound / MIB:.1f} MiB"


def test_many_sets_under_a_memory_limit_keep_data_and_bounded_rss(procs: Processes) -> None:
    limit = 20 * MIB
    node = procs.node("n1", ["--max-memory-mib", "20", "--fsync", "never"])
    peak = write_many(node, 100_000, delete=False, deadline=time.monotonic() + 60)
    with node.client(timeout=10.0) as c:
        assert c.get("key:00099999") == VALUE  # the last SET, right after
        stats = c.stats()
    assert stats["keys"] >= limit // 2 // (1024 + 400), stats
    check_holds_data(node, "fresh", peak, limit)


def test_set_then_delete_pairs_leave_room_for_fresh_sets(procs: Processes) -> None:
    limit = 5 * MIB
    node = procs.node("n1", ["--max-memory-mib", "5", "--fsync", "never"])
    peak = write_many(node, 40_000, delete=True, deadline=time.monotonic() + 60)
    check_holds_data(node, "fresh", peak, limit)
