"""A replica's disk filling up and emptying again at random under write load (with
kill -9 now and then): no acknowledged write lost, every node converges.

n3's data folder is on a 256 MiB tmpfs; a nemesis fills it (a file taking the
free space) and frees it at random for ``PYCACHE_CHAOS_S`` seconds (default
20, as ``test_chaos``), while writers write to n1 and n2.
``PYCACHE_CHAOS_SEED`` replays its choices (not the timing).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.core.errors import PyCacheError, Timeout
from mesh.roles import launcher
from tests.conftest import NodeProcess
from tests.test_chaos import CHAOS_S, SEED, lost_nothing, under_load
from tests.test_disk_full import mounted_tmpfs
from tests.test_mesh import Writer

pytestmark = [pytest.mark.processes, pytest.mark.slow]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 MiB tmpfs."""
    with mounted_tmpfs(tmp_path, "256m") as mnt:
        yield mnt


def fill(folder: Path) -> Path:
    """A file taking the free space of ``folder``'s file system (the nodes' writes go
    on meanwhile: as much as fits)."""
    filler = folder / "filler"
    chunk = b"\1" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:  # ENOSPC: full
            pass
    return filler


def free_mib(folder: Path) -> int:
    """The free space of ``folder``'s file system, in MiB."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize >> 20


def until_full(node: NodeProcess, seconds: float) -> bool:
    """Poll ``node`` until it says ``disk-full`` (True) or ``seconds`` pass (False)."""

    def full() -> bool:
        with node.client(timeout=0.5) as c:
            return c.stats()["state"] == "disk-full"

    try:  # a node restarting after a kill does not answer yet: not full yet
        return launcher.wait_for(full, seconds, "disk-full", 0.05, retry_on=PyCacheError)
    except Timeout:
        return False


@pytest.mark.timeout(120 + 5 * CHAOS_S)
def test_a_replica_disk_filling_and_emptying_loses_no_acknowledged_write(procs, disk: Path) -> None:
    rnd = random.Random(SEED)
    n1 = NodeProcess(procs.tmp_path / "n1", "n1", ["--insecure"])
    n2 = NodeProcess(procs.tmp_path / "n2", "n2", ["--insecure"])
    n3 = NodeProcess(disk / "n3", "n3", ["--insecure"])
    nodes = [n1, n2, n3]
    procs.nodes += nodes
    n1.start()
    n2.peers = [n1.repl]
    n2.start()
    n3.peers = [n1.repl, n2.repl]
    n3.start()
    writers = [Writer(n, n.node_id, value_size=200) for n in (n1, n2)]
    events: list[str] = []
    filler: list[Path] = []

    def step() -> None:
        if filler:
            filler.pop().unlink()
            events.append("free")
        elif rnd.random() < 0.2:
            n3.kill()
            n3.start()  # ready again before the next fill: a node cannot start on a full disk
            events.append("kill")
        else:
            filler.append(fill(disk))
            # until n3 runs out of its log's zero-filled space ahead: a condition
            full = until_full(n3, 3)
            events.append("fill" + (" full" if full else ""))

    def cleanup() -> None:
        while filler:
            filler.pop().unlink()

    under_load(writers, rnd, (0.3, 1.5), step, cleanup=cleanup)
    story = f"seed {SEED}: {', '.join(events)}"
    assert "fill full" in events, f"n3 was never full: {story}"
    try:
        n3.wait_ready(timeout=60)
    except BaseException as exc:
        raise AssertionError(f"n3 not ready ({free_mib(disk)} MiB free): {story}") from exc
    lost_nothing(nodes, writers, story)
    with n3.client() as c:
        assert c.stats()["state"] == "ready", story
