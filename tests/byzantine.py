"""A byzantine-but-admitted peer for the deterministic simulation (``tests/sim.py``).

Member ``nb`` has a key (so its messages reach the nodes) and a bug: it sends
real peer frames (:mod:`mesh.core.peerwire`), mostly broken ones.  The honest
nodes take them the way ``mesh.roles.peering`` does: decode and parse, and a
:class:`~mesh.core.errors.ProtocolError` is counted and dropped
(``sim.stats["dropped_frames"]``); what parses is handed to the replica.  It
sends, every ``period_ms`` until the heal:

- entries with hlcs out of range (2**63, negative, not ints) or in range but
  far in the future (2**63-1, the year 2100: the replica refuses them);
- HELLOs naming ``garbage``, ``ipc://``, ``inproc://`` and ``tcp://*`` endpoints;
- garbage heartbeats, and well-formed ones claiming entries it never serves;
- answers every FETCH with a batch from the future or with garbage.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mesh.core import peerwire
from mesh.core.clock import physical_ms
from mesh.core.errors import ProtocolError
from tests.sim import WALL_EPOCH_MS, Sim, SimNode

ID = "nb"
ORIGIN = "nb/bad"
WIRE = "wire"
YEAR_2100_MS = 4_102_444_800_000
BIG = 1 << 63


def frame(*body: Any) -> bytes:
    return peerwire.PEER_VERSION_BYTE + msgpack.packb(list(body), use_bin_type=True)


def entry(seq: Any = 1, hlc: Any = 5 << 16, key: Any = "k0", value: Any = b"evil") -> list:
    return [ORIGIN, seq, hlc, key, value, 0]


def entries(*items: list) -> bytes:
    return frame(peerwire.ENTRIES, ORIGIN, list(items), False)


def beat(**change: Any) -> bytes:
    fields: dict[str, Any] = {
        "node": ID,
        "origin": ORIGIN,
        "state": "ready",
        "vv": {ORIGIN: 3},
        "peers": [],
        "logged": True,
        "wall": WALL_EPOCH_MS,
    }
    fields.update(change)
    return frame(peerwire.HEARTBEAT, *fields.values())


PUBLISHED = [
    entries(entry(hlc=BIG)),
    entries(entry(hlc=-1)),
    entries(entry(hlc="soon")),
    entries(entry(seq=BIG)),
    entries(entry(hlc=BIG - 1)),  # in range: refused as from the future
    entries(entry(hlc=YEAR_2100_MS << 16)),
    entries(entry(seq=1, hlc=YEAR_2100_MS << 16), entry(seq=2, hlc=YEAR_2100_MS << 16)),
    beat(state="on fire"),
    beat(vv={ORIGIN: BIG}),
    beat(wall=-1),
    beat(peers=["n1"] * 5000),
    beat(),  # well-formed: claims seqs 1..3 of nb/bad, which it serves from 2100 only
    b"\x02\x93garbage",
    b"",
]
REQUESTS = [
    frame(peerwire.HELLO, "x", "garbage", "garbage"),
    frame(peerwire.HELLO, ID, "ipc:///tmp/evil", "tcp://127.0.0.1:1"),
    frame(peerwire.HELLO, ID, "tcp://127.0.0.1:1", "inproc://evil"),
    frame(peerwire.HELLO, ID, "tcp://*:7101", "tcp://127.0.0.1:1"),
    frame(peerwire.FETCH, ID, 1, {ORIGIN: BIG}, False, 0, 0),
]


class Byzantine:
    """Member ``nb`` in a :class:`~tests.sim.Sim`, sending from ``start_ms`` to ``end_ms``."""

    def __init__(self, sim: Sim, start_ms: int = 0, end_ms: int = 0, period_ms: int = 50) -> None:
        self.sim = sim
        self.end_ms = end_ms or sim.p.duration_ms
        self.period_ms = period_ms
        self.turn = 0
        sim.stats.setdefault("dropped_frames", 0)
        sim.outsiders[ID] = self.on_message
        sim.handlers[WIRE] = self.on_wire
        sim.at(start_ms, self.attack)

    def attack(self) -> None:
        """Send the next published frame and request to every honest node."""
        sim = self.sim
        if sim.quiet or sim.now > self.end_ms:
            return
        published = PUBLISHED[self.turn % len(PUBLISHED)]
        request = REQUESTS[self.turn % len(REQUESTS)]
        for node_id in sim.nodes:
            sim.send(WIRE, ID, node_id, ("pub", published))
            sim.send(WIRE, ID, node_id, ("repl", request))
        self.turn += 1
        sim.at(sim.now + self.period_ms, self.attack)

    def on_message(self, kind: str, src: str, payload: Any) -> None:
        """What an honest node sends nb: a FETCH gets a batch from 2100, or garbage."""
        if kind != "fetch":
            return
        fetch, _life = payload
        self.turn += 1
        future = [entry(seq, YEAR_2100_MS << 16) for seq in (1, 2, 3)]
        reply = (
            frame(peerwire.BATCH, fetch.request_id, future, {ORIGIN: 3}, False, False, 0, 0, False)
            if self.turn % 2
            else frame(peerwire.BATCH, fetch.request_id, [entry(hlc=BIG)], {}, 1, 2, 3, 4, 5)
        )
        self.sim.send(WIRE, ID, src, ("reply", reply))

    def on_wire(self, node: SimNode, src: str, payload: tuple[str, bytes]) -> None:
        """An honest node takes a frame as ``mesh.roles.peering`` does."""
        channel, data = payload
        parse = {
            "pub": peerwire.parse_published,
            "repl": peerwire.parse_request,
            "reply": peerwire.parse_reply,
        }[channel]
        try:
            kind, body = parse(peerwire.decode(data, 1 << 20))
        except ProtocolError:
            self.sim.stats["dropped_frames"] += 1
            return
        sim = self.sim
        if kind == peerwire.ENTRIES:
            sim._on_pub(node, list(body[0]))
        elif kind == peerwire.HEARTBEAT:
            node_id, origin, state, vv, _peers, logged, _wall = body
            node.replica.on_heartbeat(node_id, origin, state, vv, sim.now, logged)
            sim._poll(node)
        elif kind == peerwire.BATCH:
            sim._on_batch(node, src, body)
        elif kind == peerwire.FETCH:
            node.replica.serve(body[0], body[1], sim.now)
        else:
            node.replica.add_peer(body[0])


def clock_sane(sim: Sim, node: SimNode) -> bool:
    """``node``'s HLC is within its max offset of its wall clock."""
    wall = WALL_EPOCH_MS + sim.now + node.skew_ms
    return physical_ms(node.clock.last) <= wall + node.replica.gate.max_offset_ms
