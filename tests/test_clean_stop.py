"""A clean stop (SIGTERM) of a node without peers leaves a snapshot and no log it covers
(mesh.roles.stopsave); with peers it leaves the log for their catch-up, as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import NodeProcess, Processes, stats_of, wait_converged

pytestmark = pytest.mark.processes

VALUE = b"v" * 1000


def folder(node: NodeProcess) -> tuple[list[Path], list[Path]]:
    """The node's snapshots and log segments."""
    data = node.data_dir
    return sorted((data / "snapshots").glob("*.snap")), sorted((data / "log").glob("*.log"))


def load(node: NodeProcess, prefix: str, count: int) -> dict[str, bytes]:
    written = {f"{prefix}:{i}": VALUE for i in range(count)}
    with node.client(timeout=10.0) as c:
        keys = list(written)
        for start in range(0, count, 200):
            assert c.mset({k: VALUE for k in keys[start : start + 200]}) is True
    return written


def holds(node: NodeProcess, expected: dict[str, bytes | None]) -> bool:
    with node.client(timeout=10.0) as c:
        keys = sorted(expected)
        return c.mget(keys) == [expected[k] for k in keys]


def test_a_node_without_peers_leaves_a_snapshot_and_no_covered_log(procs: Processes) -> None:
    n = procs.node(extra=["--insecure", "--segment-mib", "1"])  # 3 MB of log: sealed segments
    expected: dict[str, bytes | None] = dict(load(n, "k", 3000))
    with n.client() as c:
        assert c.delete("k:1", "k:2") == 2
        assert c.set("ttl", "x", ttl=3600) is True
        offset = c.stats()["log"]["next_offset"]
    expected.update({"k:1": None, "k:2": None, "ttl": b"x"})
    assert len(folder(n)[1]) > 1 and not folder(n)[0]
    assert n.stop() == 0
    snaps, segments = folder(n)
    assert [p.name for p in snaps] == [f"{offset:020d}.snap"]
    assert [p.name for p in segments] == [f"{offset:020d}.log"]  # empty: its header only
    assert segments[0].stat().st_size == 16
    n.start()
    assert holds(n, expected)
    with n.client() as c:
        assert 3500 < c.ttl("ttl") <= 3600
        log = c.stats()["log"]
        assert log["first_offset"] == log["next_offset"] == offset
        assert c.set("after", "restart") is True
    assert n.stop() == 0  # one more write: a new snapshot, the older one gone
    snaps, segments = folder(n)
    assert [p.name for p in snaps] == [f"{offset + 1:020d}.snap"]
    assert [p.name for p in segments] == [f"{offset + 1:020d}.log"]
    n.start()
    assert n.stop() == 0  # nothing written since: the same snapshot
    assert [p.name for p in folder(n)[0]] == [f"{offset + 1:020d}.snap"]


def test_a_peer_new_to_a_node_that_dropped_its_log_gets_a_full_sync(procs: Processes) -> None:
    n1 = procs.node("n1", extra=["--insecure"])
    expected = load(n1, "k", 500)
    assert n1.stop() == 0
    n1.start()
    n2 = procs.node("n2", extra=["--insecure"], peers=[n1.repl])
    wait_converged([n1, n2])
    assert holds(n2, expected)  # type: ignore[arg-type]
    assert stats_of(n2)["replication"]["full_syncs"] >= 1


def test_a_node_with_a_peer_down_keeps_its_log_and_the_peer_converges(
    procs: Processes,
) -> None:
    n1, n2 = nodes = procs.cluster(2)
    expected = load(n1, "a", 300)
    wait_converged(nodes)
    n2.kill()
    expected |= load(n1, "b", 300)  # n2 lacks these
    assert n1.stop() == 0
    snaps, segments = folder(n1)
    assert not snaps and segments[0].stat().st_size > 600 * 1000  # the log, for n2
    n1.start(wait=False)
    n2.start(wait=False)
    n1.wait_ready()
    n2.wait_ready()
    wait_converged(nodes)
    assert holds(n2, expected)  # type: ignore[arg-type]
    assert stats_of(n2)["replication"]["full_syncs"] == 0  # caught up from n1's log
