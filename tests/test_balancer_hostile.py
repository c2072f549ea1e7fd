"""Hostile clients of the balancer: none of them may hurt another client (issue 16.2).

Two nodes behind a real balancer (``procs``).  Meanwhile an innocent client
(:class:`Innocent`) pipelines SETs through the same balancer in a thread and
checks every reply: each must come back, OK, with its own id.  The hostile
client, on a raw DEALER, sends what docs/protocol.md allows or forbids at a
node's door, and must get through the balancer what the node would answer:

- (a) messages of 15 frames (14 envelope frames and the request) are served,
  envelope echoed, also when they share a forwarded batch with other clients'
  requests;
- (b) a frame over the request limit gets TOO_LARGE from the balancer; one over
  twice that drops only the sender's connection: every node stays in rotation;
- (c) two requests in flight with the same id are both answered, and two clients
  using the same ids each get their own replies;
- (d) the envelope limit is the node's (14 frames, reads and writes), and a
  message over it gets MALFORMED with a nil id, without its envelope, at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import zmq

from mesh.core import wire
from tests.conftest import BalancerProcess, Processes, wait_for

pytestmark = pytest.mark.processes

# As docs/protocol.md fixes them (spelled out, not imported).
OK, MALFORMED, TOO_LARGE = 0, 1, 6
REQUEST_LIMIT = 8 * 1024 * 1024 + 64 * 1024
CEILING = 2 * REQUEST_LIMIT
MAX_ENVELOPE = 14  # 16 frames per message, counting the routing id the ROUTER adds
TIMEOUT = 5.0


class Innocent:
    """Pipelines rounds of ``window`` SETs through the balancer in a thread; checks each reply."""

    def __init__(self, endpoint: str, window: int = 100) -> None:
        self.endpoint = endpoint
        self.window = window
        self.sent = 0
        self.ok = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Innocent:
        self._thread.start()
        wait_for(lambda: self.ok >= self.window, TIMEOUT, "the innocent client's first round")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT + 5)

    def wait_rounds(self, rounds: int) -> None:
        target = self.sent + rounds * self.window
        wait_for(lambda: self.ok >= target or self.problems, 30, f"{rounds} more innocent rounds")

    def check(self) -> None:
        print(f"\ninnocent client: {self.ok}/{self.sent} replies OK")
        assert not self.problems, self.problems[:10]
        assert self.ok == self.sent > 0

    def _run(self) -> None:
        next_id = 1
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            while not self._stop.is_set():
                ids = range(next_id, next_id + self.window)
                next_id += self.window
                for request_id in ids:
                    sock.send(wire.encode_request(request_id, "SET", f"i:{request_id}", b"v"))
                self.sent += self.window
                waiting = set(ids)
                deadline = time.monotonic() + TIMEOUT
                while waiting and (left := deadline - time.monotonic()) > 0:
                    if not sock.poll(left * 1000):
                        break
                    frames = sock.recv_multipart()
                    request_id, code, result = wire.decode_reply(frames[-1])
                    if len(frames) != 1 or request_id not in waiting or code != OK:
                        self.problems.append(f"reply {frames[:-1]} {request_id} {code} {result}")
                        continue
                    waiting.discard(request_id)
                    self.ok += 1
                if waiting:
                    self.problems.append(f"no reply to {len(waiting)} of {self.window} requests")


@pytest.fixture
def two(procs: Processes) -> BalancerProcess:
    """Two nodes (each of its own: no replication needed) behind a ready balancer."""
    nodes = [procs.node("n1"), procs.node("n2")]
    return procs.balancer(nodes)


@pytest.fixture
def hostile(two: BalancerProcess) -> Iterator[zmq.Socket]:
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(two.endpoint)
        yield sock


def receive(sock: zmq.Socket, timeout: float = TIMEOUT) -> list[bytes]:
    if not sock.poll(timeout * 1000):
        pytest.fail(f"no reply within {timeout} s")
    return sock.recv_multipart()


def envelope_of(count: int, tag: int = 0) -> list[bytes]:
    return [b"env-%d-%d" % (tag, i) for i in range(count)]


def out_of_rotation(balancer: BalancerProcess) -> list[str]:
    return [line for line in balancer.stderr().splitlines() if "out of rotation" in line]


# ---------------------------------------------------------------------- (a) 15-frame messages


def test_messages_of_15_frames_are_served_and_spoil_no_batch(two, hostile):
    with Innocent(two.endpoint) as innocent:
        sent: dict[int, list[bytes]] = {}
        for request_id in range(1, 201):
            env = envelope_of(MAX_ENVELOPE, request_id)
            op = ("SET", f"h:{request_id}", b"x") if request_id % 2 else ("GET", "h:1")
            hostile.send_multipart([*env, wire.encode_request(request_id, *op)])
            sent[request_id] = env
            if request_id % 20 == 0:
                time.sleep(0.005)  # spread over several of the innocent's batches
        got: dict[int, list[bytes]] = {}
        while len(got) < len(sent):
            frames = receive(hostile)
            request_id, code, result = wire.decode_reply(frames[-1])
            assert code == OK, (request_id, code, result)
            assert request_id in sent and request_id not in got, request_id
            got[request_id] = frames[:-1]
        assert got == sent, "an envelope came back changed"
        innocent.wait_rounds(2)
    innocent.check()


# ---------------------------------------------------------------------- (b) oversized frames


def test_oversized_frames_get_too_large_and_a_monster_drops_only_its_sender(two, hostile):
    with Innocent(two.endpoint) as innocent:
        for _ in range(3):  # once per node and more: no node may see it
            hostile.send(b"\x01" + b"m" * CEILING)
            innocent.wait_rounds(3)
        assert not out_of_rotation(two), out_of_rotation(two)
        # The sender reconnects by itself and is served again.
        hostile.send(wire.encode_request(7, "PING"))
        assert wire.decode_reply(receive(hostile)[-1]) == (7, OK, "PONG")
        big = wire.encode_request(5, "SET", "big", b"x" * REQUEST_LIMIT)
        assert REQUEST_LIMIT < len(big) < CEILING
        hostile.send_multipart([b"env", big])
        frames = receive(hostile)
        assert frames[:-1] == [b"env"]
        assert wire.decode_reply(frames[-1])[:2] == (5, TOO_LARGE)
        # An envelope frame over the limit too (a node would only echo it, at that size).
        hostile.send_multipart([b"e" * (REQUEST_LIMIT + 1), wire.encode_request(6, "PING")])
        assert wire.decode_reply(receive(hostile)[-1])[:2] == (6, TOO_LARGE)
        innocent.wait_rounds(2)
    innocent.check()
    assert not out_of_rotation(two), out_of_rotation(two)


# ---------------------------------------------------------------------- (c) duplicate ids


def test_two_requests_in_flight_with_one_id_are_both_answered(two, hostile):
    with Innocent(two.endpoint) as innocent:
        for round_ in range(50):
            for tag in (b"a", b"b", b"c"):
                hostile.send(wire.encode_request(7, "PING", tag + b"%d" % round_))
        results = Counter()
        for _ in range(150):
            request_id, code, result = wire.decode_reply(receive(hostile)[-1])
            assert (request_id, code) == (7, OK)
            results[result] += 1
        expected = {tag + b"%d" % r: 1 for r in range(50) for tag in (b"a", b"b", b"c")}
        assert dict(results) == expected
        innocent.wait_rounds(1)
    innocent.check()


def test_clients_using_the_same_ids_each_get_their_own_replies(two):
    clients = 4
    with zmq.Context() as ctx:
        socks = [ctx.socket(zmq.DEALER) for _ in range(clients)]
        try:
            for sock in socks:
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(two.endpoint)
            for request_id in range(1, 101):
                for n, sock in enumerate(socks):
                    sock.send(wire.encode_request(request_id, "PING", b"c%d:%d" % (n, request_id)))
            for n, sock in enumerate(socks):
                got = {}
                for _ in range(100):
                    request_id, code, result = wire.decode_reply(receive(sock)[-1])
                    assert code == OK and request_id not in got
                    got[request_id] = result
                assert got == {i: b"c%d:%d" % (n, i) for i in range(1, 101)}
        finally:
            for sock in socks:
                sock.close(0)


# ---------------------------------------------------------------------- (d) the envelope limit


@pytest.mark.parametrize("op", [("GET", "k"), ("SET", "k", b"v")], ids=["read", "write"])
def test_the_envelope_limit_is_the_nodes_and_overflow_is_malformed(two, hostile, op):
    for count in range(MAX_ENVELOPE + 1):
        env = envelope_of(count)
        hostile.send_multipart([*env, wire.encode_request(count + 1, *op)])
        frames = receive(hostile, timeout=2.0)
        assert frames[:-1] == env, f"{count} envelope frames"
        assert wire.decode_reply(frames[-1])[:2] == (count + 1, OK), f"{count} envelope frames"
    started = time.monotonic()
    hostile.send_multipart([*envelope_of(MAX_ENVELOPE + 1), wire.encode_request(99, *op)])
    frames = receive(hostile, timeout=2.0)
    assert len(frames) == 1, "MALFORMED comes without the envelope, as from a node"
    request_id, code, _ = wire.decode_reply(frames[0])
    assert (request_id, code) == (None, MALFORMED)
    assert time.monotonic() - started < 0.5
    hostile.send(wire.encode_request(100, "PING"))  # and the sender is served on
    assert wire.decode_reply(receive(hostile)[-1]) == (100, OK, "PONG")


# ---------------------------------------------------------------------- the parts (no sockets)


def test_refusal_is_what_a_node_would_answer():
    from mesh.roles.admission import refusal

    request = wire.encode_request(3, "GET", "k")
    assert refusal([b"rid", *envelope_of(MAX_ENVELOPE), request], 100) is None
    reply = refusal([b"rid", *envelope_of(MAX_ENVELOPE + 1), request], 100)
    assert reply is not None and reply[0] == b"rid" and len(reply) == 2
    assert wire.decode_reply(reply[1])[:2] == (None, MALFORMED)
    big = wire.encode_request(4, "SET", "k", b"x" * 200)
    reply = refusal([b"rid", b"env", big], 100)
    assert reply is not None and reply[:2] == [b"rid", b"env"]
    assert wire.decode_reply(reply[2])[:2] == (4, TOO_LARGE)
    reply = refusal([b"rid", b"e" * 101, request], 100)
    assert reply is not None and wire.decode_reply(reply[-1])[:2] == (3, TOO_LARGE)


def test_a_node_gets_a_tag_not_the_envelope_and_the_client_gets_its_envelope_back():
    from mesh.roles.routing import Link, Pending, Pool, client_reply, forwarded

    request = wire.encode_request(3, "SET", "k", b"v")
    pending = Pending([b"rid", *envelope_of(MAX_ENVELOPE), request], 3)
    sent = forwarded(pending, b"tag-0001", 1234)
    assert sent[0] == b"tag-0001" and sent[2] == request and len(sent) == 3
    assert pending.tag == b"tag-0001" and pending.run_by_ms == 1234
    assert forwarded(pending, b"tag-0002", 0) == [b"tag-0002", request]
    reply = wire.encode_reply(3, True)
    assert client_reply(pending, reply) == [b"rid", *envelope_of(MAX_ENVELOPE), reply]
    assert client_reply(Pending([b"rid", request], 3), reply) == [b"rid", reply]
    links = [Link("a"), Link("b")]
    pool = Pool(links)
    assert pool.request_limit(REQUEST_LIMIT) == REQUEST_LIMIT  # no node told its limit yet
    links[0].take_health({"node_id": "n1", "state": "ready", "bundle_bytes": 100_000})
    links[1].take_health({"node_id": "n2", "state": "ready"})  # takes no bundles
    assert pool.request_limit(REQUEST_LIMIT) == 100_000
    assert pool.request_limit(50_000) == 50_000
