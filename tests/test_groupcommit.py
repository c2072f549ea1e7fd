"""A group commit joined by the requests that arrive while a large write goes to disk
(mesh.roles.groupcommit): one fsync, every reply after it, nothing lost to kill -9."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from mesh.core import wire
from mesh.roles.config import NodeConfig
from mesh.roles.diskfull import DISK_FULL
from mesh.roles.groupcommit import split
from mesh.roles.node import Node
from tests.killwriter import acked_until_kill

BIG = 300 * 1024


def value_for(i: int, size: int = BIG) -> bytes:
    return bytes([i % 251]) * size


class Harness:
    """A node in this process whose API socket is a real ROUTER a DEALER writes to."""

    def __init__(self, tmp_path: Path, fsync: str = "always") -> None:
        self.actx = zmq.asyncio.Context()
        config = NodeConfig(node_id="n1", data_dir=str(tmp_path / "n1"), insecure=True, fsync=fsync)
        self.node = Node(config, self.actx)
        self.node.recover()
        self.node.state = "ready"
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind("inproc://api")
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.connect("inproc://api")
        self.node._raw_api = self.router  # what the group commit drains
        self.rid = 0

    def request(self, key: str, value: bytes) -> bytes:
        self.rid += 1
        return wire.encode_request(self.rid, "SET", key, value)

    def queue(self, items: list[tuple[str, bytes]]) -> None:
        """Send SETs from the client; they wait in the node's socket."""
        for key, value in items:
            self.dealer.send(self.request(key, value))
        assert self.router.poll(5000, zmq.POLLIN)

    def fsyncs(self) -> int:
        return self.node.log.fsync_seconds.count

    def close(self) -> None:
        self.node._raw_api = None
        self.node.close()
        self.dealer.close(0)
        self.router.close(0)
        self.ctx.term()
        self.actx.term()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


def codes(replies: list[list[bytes]]) -> list[int]:
    return [wire.decode_reply(reply[-1])[1] for reply in replies]


def test_requests_arriving_behind_a_large_write_share_its_fsync(harness: Harness) -> None:
    harness.queue([(f"k{i}", value_for(i)) for i in range(1, 4)])
    before = harness.fsyncs()
    replies = harness.node.handle_batch([[b"c", harness.request("k0", value_for(0))]])
    assert codes(replies) == [wire.OK] * 4
    assert harness.fsyncs() == before + 1
    assert harness.node.log.unsynced_bytes == 0
    assert harness.node.taken_more == 3
    for i in range(4):
        assert harness.node.store.value(f"k{i}") == value_for(i)
    assert not harness.router.poll(0, zmq.POLLIN)


def test_a_large_batch_is_logged_in_parts_under_one_fsync(harness: Harness) -> None:
    batch = [[b"c", harness.request(f"k{i}", value_for(i))] for i in range(4)]
    batch.insert(2, [b"c", wire.encode_request(99, "GET", "k0")])
    parts = split(harness.node, batch)
    assert [len(part) for part in parts] == [1, 1, 2, 1]  # the GET rides with k2
    before = harness.fsyncs()
    replies = harness.node.handle_batch(batch)
    assert codes(replies) == [wire.OK] * 5
    assert wire.decode_reply(replies[2][-1])[2] == value_for(0)
    assert harness.fsyncs() == before + 1
    small = [[b"c", harness.request(f"s{i}", b"v")] for i in range(100)]
    assert split(harness.node, small) == [small]
    medium = [[b"c", harness.request(f"m{i}", value_for(i, 10_000))] for i in range(100)]
    assert split(harness.node, medium) == [medium]  # 1 MB of 10 KB values: one write
    many = [[b"c", harness.request(f"b{i}", value_for(i))] for i in range(129)]
    assert split(harness.node, many) == [many]  # over SPLIT_MAX_REQUESTS: not looked at


def fail_second_commit(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the node's second log commit fail with ENOSPC (the first goes through)."""
    replica, calls = harness.node.replica, []
    commit_local = replica.commit_local

    def full_on_second(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        commit_local(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(replica, "commit_local", full_on_second)


def test_out_of_space_in_a_later_part_hands_it_and_the_rest_over(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_second_commit(harness, monkeypatch)
    batch = [[b"c", harness.request(f"k{i}", value_for(i))] for i in range(3)]
    replies = harness.node.handle_batch(batch)
    assert codes(replies) == [wire.OK, wire.E_NO_SPACE, wire.E_NO_SPACE]
    assert [harness.node.store.value(f"k{i}") for i in range(3)] == [value_for(0), None, None]
    assert harness.node.counters["requests"] == 3


def test_without_fsync_always_a_batch_is_never_grown_nor_split(tmp_path: Path) -> None:
    h = Harness(tmp_path, fsync="never")
    try:
        h.queue([("later", value_for(1))])
        big = [[b"c", h.request(f"k{i}", value_for(i))] for i in range(3)]
        assert split(h.node, big) == [big]
        assert codes(h.node.handle_batch(big)) == [wire.OK] * 3
        assert h.node.store.value("later") is None  # still waiting in the socket
    finally:
        h.close()


def test_small_writes_do_not_wait_for_more(harness: Harness) -> None:
    harness.queue([("later", b"x")])
    replies = harness.node.handle_batch([[b"c", harness.request("k", b"small")]])
    assert codes(replies) == [wire.OK]
    assert harness.node.store.value("later") is None  # still waiting in the socket
    assert harness.router.poll(0, zmq.POLLIN)


def test_a_later_drain_out_of_space_leaves_the_earlier_committed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.queue([("late", value_for(2))])
    fail_second_commit(harness, monkeypatch)
    replies = harness.node.handle_batch([[b"c", harness.request("early", value_for(1))]])
    assert codes(replies) == [wire.OK, wire.E_NO_SPACE]
    assert harness.node.state == DISK_FULL
    assert harness.node.store.value("early") == value_for(1)
    assert harness.node.store.value("late") is None
    logged = {m.key for m in harness.node.log.replay(harness.node.log.first_offset())}
    assert logged == {"early"}


WRITER = """
import sys
import zmq
from mesh.core import envelope, wire
sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.RCVTIMEO, 2000)
sock.connect(sys.argv[1])
rid = 0
while True:
    first = rid
    for _ in range(4):
        rid += 1
        sock.send(wire.encode_request(rid, "SET", f"k{rid}", bytes([rid % 251]) * 300_000))
    try:
        for _ in range(4):
            assert envelope.peek_head(sock.recv())[1] == wire.OK
    except zmq.Again:
        break
    for i in range(first + 1, rid + 1):
        print(i, flush=True)
"""


def test_kill_9_loses_no_acknowledged_large_write(procs) -> None:  # type: ignore[no-untyped-def]
    n = procs.node(extra=["--insecure"])
    acked = acked_until_kill(n, WRITER, 60)
    n.start()
    with n.client() as c:
        for i in acked:
            assert c.get(f"k{i}") == bytes([i % 251]) * 300_000, i
