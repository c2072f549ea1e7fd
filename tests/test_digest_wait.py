"""STATS and CLUSTER on a node with many entries not yet hashed into its digest.

The store hashes entries lazily (mesh.core.digest); a catch-up or a burst of
new keys leaves them all to hash, and STATS and CLUSTER (which report the
digest) hashed them at once on the node's loop: 0.35 s for 200,000 here,
during which no other client was answered (mesh.roles.digestwait).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zmq

from mesh.core import envelope, wire
from tests.conftest import NodeProcess, Processes, stats_of

pytestmark = pytest.mark.timeout(120)

#: more pending hashes than a node hashes in one slice (mesh.roles.digestwait.FOLD_SLICE)
KEYS = 60_000


def load_unhashed(node: NodeProcess) -> None:
    """``KEYS`` new keys, written faster than a sweep hashes them (it runs once a minute here)."""
    with node.client(timeout=30.0) as client:
        for start in range(0, KEYS, 2_000):
            pipe = client.pipeline()
            for i in range(start, start + 2_000):
                pipe.set(f"k{i:06d}", b"v" * 20)
            assert all(r is True for r in pipe.execute())


@contextmanager
def dealer(node: NodeProcess) -> Iterator[zmq.Socket]:
    """A DEALER connected to ``node``'s API, closed on the way out."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 20_000)
    try:
        sock.connect(node.endpoint)
        yield sock
    finally:
        sock.close()
        ctx.term()


def replies_in_order(node: NodeProcess, requests: list[bytes]) -> list[tuple[int, dict]]:
    """Send ``requests`` back to back on one DEALER; their (id, reply) in the order answered."""
    with dealer(node) as sock:
        for frame in requests:
            sock.send(frame)
        out = []
        for _ in requests:
            request_id, code, result = wire.decode_reply(sock.recv())
            assert code == wire.OK, result
            out.append((request_id, result))
        return out


@pytest.mark.parametrize("op", ["STATS", "CLUSTER"])
def test_a_digest_to_hash_does_not_hold_up_other_clients(procs: Processes, op: str) -> None:
    node = procs.node(extra=["--sweep-interval-ms", "60000"])
    load_unhashed(node)
    asked = [wire.encode_request(1, op), wire.encode_request(2, "PING")]
    answered = replies_in_order(node, asked)
    assert [request_id for request_id, _ in answered] == [2, 1]  # PING did not wait
    report = answered[1][1]
    me = report if op == "STATS" else report["nodes"][0]
    assert me["keys"] == KEYS
    assert me["digest"] == stats_of(node)["digest"]  # nothing written since: the same


def test_a_digest_with_little_to_hash_is_answered_in_turn(procs: Processes) -> None:
    node = procs.node()
    with node.client() as client:
        client.set("a", b"1")
    asked = [wire.encode_request(1, "STATS"), wire.encode_request(2, "PING")]
    answered = replies_in_order(node, asked)
    assert [request_id for request_id, _ in answered] == [1, 2]


def test_a_held_stats_in_a_bundle_is_answered_on_its_own(procs: Processes) -> None:
    node = procs.node(extra=["--sweep-interval-ms", "60000"])
    load_unhashed(node)
    with dealer(node) as sock:
        bundle = [[wire.encode_request(1, "STATS")], [wire.encode_request(2, "PING")]]
        sock.send_multipart(envelope.pack_bundle(bundle))
        first = sock.recv_multipart()
        second = sock.recv_multipart()
    assert first[0] == envelope.BUNDLE_MAGIC  # the bundle's reply: PING's alone
    assert [wire.decode_reply(m[-1])[0] for m in envelope.unpack_bundle(first[1], 8)] == [2]
    assert wire.decode_reply(second[-1])[2]["keys"] == KEYS
