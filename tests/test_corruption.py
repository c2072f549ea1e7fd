"""A node whose log was damaged while its peers were down (issue 13, point 1).

Real processes: three nodes, writes on n1, everyone stopped, bytes of n1's log
flipped, n1 started alone (ready after the start-up timeout) and written to,
then the peers started.  Every node must end with every key, old and new,
and equal digests: n1 starts a new incarnation instead of reusing the seqs it
lost, and fetches the records it lost back from the peers.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import NodeProcess, Processes, wait_converged, wait_for

OLD, NEW = 3000, 200


def _write(node: NodeProcess, prefix: str, count: int, value: bytes) -> None:
    with node.client(timeout=10.0) as c:
        for start in range(0, count, 100):
            batch = {f"{prefix}:{i}": value for i in range(start, min(start + 100, count))}
            assert c.mset(batch) is True


def _flip_middle(path: Path, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _segments(node: NodeProcess) -> list[Path]:
    return sorted((node.data_dir / "log").glob("*.log"))


def _origin(node: NodeProcess) -> str:
    identity = json.loads((node.data_dir / "identity.json").read_text())
    return f"{identity['node_id']}/{identity['incarnation']}"


def _run(procs: Processes, extra: list[str], value: bytes, pick: int) -> list[NodeProcess]:
    nodes = procs.cluster(3, extra)
    n1, n2, n3 = nodes
    _write(n1, "old", OLD, value)
    wait_converged(nodes)
    for n in nodes:
        assert n.stop() == 0
    segments = _segments(n1)
    assert len(segments) > (pick if pick >= 0 else -pick - 1), segments
    before = _origin(n1)
    _flip_middle(segments[pick])
    n1.start()  # peers down: ready after the start-up timeout
    assert _origin(n1) != before, "n1 lost part of its history but kept its incarnation"
    _write(n1, "new", NEW, value)
    n2.start(wait=False)
    n3.start(wait=False)
    n2.wait_ready()
    n3.wait_ready()
    stats = wait_converged(nodes, timeout=30.0)
    assert all(s["keys"] == OLD + NEW for s in stats), [s["keys"] for s in stats]
    for n in nodes:
        with n.client() as c:
            for key in ("old:0", f"old:{OLD // 2}", f"old:{OLD - 1}", "new:0", f"new:{NEW - 1}"):
                assert c.get(key) == value, (n.node_id, key)
    return nodes


def test_corrupt_record_mid_active_segment_peers_down(procs: Processes) -> None:
    nodes = _run(procs, [], b"v" * 20, -1)
    assert "WARNING" in nodes[0].stderr()


def test_corrupt_sealed_segment_moved_aside_and_refetched(procs: Processes) -> None:
    # 3,000 values of 1 KiB over 1 MiB segments: n1's log has sealed segments
    nodes = _run(procs, ["--segment-mib", "1"], b"s" * 1024, 0)
    n1 = nodes[0]
    assert list((n1.data_dir / "log").glob("*-*.corrupt")), "the bad segment was not moved aside"
    log_text = n1.stderr()
    wait_for(lambda: "moved aside" in log_text, 1.0, "a warning naming the moved segment")


def test_a_damaged_snapshot_over_a_compacted_log_is_refetched(procs: Processes) -> None:
    """The snapshot that covered the log compacted away is damaged: the node lost
    those records.  It took offset 0 for where to replay from and died of a
    ValueError (the log starts past it).  Now that gap is log damage: a new
    incarnation, and the records lost come back from the peers."""
    extra = ["--segment-mib", "1", "--retention-mib", "0", "--snapshot-every", "500"]
    nodes = procs.cluster(3, extra)
    n1, n2, n3 = nodes
    value = b"v" * 1000
    _write(n1, "old", OLD, value)
    wait_converged(nodes)
    for n in nodes:
        assert n.stop() == 0
    assert _segments(n1)[0].name != f"{0:020d}.log", "nothing was compacted"
    snapshots = sorted((n1.data_dir / "snapshots").glob("*.snap"))
    assert snapshots
    for snap in snapshots:
        snap.write_bytes(b"")
    before = _origin(n1)
    n1.start()  # peers down: ready after the start-up timeout
    assert _origin(n1) != before, "n1 lost part of its history but kept its incarnation"
    n2.start(wait=False)
    n3.start(wait=False)
    n2.wait_ready()
    n3.wait_ready()
    stats = wait_converged(nodes, timeout=30.0)
    assert all(s["keys"] == OLD for s in stats), [s["keys"] for s in stats]
    with n1.client() as c:
        assert c.get("old:0") == value and c.get(f"old:{OLD - 1}") == value
