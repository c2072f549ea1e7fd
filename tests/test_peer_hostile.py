"""Hostile peer messages from an admitted member with a bug (issue 17, point 2).

Strangers are refused at the CURVE handshake (tests/test_trust.py); these
tests play a member that got in: member ``n9``, whose key is in the keys
folder but that runs no node.  Every attack is sent on the repl path (a
DEALER onto each node's repl ROUTER) and on the PUB path (n9 binds a PUB with
the cluster's server key and says HELLO, so the nodes SUBscribe to it).
After each, every node must answer a SET and a GET within 2 s, its HLC must
be near real time, and the bad message must be counted as dropped (or its
entries as refused, for an hlc in range but too far ahead).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from mesh.core import peerwire
from mesh.roles.trust import load_peer_keys
from tests.conftest import NodeProcess, Processes, stats_of, wait_for

ROGUE = "n9"
ORIGIN = "n9/0badc0de"
YEAR_2100_MS = 4_102_444_800_000
BIG = 1 << 63
NEAR_S = 5.0
"""How close to time.time() a node's HLC must stay."""


def frame(*body: Any) -> bytes:
    return peerwire.PEER_VERSION_BYTE + msgpack.packb(list(body), use_bin_type=True)


def entry(seq: Any = 1, hlc: Any = None, key: Any = "evil", value: Any = b"x", dl: Any = 0) -> list:
    hlc = (int(time.time() * 1000) << 16) if hlc is None else hlc
    return [ORIGIN, seq, hlc, key, value, dl]


def now_ms() -> int:
    return int(time.time() * 1000)


def heartbeat(**change: Any) -> bytes:
    fields: dict[str, Any] = {
        "node": ROGUE,
        "origin": ORIGIN,
        "state": "ready",
        "vv": {},
        "peers": ["n1", "n2", "n3"],
        "logged": True,
        "wall": now_ms(),
    }
    fields.update(change)
    return frame(peerwire.HEARTBEAT, *fields.values())


def random_msgpack(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "str", "bin", "nil", "float", "bool"] + (["list", "map"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, BIG - 1, 2**64 - 1, -(2**63), rng.randint(-9, 9)])
    if kind == "str":
        return rng.choice(["E", "H", "HELLO", "FETCH", "BATCH", "", "n1", "x" * 70])
    if kind == "bin":
        return rng.randbytes(rng.randint(0, 16))
    if kind == "nil":
        return None
    if kind == "float":
        return rng.random()
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 8))]
    return {str(i): random_msgpack(rng, depth + 1) for i in range(rng.randint(0, 4))}


def garbage(rng: random.Random, kinds: tuple[str, ...]) -> list[bytes]:
    """Random frames: bytes, msgpack of random shapes, and arrays led by a real kind."""
    out = [rng.randbytes(rng.randint(0, 64)) for _ in range(10)]
    out += [peerwire.PEER_VERSION_BYTE + rng.randbytes(rng.randint(0, 64)) for _ in range(10)]
    for _ in range(30):
        body = [rng.choice(kinds), *(random_msgpack(rng) for _ in range(rng.randint(0, 9)))]
        out.append(frame(*body))
    return out


# ---------------------------------------------------------------------- checks


def dropped(nodes: list[NodeProcess]) -> int:
    return sum(stats_of(n)["peering"]["dropped_messages"] for n in nodes)


def refused(nodes: list[NodeProcess]) -> int:
    return sum(stats_of(n)["replication"]["refused"] for n in nodes)


def serving(nodes: list[NodeProcess], what: str) -> None:
    """Every node alive, ready and serving within 2 s, its HLC near real time."""
    for n in nodes:
        assert n.process is not None and n.process.poll() is None, f"{n.node_id} exited: {what}"

        def round_trip(n: NodeProcess = n) -> bool:
            with n.client(timeout=1.0) as c:
                key = f"alive-{n.node_id}"
                c.set(key, what.encode()[:100])
                assert c.get(key) == what.encode()[:100]
                hlc_ms = c.stats()["clock"]["hlc_ms"]
            assert abs(hlc_ms - now_ms()) < NEAR_S * 1000, f"HLC at {hlc_ms}"
            return True

        wait_for(round_trip, 2.0, f"{n.node_id} serving after {what}")


class Rogue:
    """Member n9: a DEALER onto each node's repl; a PUB the nodes subscribe to and a
    repl ROUTER they connect to once n9 said HELLO (both CURVE servers with the
    cluster's server key, as a node's are)."""

    def __init__(self, procs: Processes, nodes: list[NodeProcess]) -> None:
        self.ctx = zmq.Context.instance()
        self.nodes = nodes
        self.dealers = {}
        for n in nodes:
            sock = procs.peer_socket(self.ctx, zmq.DEALER, as_member=ROGUE)
            sock.connect(n.repl)
            self.dealers[n.node_id] = sock
        keys = load_peer_keys(procs.member_keys(ROGUE), ROGUE)
        self.pub, self.router = (self.ctx.socket(kind) for kind in (zmq.PUB, zmq.ROUTER))
        for sock in (self.pub, self.router):
            procs.sockets.append(sock)
            sock.setsockopt(zmq.LINGER, 0)
            sock.curve_secretkey, sock.curve_publickey = keys.server_secret, keys.server_public
            sock.curve_server = True
            sock.bind("tcp://127.0.0.1:*")
        self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.repl_endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.routes: dict[str, bytes] = {}  # node id -> its DEALER's routing id at n9's ROUTER

    def to_repl(self, message: bytes) -> None:
        for sock in self.dealers.values():
            sock.send(message)

    def publish(self, message: bytes) -> None:
        self.pub.send(message)

    def introduce(self) -> None:
        """HELLO every node naming n9's endpoints, until each heard n9's beats and
        said HELLO back to n9's ROUTER (its beats list no peer: nodes then say HELLO)."""
        hello = frame(peerwire.HELLO, ROGUE, self.repl_endpoint, self.pub_endpoint)
        self.to_repl(hello)

        def all_hear() -> bool:
            self.publish(heartbeat(peers=[]))
            self.answer_hellos()
            for n in self.nodes:
                if ROGUE not in stats_of(n)["clock"]["peers"] or n.node_id not in self.routes:
                    self.to_repl(hello)
                    return False
            return True

        wait_for(all_hear, 10.0, "every node subscribed to n9's PUB", interval=0.1)

    def requests(self) -> Iterator[tuple[bytes, tuple]]:
        """The requests waiting at n9's ROUTER: (routing id, decoded body)."""
        while self.router.poll(0):
            ident, data = self.router.recv_multipart()
            yield ident, peerwire.decode(data, 1 << 24)

    def answer_hellos(self) -> None:
        for ident, body in self.requests():
            if body[0] == peerwire.HELLO:
                self.routes[body[1]] = ident
                reply = frame(peerwire.HELLO, ROGUE, ORIGIN, self.repl_endpoint, self.pub_endpoint)
                self.router.send_multipart([ident, reply])

    def to_dealers(self, message: bytes) -> None:
        """Send ``message`` to each node's DEALER, as a reply from n9's repl ROUTER."""
        for ident in self.routes.values():
            self.router.send_multipart([ident, message])

    def answer_fetches(self, entries: list, timeout: float = 3.0) -> int:
        """Answer the FETCHes that come in ``timeout`` with a BATCH of ``entries``."""
        answered, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline and answered < len(self.nodes):
            self.router.poll(50)
            for ident, body in self.requests():
                if body[0] == peerwire.FETCH:
                    vv = {ORIGIN: max(e[1] for e in entries)}
                    batch = frame(peerwire.BATCH, body[2], entries, vv, False, False, 0, 0, False)
                    self.router.send_multipart([ident, batch])
                    answered += 1
        return answered


@pytest.fixture
def rogue(procs: Processes) -> Iterator[tuple[Rogue, list[NodeProcess]]]:
    procs.member_keys("n1", "n2", "n3", ROGUE)
    nodes = procs.cluster(3)
    yield Rogue(procs, nodes), nodes


def attack(
    nodes: list[NodeProcess],
    send: Callable[[bytes], None],
    cases: list[tuple[str, bytes]],
    counter: Callable[[list[NodeProcess]], int] = dropped,
    per_case: int = 3,
) -> None:
    """Send each case; after each, every node serves and counted it (``per_case`` in all)."""
    for what, message in cases:
        before = counter(nodes)
        send(message)
        serving(nodes, what)
        wait_for(
            lambda before=before: counter(nodes) >= before + per_case,
            2.0,
            f"{what} counted by every node",
        )


# ---------------------------------------------------------------------- entries

BAD_ENTRIES = [
    ("hlc 2**63", entry(hlc=BIG)),
    ("hlc 2**64-1", entry(hlc=2**64 - 1)),
    ("negative hlc", entry(hlc=-1)),
    ("hlc a string", entry(hlc="soon")),
    ("seq -1", entry(seq=-1)),
    ("seq 2**63", entry(seq=BIG)),
    ("negative deadline", entry(dl=-5)),
    ("key bytes", entry(key=b"k")),
    ("value an int", entry(value=7)),
    ("five fields", entry()[:5]),
]
FUTURE_ENTRIES = [  # in range, but too far ahead of the receiver's clock: refused
    ("hlc 2**63-1", entry(hlc=BIG - 1)),
    ("hlc in 2100", entry(hlc=YEAR_2100_MS << 16)),
    ("hlc an hour ahead", entry(hlc=(now_ms() + 3_600_000) << 16)),
]


def batch_of(*entries: list, request_id: int = 1) -> bytes:
    return frame(peerwire.BATCH, request_id, list(entries), {}, False, False, 0, 0, False)


def test_bad_entries_on_the_repl_path_achieve_nothing(rogue) -> None:
    r, nodes = rogue
    r.introduce()
    cases = [(what, batch_of(e)) for what, e in BAD_ENTRIES]
    attack(nodes, r.to_dealers, cases)  # as catch-up replies from n9
    attack(nodes, r.to_repl, cases[:2])  # a BATCH is no request: dropped there too
    # In range but from the future, in answer to real fetches: refused, then not
    # asked for again in a loop (the nodes back off).
    r.publish(heartbeat(vv={ORIGIN: 1}))  # n9 claims an entry: the nodes fetch it
    before = refused(nodes)
    assert r.answer_fetches([entry(hlc=YEAR_2100_MS << 16)]) == len(nodes)
    wait_for(lambda: refused(nodes) >= before + len(nodes), 2.0, "the 2100 entry refused")
    serving(nodes, "a catch-up batch from 2100")
    time.sleep(0.5)  # within the backoff: at most one fetch each may come
    assert r.answer_fetches([entry(hlc=YEAR_2100_MS << 16)], timeout=0.2) <= len(nodes)


def test_bad_entries_on_the_pub_path_achieve_nothing(rogue) -> None:
    r, nodes = rogue
    r.introduce()
    cases = [(what, frame(peerwire.ENTRIES, ORIGIN, [e], False)) for what, e in BAD_ENTRIES]
    attack(nodes, r.publish, cases)
    future = [(what, frame(peerwire.ENTRIES, ORIGIN, [e], False)) for what, e in FUTURE_ENTRIES]
    attack(nodes, r.publish, future, counter=refused)
    for n in nodes:
        with n.client() as c:
            assert c.get("evil") is None  # nothing of it applied
            assert n.node_id in {"n1", "n2", "n3"} and c.health()["state"] == "ready"


# ---------------------------------------------------------------------- HELLO, FETCH


def hello(node_id: Any, repl: Any, pub: Any) -> bytes:
    return frame(peerwire.HELLO, node_id, repl, pub)


GOOD = "tcp://127.0.0.1:9"


def test_hellos_with_bad_endpoints_or_ids_achieve_nothing(rogue) -> None:
    r, nodes = rogue
    cases = [
        ("HELLO garbage", hello(ROGUE, "garbage", "garbage")),
        ("HELLO x garbage (the reproduced one)", hello("x", "garbage", "garbage")),
        ("HELLO ipc", hello(ROGUE, "ipc:///tmp/pycache-evil", GOOD)),
        ("HELLO inproc", hello(ROGUE, GOOD, "inproc://evil")),
        ("HELLO star", hello(ROGUE, "tcp://*:7101", GOOD)),
        ("HELLO port 0", hello(ROGUE, "tcp://127.0.0.1:0", GOOD)),
        ("HELLO port 70000", hello(ROGUE, GOOD, "tcp://127.0.0.1:70000")),
        ("HELLO long id", hello("n" * 65, GOOD, GOOD)),
        ("HELLO id with a slash", hello("n9/x", GOOD, GOOD)),
        ("HELLO id an int", hello(9, GOOD, GOOD)),
        ("HELLO short", frame(peerwire.HELLO, ROGUE)),
    ]
    attack(nodes, r.to_repl, cases)
    for n in nodes:
        assert "ipc://" not in (n.data_dir / "peers.json").read_text()


def fetch(*fields: Any) -> bytes:
    return frame(peerwire.FETCH, ROGUE, *fields)


def test_fetches_with_absurd_fields_achieve_nothing(rogue) -> None:
    r, nodes = rogue
    cases = [
        ("FETCH vv seq 2**63", fetch(1, {ORIGIN: BIG}, False, 0, 0)),
        ("FETCH vv seq -1", fetch(1, {ORIGIN: -1}, False, 0, 0)),
        ("FETCH vv bad origin", fetch(1, {"nobody": 1}, False, 0, 0)),
        ("FETCH vv a list", fetch(1, [1, 2], False, 0, 0)),
        ("FETCH negative id", fetch(-1, {}, False, 0, 0)),
        ("FETCH cursor 2**63", fetch(1, {}, True, 0, BIG)),
        ("FETCH session -1", fetch(1, {}, True, -1, 0)),
        ("FETCH full an int", fetch(1, {}, 1, 0, 0)),
    ]
    attack(nodes, r.to_repl, cases)
    # in range however absurd: answered, not dropped, and harmless
    for sock in r.dealers.values():
        sock.send(fetch(7, {ORIGIN: BIG - 1}, False, 0, BIG - 1))
        sock.send(fetch(8, {}, True, BIG - 1, BIG - 1))
    serving(nodes, "FETCHes in range but absurd")


# ---------------------------------------------------------------------- heartbeats, garbage


def test_garbage_heartbeats_achieve_nothing(rogue) -> None:
    r, nodes = rogue
    r.introduce()
    cases = [
        ("heartbeat state on fire", heartbeat(state="on fire")),
        ("heartbeat vv 2**63", heartbeat(vv={ORIGIN: BIG})),
        ("heartbeat vv bad origin", heartbeat(vv={"x": 1})),
        ("heartbeat 5000 peers", heartbeat(peers=["n1"] * 5000)),
        ("heartbeat bad peer id", heartbeat(peers=["no such id!"])),
        ("heartbeat wall -1", heartbeat(wall=-1)),
        ("heartbeat wall 2**63", heartbeat(wall=BIG)),
        ("heartbeat wall a float", heartbeat(wall=1.5)),
        ("heartbeat bad node id", heartbeat(node="n 9")),
    ]
    attack(nodes, r.publish, cases)
    # Without the wall time (7 fields) it does not match the nodes' subscriptions:
    # their PUB filters it out before it is sent.
    r.publish(frame(peerwire.HEARTBEAT, ROGUE, ORIGIN, "ready", {}, [], True))
    serving(nodes, "a heartbeat without a wall time")
    # In range: one member's clock in 2100 and a vv it cannot serve move nobody.
    r.publish(heartbeat(wall=YEAR_2100_MS, vv={ORIGIN: BIG - 1}))
    serving(nodes, "a heartbeat from 2100 claiming seq 2**63-1")
    for n in nodes:
        assert stats_of(n)["state"] == "ready"


def test_random_frames_and_oversized_frames_achieve_nothing(rogue) -> None:
    r, nodes = rogue
    r.introduce()
    rng = random.Random(17)
    for message in garbage(rng, ("HELLO", "FETCH", "BATCH", "X")):
        r.to_repl(message)
    for message in garbage(rng, ("E", "H", "P", "X")):
        r.publish(message)
    serving(nodes, "random frames")
    # On the repl path nearly all are counted (one could name a node: an impostor);
    # on the PUB path most do not match the subscriptions and are never sent.
    wait_for(lambda: dropped(nodes) >= 3 * 50, 2.0, "the random frames counted")
    big = peerwire.PEER_VERSION_BYTE + b"\x00" * (20 * 1024 * 1024)  # over max_frame
    r.to_repl(big)
    r.publish(big)
    serving(nodes, "frames over the limit")
