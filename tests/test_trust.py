"""The peer plane's trust boundary (mesh/roles/trust.py, issue 17): CURVE and ZAP.

Each attack of the issue, tried from outside against a real 3-node cluster:
a stranger (a CURVE key of no member, or no CURVE at all) reads nothing,
changes nothing and joins nothing; an admitted member cannot speak for
another; only members are listed and counted for ``w=quorum``; ``pycache
forget`` retires a member for good; a node without credentials does not start.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import zmq

from mesh.core import peerwire
from mesh.core.catchup import Fetch
from mesh.core.errors import WriteNotAcknowledged
from mesh.roles import trust
from tests.conftest import NodeProcess, Processes, wait_converged, wait_for

pytestmark = pytest.mark.processes

#: How long a stranger waits for anything at all before the test calls it nothing.
NOTHING_S = 1.0


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def cluster(procs: Processes) -> list[NodeProcess]:
    nodes = procs.cluster(3)
    wait_converged(nodes)
    return nodes


def received_within(sock: zmq.Socket, seconds: float) -> list[list[bytes]]:
    """Everything ``sock`` receives within ``seconds``."""
    got, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000) + 1):
            got.append(sock.recv_multipart())
    return got


@pytest.mark.parametrize("curve", [True, False], ids=["unknown-key", "no-curve"])
def test_a_stranger_subscribed_to_a_pub_socket_reads_no_write(procs, cluster, ctx, curve):
    n1 = cluster[0]
    sub = procs.peer_socket(ctx, zmq.SUB, curve=curve)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(n1.pub)
    with n1.client() as c:
        for i in range(50):
            c.set(f"secret{i}", b"plain text value")
    assert received_within(sub, NOTHING_S) == []
    with n1.client() as c:
        assert c.stats()["refused_handshakes"] >= (1 if curve else 0)


@pytest.mark.parametrize("curve", [True, False], ids=["unknown-key", "no-curve"])
def test_a_fetch_from_a_stranger_gets_no_data(procs, cluster, ctx, curve):
    n1 = cluster[0]
    with n1.client() as c:
        c.mset({f"k{i}": b"v" for i in range(250)})
    dealer = procs.peer_socket(ctx, zmq.DEALER, curve=curve)
    dealer.connect(n1.repl)
    fetch = peerwire.encode_fetch("n2", Fetch(1, {}, True))
    hello = peerwire.encode_hello("x", "garbage", "garbage")
    for frame in (fetch, hello):
        try:
            dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            pass  # never connected: libzmq keeps a refused peer mute
    assert received_within(dealer, NOTHING_S) == []
    with n1.client() as c:
        assert [n["node_id"] for n in c.cluster()["nodes"]] == ["n1", "n2", "n3"]


@pytest.mark.parametrize("insecure", [False, True], ids=["own-keys", "insecure"])
def test_a_rogue_node_never_receives_or_changes_data(procs, cluster, tmp_path, insecure):
    n1 = cluster[0]
    with n1.client() as c:
        c.set("k", b"real")
    extra = ["--insecure"] if insecure else []
    rogue = NodeProcess(tmp_path / "evil", "evil", extra, None if insecure else tmp_path / "k2")
    if not insecure:
        trust.keygen(tmp_path / "k2", ["evil"])  # a cluster of its own
    rogue.peers = [n1.repl]
    procs.nodes.append(rogue)
    rogue.start()  # ready once its only peer stays silent
    with rogue.client() as c:
        assert c.get("k") is None
        c.set("k", b"rogue")
        c.delete("other")
    with n1.client() as c:
        assert c.get("k") == b"real" and c.stats()["keys"] == 1
        assert [n["node_id"] for n in c.cluster()["nodes"]] == ["n1", "n2", "n3"]


def test_a_member_cannot_speak_for_another_member(procs, cluster, ctx):
    n1 = cluster[0]
    dealer = procs.peer_socket(ctx, zmq.DEALER, "n2")  # n2's key, as a buggy n2 might
    dealer.connect(n1.repl)
    for claimed in ("n3", "ghost1", "ghost2"):
        dealer.send(peerwire.encode_hello(claimed, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"))
    assert received_within(dealer, NOTHING_S) == []
    with n1.client() as c:
        assert c.stats()["peering"]["impostors"] == 3
        assert [n["node_id"] for n in c.cluster()["nodes"]] == ["n1", "n2", "n3"]
        assert c.set("q", b"v", w="quorum")
    peers_file = (n1.data_dir / "peers.json").read_text()
    assert "ghost" not in peers_file


def test_forget_retires_a_member_for_good(procs, tmp_path):
    nodes = procs.cluster(4)
    wait_converged(nodes)
    n1, n4 = nodes[0], nodes[3]
    n4.kill()
    with n1.client(timeout=10) as c, pytest.raises(WriteNotAcknowledged):
        c.set("before", b"v", w="all")  # 4 members, one of them down
    stale = shutil.copytree(procs.keys, tmp_path / "n4-keys")  # n4's own copy, forgotten
    result = subprocess.run(
        [sys.executable, "-m", "mesh", "forget", "--keys", str(procs.keys), "n4"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    with n1.client(timeout=10) as c:
        wait_for(
            lambda: [n["node_id"] for n in c.cluster()["nodes"]] == ["n1", "n2", "n3"],
            5,
            "n4 dropped from n1's view",
        )
        assert c.set("after", b"v", w="all")  # all = the 3 members left
    assert "n4" not in (n1.data_dir / "peers.json").read_text()
    n4.keys = stale
    n4.start(wait=False)  # with its old copy of the keys: its key is retired, nobody lets it in
    with n1.client() as c:
        wait_for(lambda: c.stats()["refused_handshakes"] >= 1, 10, "n4's key refused")
        assert [n["node_id"] for n in c.cluster()["nodes"]] == ["n1", "n2", "n3"]


def test_quorum_counts_the_members_not_who_said_hello(procs, cluster, ctx):
    n1, n2, n3 = cluster
    for i in range(6):
        dealer = procs.peer_socket(ctx, zmq.DEALER)
        dealer.connect(n1.repl)
        try:
            dealer.send(peerwire.encode_hello(f"made-up{i}", n2.repl, n2.pub), zmq.NOBLOCK)
        except zmq.Again:
            pass
    n3.kill()
    with n1.client(timeout=10) as c:
        assert c.set("k", b"v", w="quorum")  # 2 of the 3 members
        with pytest.raises(WriteNotAcknowledged):
            c.set("k", b"v", w="all")


def test_a_node_without_credentials_refuses_to_start(tmp_path):
    argv = [sys.executable, "-m", "mesh", "node", "--id", "n1", "--data-dir", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no peer credentials"), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    result = subprocess.run(
        [*argv, "--keys", str(tmp_path / "none")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "does not exist" in result.stderr, result.stderr


def test_keygen_keeps_existing_keys_and_forget_names_members_only(tmp_path):
    first = trust.keygen(tmp_path, ["n1", "n2"])
    server = (tmp_path / "server.key_secret").read_text()
    assert trust.keygen(tmp_path, ["n1", "n2"]) == []
    assert [p.name for p in trust.keygen(tmp_path, ["n3"])] == ["n3.key", "n3.key_secret"]
    assert (tmp_path / "server.key_secret").read_text() == server
    assert (tmp_path / "secrets" / "n1.key_secret").stat().st_mode & 0o077 == 0
    assert len(first) == 6
    membership = trust.Membership(tmp_path)
    assert membership.ids() == {"n1", "n2", "n3"}
    trust.forget(tmp_path, "n2")
    assert membership.refresh() and membership.ids() == {"n1", "n3"}
    with pytest.raises(ValueError, match="not a member"):
        trust.forget(tmp_path, "n2")
