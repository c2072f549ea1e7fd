"""A node that knows it is behind its peers leaves rotation until it has caught up (issue 13.4).

The real-process test pauses one of three nodes behind a balancer (SIGSTOP)
under a steady write stream, resumes it, and checks that it is out of
``ready`` at once and until it has caught up, and that no read through the
balancer returns a counter value older than a write acknowledged before the
read began.  The unit tests drive :class:`mesh.core.lagguard.LagGuard`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from mesh.client import Client
from tests.conftest import NodeProcess, Processes, wait_for

PAUSE_S = 8.0
#: a read counts as stale when a newer value had been acknowledged this long before it
#: began (a few ms are the asynchronous replication's own delay, documented as such)
STALE_S = 0.05


@pytest.fixture
def paused() -> Iterator[list[NodeProcess]]:
    """Nodes appended here get SIGCONT at teardown, so a failing test leaves none stopped."""
    stopped: list[NodeProcess] = []
    yield stopped
    for node in stopped:
        if node.process is not None and node.process.poll() is None:
            node.signal(signal.SIGCONT)


class Counter:
    """Writers of ``ctr:<k>`` = 1, 2, 3, ... (one key per writer thread) and readers of
    them, all through the balancer.

    ``acked[k][v]`` is when the write of ``v`` to ``ctr:<k>`` was acknowledged;
    ``reads`` holds (key, start, value) of every read.
    """

    def __init__(self, endpoint: str, writers: int = 6, readers: int = 2) -> None:
        self.endpoint = endpoint
        self.acked: list[dict[int, float]] = [{} for _ in range(writers)]
        self.reads: list[tuple[int, float, int]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            *(threading.Thread(target=self._write, args=(k,), daemon=True) for k in range(writers)),
            *(threading.Thread(target=self._read, args=(r,), daemon=True) for r in range(readers)),
        ]

    def written(self) -> int:
        return sum(len(a) for a in self.acked)

    def _write(self, k: int) -> None:
        acked = self.acked[k]
        with Client(self.endpoint, timeout=3.0) as c:
            i = 0
            while not self._stop.is_set():
                try:
                    c.set(f"ctr:{k}", str(i + 1))
                except Exception as exc:
                    self.errors.append(f"SET: {exc!r}")
                    continue
                i += 1
                acked[i] = time.monotonic()

    def _read(self, r: int) -> None:
        with Client(self.endpoint, timeout=3.0) as c:
            n = r
            while not self._stop.is_set():
                k = n % len(self.acked)
                n += 1
                start = time.monotonic()
                try:
                    value = c.get(f"ctr:{k}")
                except Exception as exc:
                    self.errors.append(f"GET: {exc!r}")
                    continue
                self.reads.append((k, start, int(value) if value else 0))

    def stale(self) -> list[tuple[int, float, int, float]]:
        """Reads whose value had a successor acknowledged more than STALE_S before they
        began: (key, start, value, how long before)."""
        out = []
        for k, start, value in self.reads:
            newer = self.acked[k].get(value + 1)
            if newer is not None and newer < start - STALE_S:
                out.append((k, start, value, start - newer))
        return out

    def __enter__(self) -> Counter:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(8)


def health_state(node: NodeProcess) -> str:
    with node.client(timeout=1.0) as c:
        return str(c.health()["state"])


@pytest.mark.processes
def test_paused_node_stays_out_of_rotation_until_caught_up(procs: Processes, paused):
    # fsync=never: a sequential writer is not held by a disk flush per write (the
    # property is about replication lag, not durability)
    nodes = procs.cluster(3, extra=["--fsync", "never"])
    balancer = procs.balancer(nodes)
    victim = nodes[1]
    with Counter(balancer.endpoint) as counter, victim.client(timeout=2.0) as direct:
        wait_for(lambda: counter.written() >= 500, 10, "500 writes")
        paused.append(victim)
        victim.signal(signal.SIGSTOP)
        stopped_at = counter.written()
        time.sleep(PAUSE_S)
        written = counter.written() - stopped_at
        resumed = time.monotonic()
        victim.signal(signal.SIGCONT)
        # What the node says about itself from the moment it resumes until it is ready.
        seen: list[tuple[float, str, int]] = []
        deadline = resumed + 10.0
        while time.monotonic() < deadline:
            try:
                state = str(direct.health()["state"])
                entries = sum(p["entries"] for p in direct.stats()["lag"].values())
            except Exception as exc:
                state, entries = f"error {exc!r}", -1
            seen.append((time.monotonic() - resumed, state, entries))
            if state == "ready" and any(s != "ready" for _, s, _ in seen):
                break
            time.sleep(0.02)
        wait_for(lambda: health_state(victim) == "ready", 10, "the resumed node ready")
        time.sleep(1.0)  # reads go on with the node back in rotation
    rate = written / PAUSE_S
    stale = counter.stale()
    print(
        f"\n{written} writes during the {PAUSE_S} s pause ({rate:.0f}/s), "
        f"{len(counter.reads)} reads, {len(stale)} stale (max "
        f"{max((s[3] for s in stale), default=0):.3f} s); the node after SIGCONT: {seen[:3]} ... "
        f"{seen[-3:]}"
    )
    assert written >= 2000, f"the write stream was too slow to show anything ({rate:.0f}/s)"
    assert not counter.errors, counter.errors[:5]
    first = seen[0]
    assert first[1] != "ready", f"the node said ready at once after SIGCONT: {seen[:5]}"
    out = [t for t, s, _ in seen if s != "ready"]
    assert out and out[0] < 1.0, f"the node did not leave ready within 1 s: {seen[:10]}"
    back = [(t, e) for t, s, e in seen if s == "ready"]
    assert back, f"the node never came back to ready within 10 s: {seen[-5:]}"
    assert back[0][1] <= 1000, f"ready again while {back[0][1]} entries behind: {seen[-5:]}"
    assert not stale, f"stale reads through the balancer: {stale[:10]}"
