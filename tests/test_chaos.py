"""Faults of every kind at random on one mesh, as Jepsen does (test_mesh.py: one at a time).

Three nodes (``--fsync always``) and a balancer; a writer on each node and one
through the balancer record what was acknowledged (``tests.test_mesh.Writer``).
For ``PYCACHE_CHAOS_S`` seconds (default 20) a nemesis picks, every 0.2-1.2 s,
a node that is up and kills it (SIGKILL), stops it (SIGTERM) or pauses it
(SIGSTOP), at most two down at once, and brings down nodes back (restart on
the same ports, or SIGCONT).  Then every node comes back while the writers
go on (a restarted node catches up to a moving target), the writers stop, and
every node must converge and hold every acknowledged write.  Longer runs
(``PYCACHE_CHAOS_S=60``) are the soak: one of them found restarted nodes that
never caught up (a buffer scan per entry, ``tests/test_simulation.py`` counts
it now).

The nemesis's choices come from a seeded ``random.Random``: the seed is in the
failure message, and ``PYCACHE_CHAOS_SEED=N`` replays its choices (not the
timing).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

import pytest

from tests.conftest import NodeProcess, wait_converged
from tests.test_mesh import Writer, merged, missing_on, wait_count, wait_mesh

pytestmark = [pytest.mark.processes, pytest.mark.slow]

CHAOS_S = float(os.environ.get("PYCACHE_CHAOS_S", "20"))
SEED = int(os.environ.get("PYCACHE_CHAOS_SEED", str(random.randrange(1 << 32))))
FAULTS = ("kill", "kill", "term", "pause")


def fault(node: NodeProcess, kind: str) -> None:
    """Take ``node`` down: kill -9, a clean stop, or a pause."""
    if kind == "kill":
        node.kill()
    elif kind == "term":
        node.stop()
    else:
        node.signal(signal.SIGSTOP)


def heal(node: NodeProcess, kind: str) -> None:
    """Bring back a node that ``fault`` took down (a restart returns once it is ready)."""
    if kind == "pause":
        node.signal(signal.SIGCONT)
    else:
        node.start(wait=False)


def under_load(
    writers: list[Writer],
    rnd: random.Random,
    pace: tuple[float, float],
    step: Callable[[], None],
    settle: Callable[[], None] = lambda: None,
    cleanup: Callable[[], None] = lambda: None,
) -> None:
    """Start ``writers``; once each has 100 acknowledged writes, run the nemesis's
    ``step`` every ``pace`` seconds (drawn from ``rnd``) for CHAOS_S seconds, then
    ``settle`` while the writers go on; ``cleanup`` and stop the writers, whatever
    happens."""
    for w in writers:
        w.start()
    try:
        wait_count(writers, lambda w: 100, "100 acknowledged writes per writer")
        ends = time.monotonic() + CHAOS_S
        while time.monotonic() < ends:
            time.sleep(rnd.uniform(*pace))  # the nemesis's pace, not a wait for a condition
            step()
        settle()
    finally:
        cleanup()
        for w in writers:
            w.stopping.set()
    for w in writers:
        w.stop()


def lost_nothing(nodes: list[NodeProcess], writers: list[Writer], story: str) -> int:
    """Once ``nodes`` converge, every node holds every acknowledged write; how many."""
    wait_converged(nodes, timeout=60)
    acked = merged(writers)
    for node in nodes:
        wrong = missing_on(node, acked)
        assert not wrong, f"{node.node_id} lost {len(wrong)} of {len(acked)}: {wrong[:5]}; {story}"
    return len(acked)


@pytest.mark.timeout(120 + 3 * CHAOS_S)
def test_random_kills_stops_and_pauses_lose_no_acknowledged_write(procs):
    rnd = random.Random(SEED)
    nodes = procs.cluster(3, extra=["--fsync", "always"])
    wait_mesh(nodes)
    balancer = procs.balancer(nodes)
    writers = [Writer(n, n.node_id) for n in nodes]
    through = Writer(nodes[0], "balancer")
    through.node = balancer  # a Writer needs only its client()
    writers.append(through)
    down: dict[NodeProcess, str] = {}
    events: list[str] = []

    def step() -> None:
        for node in [n for n in down if rnd.random() < 0.6]:
            heal(node, down.pop(node))
            events.append(f"up {node.node_id}")
        up = [n for n in nodes if n not in down]
        if len(down) < 2 and (not down or rnd.random() < 0.3):
            node, kind = rnd.choice(up), rnd.choice(FAULTS)
            fault(node, kind)
            down[node] = kind
            events.append(f"{kind} {node.node_id}")

    def settle() -> None:
        while down:
            heal(*down.popitem())
        for node in nodes:
            node.wait_ready(timeout=60)

    def cleanup() -> None:
        for node, kind in down.items():
            if kind == "pause":
                node.signal(signal.SIGCONT)

    under_load(writers, rnd, (0.2, 1.2), step, settle, cleanup)
    story = f"seed {SEED}: {' '.join(events)}"
    assert sum(not e.startswith("up") for e in events) >= 3, story
    assert lost_nothing(nodes, writers, story) > 1000, story
