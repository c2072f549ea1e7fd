"""Issue 13, point 3: a node whose disk fills up stays up, refuses writes with
NO_SPACE, serves reads, says why, and takes writes again once space returns."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mesh.core import errors
from tests.conftest import NodeProcess, wait_for

pytestmark = pytest.mark.processes


@contextmanager
def mounted_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's ``size=``) under ``tmp_path``, unmounted after;
    skips the test where one cannot be mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a {size} tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs."""
    with mounted_tmpfs(tmp_path, "4m") as mnt:
        yield mnt


def origin_and_second(procs, tmpfs: Path) -> tuple[NodeProcess, NodeProcess]:
    """n1, started, and n2 on ``tmpfs`` with n1 for its peer, not started."""
    origin = NodeProcess(procs.tmp_path / "n1", "n1", ["--insecure"])
    second = NodeProcess(tmpfs / "n2", "n2", ["--insecure"])
    procs.nodes += [origin, second]
    origin.start()
    second.peers = [origin.repl]
    return origin, second


def written_then_filled(origin: NodeProcess, tmpfs: Path) -> tuple[bytes, Path]:
    """30 values of 100 KiB (k0..k29) written to ``origin``, then ``tmpfs`` left with
    about 1.5 MiB free: less than they take; the value and the filler file."""
    value = b"v" * (100 * 1024)
    with origin.client() as c:
        for i in range(30):
            assert c.set(f"k{i}", value) is True
    filler = tmpfs / "filler"
    filler.write_bytes(b"\1" * (2 * 1024 * 1024 + 512 * 1024))
    return value, filler


def test_full_disk_refuses_writes_keeps_reads_and_recovers(procs, tmpfs: Path) -> None:
    node = NodeProcess(tmpfs / "n1", "n1", ["--insecure"])
    procs.nodes.append(node)  # killed at teardown, whatever happens
    node.start()
    filler = tmpfs / "filler"
    filler.write_bytes(b"\1" * (2 * 1024 * 1024 + 512 * 1024))
    value = b"v" * (100 * 1024)
    with node.client() as c:
        assert c.set("before", "kept") is True
        written = []
        with pytest.raises(errors.NoSpace):
            for i in range(100):
                c.set(f"k{i}", value)
                written.append(f"k{i}")
        failed = f"k{len(written)}"
        assert written  # some fitted, then the disk was full
        assert node.process is not None and node.process.poll() is None  # the node is still up
        assert c.get("before") == b"kept"  # reads keep working
        assert c.get(failed) is None  # the refused write is not visible
        assert all(c.get(k) == value for k in written[-3:])
        with pytest.raises(errors.NoSpace):
            c.set("small", "x")
        assert c.stats()["state"] == "disk-full"
        assert c.health()["state"] == "disk-full"
        filler.unlink()  # space returns
        wait_for(lambda: c.stats()["state"] == "ready", 10, "the node to take writes again")
        assert c.set(failed, "now") is True and c.get(failed) == b"now"
    assert node.stop() == 0


def test_no_space_is_http_507() -> None:
    from mesh.roles.cacheapi import translate_error

    answer = translate_error(errors.NoSpace(11, "the disk of node n1 is full"))
    assert answer.status_code == 507 and "n1 is full" in answer.message


def test_a_replica_whose_disk_fills_stays_up_and_catches_up_once_space_returns(
    procs, tmpfs: Path
) -> None:
    """The writes come from a peer: the full disk is the replica's, not the origin's."""
    origin, replica = origin_and_second(procs, tmpfs)
    replica.start()
    filler = tmpfs / "filler"
    filler.write_bytes(b"\1" * (2 * 1024 * 1024 + 512 * 1024))
    value = b"v" * (100 * 1024)
    with origin.client() as c, replica.client() as r:
        for i in range(40):  # more than the replica's disk holds
            assert c.set(f"k{i}", value) is True
        wait_for(lambda: r.stats()["state"] == "disk-full", 10, "the replica to say its disk")
        assert replica.process is not None and replica.process.poll() is None  # still up
        assert r.get("k0") == value  # what it logged is served
        assert c.set("later", "x") is True  # the origin goes on; the replica drops it for now
        filler.unlink()  # space returns
        wait_for(lambda: r.stats()["state"] == "ready", 20, "the replica to take writes again")
        wait_for(lambda: all(r.get(f"k{i}") == value for i in range(40)), 20, "the catch-up")
        assert r.get("later") == b"x"
    assert replica.stop() == 0


def test_a_node_whose_disk_fills_while_it_catches_up_is_not_ready_before_it_has(
    procs, tmpfs: Path
) -> None:
    """Space back, it goes on catching up (from the log of its peer, not by a full
    sync): ``ready`` only once it holds what it lacked."""
    origin, late = origin_and_second(procs, tmpfs)
    late.start()
    with origin.client() as c:  # so that n2 holds something: no full sync for it
        assert c.set("first", "x") is True
    with late.client() as r:
        wait_for(lambda: r.get("first") == b"x", 10, "n2 to hold the first key")
    assert late.stop() == 0
    value, filler = written_then_filled(origin, tmpfs)
    late.start(wait=False)
    with late.client() as r:
        state = lambda: r.stats()["state"]  # noqa: E731
        wait_for(lambda: state() == "disk-full", 20, "the catch-up to fill the disk")
        filler.unlink()
        wait_for(lambda: state() == "ready", 20, "the node to be ready")
        assert all(r.get(f"k{i}") == value for i in range(30))


def test_a_full_sync_that_finds_no_room_for_its_snapshot_is_not_lost_at_a_restart(
    procs, tmpfs: Path
) -> None:
    """The image of a full sync is on disk only once its snapshot is: with no room for
    that, the node held it in memory alone, logged the entries after it, and a
    restart's replay then took it for complete without it.  Now the full sync is
    undone (disk-full) and done again once there is room."""
    origin, late = origin_and_second(procs, tmpfs)
    value, filler = written_then_filled(origin, tmpfs)
    late.start(wait=False)
    info = late.child.wait_status(lambda i: i.get("api", "*")[-1] != "*", 20)
    late.api, late.repl, late.pub = info["api"], info["repl"], info["pub"]
    with late.client() as r:
        state = lambda: r.stats()["state"]  # noqa: E731
        wait_for(lambda: state() == "disk-full", 20, "the full sync to find no room")
        filler.unlink()  # room again: the full sync is done again, and saved
        wait_for(lambda: state() == "ready" and r.get("k29") == value, 20, "the full sync")
        with origin.client() as c:
            assert c.set("after", "x") is True
        wait_for(lambda: r.get("after") == b"x", 20, "the entry after the image")
    late.kill()
    late.start()
    with late.client() as r:
        wait_for(lambda: r.get("k0") == value, 20, "the image's keys after the restart")
