"""docs/operations.md's backup and restore, done as it says, on real nodes.

- A copy of a stopped node's data folder, restored after the cluster moved
  on, with ``identity.json`` and ``clean-shutdown`` deleted: the node starts a
  new incarnation, catches up on what it missed, and its new writes reach
  its peer (the cluster converges, nothing is lost).
- Disaster recovery: every node gone; the backup restored into one node,
  the other started empty, full-syncs from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, Processes, wait_converged

pytestmark = pytest.mark.processes


def write(node: NodeProcess, prefix: str, count: int) -> None:
    with node.client() as client:
        for i in range(count):
            client.set(f"{prefix}{i}", f"{prefix}-value-{i}".encode())


def missing(node: NodeProcess, prefix: str, count: int) -> list[str]:
    with node.client() as client:
        return [
            f"{prefix}{i}"
            for i in range(count)
            if client.get(f"{prefix}{i}") != f"{prefix}-value-{i}".encode()
        ]


def incarnation(data_dir: Path) -> str:
    return json.loads((data_dir / "identity.json").read_text())["incarnation"]


def restore(backup: Path, data_dir: Path) -> None:
    """docs/operations.md, "Restore": the copy in place, without its identity."""
    shutil.rmtree(data_dir)
    shutil.copytree(backup, data_dir)
    for name in ("identity.json", "clean-shutdown"):
        (data_dir / name).unlink(missing_ok=True)


def backup_of_stopped(node: NodeProcess, backup: Path) -> None:
    assert node.stop() == 0
    shutil.copytree(node.data_dir, backup)
    node.start()


def test_a_restored_copy_rejoins_a_running_cluster_as_a_new_incarnation(
    procs: Processes, tmp_path: Path
):
    n1, n2 = procs.cluster(2)
    write(n1, "a", 100)
    wait_converged([n1, n2])
    backup = tmp_path / "backup"
    backup_of_stopped(n1, backup)
    write(n1, "b", 100)  # n1's own seqs move past the backup
    wait_converged([n1, n2])

    assert n1.stop() == 0
    restore(backup, n1.data_dir)
    n1.start()
    assert incarnation(n1.data_dir) != incarnation(backup)
    write(n1, "c", 50)  # new writes, numbered anew
    wait_converged([n1, n2])
    for node in (n1, n2):
        for prefix, count in (("a", 100), ("b", 100), ("c", 50)):
            assert missing(node, prefix, count) == [], (node.node_id, prefix)


def test_disaster_recovery_from_one_backup(procs: Processes, tmp_path: Path):
    n1, n2 = procs.cluster(2)
    write(n2, "a", 100)
    wait_converged([n1, n2])
    backup = tmp_path / "backup"
    backup_of_stopped(n1, backup)
    write(n2, "late", 10)  # after the backup: lost with the cluster
    wait_converged([n1, n2])

    for node in (n1, n2):
        node.kill()
    restore(backup, n1.data_dir)
    shutil.rmtree(n2.data_dir)
    n1.start()
    n2.start()
    wait_converged([n1, n2])
    assert missing(n2, "a", 100) == []
    write(n2, "d", 20)
    wait_converged([n1, n2])
    assert missing(n1, "d", 20) == []
