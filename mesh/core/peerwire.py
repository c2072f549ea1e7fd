"""Messages between nodes: PUB/SUB fan-out and the ROUTER catch-up socket.

Every message is one ZeroMQ frame: the peer protocol's version byte ``0x03``
and an msgpack array whose first element names the kind.  An entry is a
mutation record inline (``[origin, seq, hlc, key, value | nil, deadline]``,
see :mod:`mesh.core.mutation`): a whole message decodes in one msgpack call into
plain tuples, which the receiver checks field by field and applies as they
are.  (Version 1 carried each entry as a bin of its record's bytes, so that
the receiver could log them unencoded; decoding those bins one by one cost a
catch-up more than encoding the records again for the log.)  ``vv`` is a map
of origin (str) to the highest contiguous seq applied (uint).

On each node's PUB socket (peers SUBscribe to the "E" and "H" kinds only,
:data:`PEER_SUBSCRIPTIONS`; observers to everything)::

    ["E", origin, [entry, ...], ack]                a batch of the sender's own writes;
                                                    ack: its origin holds a reply (w > 1)
    ["H", node_id, origin, state, vv, [peer id, ...], logged, wall]
                                                    heartbeat, ~every 100 ms and at once
                                                    after logging entries that wanted an
                                                    ack; a node not in the peer list
                                                    says HELLO
    ["P", node_id, origin, state, vv, [peer id, ...], false, wall]
                                                    progress beat, right after applying
                                                    other entries (for observers)

On each node's ROUTER "repl" socket (peers connect a DEALER)::

    request  ["HELLO", node_id, repl_endpoint, pub_endpoint]
    reply    ["HELLO", node_id, origin, repl_endpoint, pub_endpoint]

    request  ["FETCH", node_id, request_id, vv, full, session, cursor]
    reply    ["BATCH", request_id, [entry, ...], vv, more, snapshot, session,
              cursor, need_full, held?]

``held``, only in a snapshot chunk of a server whose log has a hole, maps
origins to the seqs past ``vv`` that the snapshot's store holds
(:mod:`mesh.core.holes`); the receiver holds them too, until its vv reaches
them.

A BATCH read from the log carries, per origin the requester lacks, one run
of entries in seq order from its vv on; the serving node puts its log
records' payloads inline as they are (each is the msgpack of its entry:
:func:`pack_batch_entries`), as an origin does for its own PUB batches.
The receiver checks them like any entries.

Peers are admitted members, but a member may have a bug: every field is
type- and range-checked (:mod:`mesh.core.peerfields`) before anything uses it,
and a malformed message is only logged, counted and dropped
(:class:`~mesh.core.errors.ProtocolError`), never fatal.  A heartbeat's ``wall``
is its sender's wall clock (ms), for the receivers' clock guard
(:mod:`mesh.core.clockguard`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from mesh.core import peerfields
from mesh.core.catchup import Batch, Fetch
from mesh.core.clock import wall_ms
from mesh.core.errors import ProtocolError
from mesh.core.mutation import Record
from mesh.core.wire import E_MALFORMED

PEER_VERSION = 3
"""The first byte of every message between nodes (clients speak version 1: :mod:`.wire`).
3: an entry's value may be a counter's state (:mod:`mesh.core.counters`); nodes of
version 2 and 3 ignore each other (a cluster is upgraded all at once)."""
PEER_VERSION_BYTE = bytes([PEER_VERSION])

ENTRIES = "E"
HEARTBEAT = "H"
PROGRESS = "P"
HELLO = "HELLO"
FETCH = "FETCH"
BATCH = "BATCH"

_packer = msgpack.Packer(use_bin_type=True)


def _pack(body: list) -> bytes:
    return PEER_VERSION_BYTE + _packer.pack(body)


def decode(frame: bytes, max_bytes: int) -> tuple:
    """Decode a peer frame into its array (msgpack arrays as tuples); raises ProtocolError."""
    if len(frame) > max_bytes:
        raise ProtocolError(E_MALFORMED, f"peer frame of {len(frame)} bytes is over {max_bytes}")
    if not frame or frame[0] != PEER_VERSION:
        raise ProtocolError(E_MALFORMED, f"peer frame without version byte {PEER_VERSION}")
    try:
        body = msgpack.unpackb(memoryview(frame)[1:], raw=False, use_list=False, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(E_MALFORMED, f"undecodable peer frame: {exc}") from exc
    if type(body) is not tuple or not body or not isinstance(body[0], str):
        raise ProtocolError(E_MALFORMED, "a peer frame is an array [kind, ...]")
    return body


_check = peerfields.check
_entries = peerfields.entries
_vv = peerfields.vv


# --------------------------------------------------------------------- PUB / SUB


def encode_entries(origin: str, records: Sequence[bytes], ack: bool = False) -> bytes:
    """A PUB batch of one origin's entries, given encoded
    (:func:`~mesh.core.mutation.encode_records`, as the origin logged them).

    ``ack``: the origin holds a reply until others log these (``w`` > 1), so
    receivers should heartbeat as soon as they have logged them.
    """
    pack = _packer.pack
    head = [PEER_VERSION_BYTE, b"\x94", pack(ENTRIES), pack(origin)]
    return b"".join([*head, _packer.pack_array_header(len(records)), *records, pack(ack)])


def encode_heartbeat(
    beat: dict[str, Any], peers: list[str], logged: bool = True, wall: int | None = None
) -> bytes:
    """A PUB heartbeat from :meth:`mesh.core.replication.Replica.heartbeat` and known peers.

    ``logged``: every entry the vv counts is logged as the sender's fsync
    policy requires, so it counts toward w > 1 acknowledgements.  ``wall``:
    the sender's wall clock in ms (default: now), for its peers' clock guard.
    """
    vv, wall = beat["vv"], wall_ms() if wall is None else wall
    body = [HEARTBEAT, beat["node"], beat["origin"], beat["state"], vv, peers, logged, wall]
    return _pack(body)


def encode_progress(beat: dict[str, Any], peers: list[str]) -> bytes:
    """A progress beat: a heartbeat's fields, sent right after applying a peer's entries.

    Its kind is "P", so it matches none of :data:`PEER_SUBSCRIPTIONS`: peers
    never receive it (PUB filters before sending), only observers that
    subscribe to everything (monitoring, ``bench/catchup.py``'s lag meter).
    """
    vv = beat["vv"]
    body = [PROGRESS, beat["node"], beat["origin"], beat["state"], vv, peers, False, wall_ms()]
    return _pack(body)


#: What a node's SUB subscribes to: its peers' entries and heartbeats (each
#: message's first bytes: the version byte, the array header, the kind).
PEER_SUBSCRIPTIONS = (
    PEER_VERSION_BYTE + _packer.pack([ENTRIES, "", [], False])[:3],
    PEER_VERSION_BYTE + _packer.pack([HEARTBEAT, "", "", "", {}, [], False, 0])[:3],
)


def parse_published(body: tuple) -> tuple[str, Any]:
    """``("E", (entries, ack))``
    or ``("H", (node, origin, state, vv, peers, logged, wall))`` (a progress beat
    too, with ``logged`` False, should one arrive)."""
    kind = body[0]
    if kind == ENTRIES:
        _check(len(body) == 4 and type(body[3]) is bool, "entries message")
        peerfields.origin(body[1])
        return ENTRIES, (_entries(body[2]), body[3])
    if kind in (HEARTBEAT, PROGRESS):
        _check(len(body) == 8 and type(body[6]) is bool, "heartbeat")
        state = body[3]
        _check(type(state) is str and state in peerfields.NODE_STATES, f"state {state!r:.40}")
        beat = (
            peerfields.node_id(body[1]),
            peerfields.origin(body[2]),
            body[3],
            _vv(body[4]),
            peerfields.peer_ids(body[5]),
            body[6],
            peerfields.int63(body[7], "heartbeat wall time", 1),
        )
        _check(beat[6] <= peerfields.MAX_WALL_MS, "heartbeat wall time")
        return HEARTBEAT, beat
    raise ProtocolError(E_MALFORMED, f"unknown published kind {kind[:16]!r}")


# --------------------------------------------------------------------- ROUTER / DEALER


def encode_hello(node_id: str, repl: str, pub: str, origin: str | None = None) -> bytes:
    """A HELLO request (no origin) or reply (with the answering node's origin)."""
    if origin is None:
        return _pack([HELLO, node_id, repl, pub])
    return _pack([HELLO, node_id, origin, repl, pub])


def encode_fetch(node_id: str, fetch: Fetch) -> bytes:
    """A catch-up request."""
    return _pack(
        [FETCH, node_id, fetch.request_id, fetch.vv, fetch.full, fetch.session, fetch.cursor]
    )


def pack_entries(entries: Sequence[Record]) -> bytes:
    """The msgpack of a list of entries, as it goes inside a BATCH (see encode_batch)."""
    return _packer.pack(entries)


def pack_batch_entries(batch: Batch) -> bytes:
    """The msgpack of a batch's entries: its log records' payloads as they are
    (each is the msgpack of its entry) behind an array header, or its entries packed."""
    if batch.raw is None:
        return _packer.pack(batch.entries)
    payloads = batch.raw.payloads
    return b"".join([_packer.pack_array_header(len(payloads)), *payloads])


def encode_batch(batch: Batch, packed_entries: bytes | None = None) -> bytes:
    """A catch-up reply; ``packed_entries`` is :func:`pack_batch_entries` of it,
    when already made."""
    if packed_entries is None:
        packed_entries = pack_batch_entries(batch)
    pack = _packer.pack
    return b"".join(
        [
            PEER_VERSION_BYTE,
            b"\x9a" if batch.held else b"\x99",  # a 10- or 9-element array, element by element
            pack(BATCH),
            pack(batch.request_id),
            packed_entries,
            pack(batch.vv),
            pack(batch.more),
            pack(batch.snapshot),
            pack(batch.session),
            pack(batch.cursor),
            pack(batch.need_full),
            pack(batch.held) if batch.held else b"",
        ]
    )


def packed_batch_entries(frame: bytes) -> bytes:
    """The msgpack array of a BATCH frame's entries, its bytes as sent: call it only
    on a frame that :func:`decode` and :func:`parse_reply` accepted (so every
    entry in it was checked)."""
    unpacker = msgpack.Unpacker(max_buffer_size=0)
    unpacker.feed(memoryview(frame)[1:])
    unpacker.read_array_header()
    unpacker.skip()  # the kind
    unpacker.skip()  # the request id
    start = unpacker.tell()
    unpacker.skip()  # the entries
    return frame[1 + start : 1 + unpacker.tell()]


_FETCH_INTS = ((2, "request id"), (5, "session"), (6, "cursor"))
_BATCH_INTS = ((1, "request id"), (6, "session"), (7, "cursor"))


def parse_request(body: tuple) -> tuple[str, Any]:
    """``("HELLO", (node, repl, pub))`` or ``("FETCH", (node, Fetch))``."""
    kind = body[0]
    if kind == HELLO:
        _check(len(body) == 4, "HELLO")
        node = peerfields.node_id(body[1])
        return HELLO, (node, peerfields.endpoint(body[2]), peerfields.endpoint(body[3]))
    if kind == FETCH:
        _check(len(body) == 7 and type(body[4]) is bool, "FETCH")
        node = peerfields.node_id(body[1])
        ids = [peerfields.int63(body[i], f"FETCH {name}") for i, name in _FETCH_INTS]
        return FETCH, (node, Fetch(ids[0], _vv(body[3]), body[4], ids[1], ids[2]))
    raise ProtocolError(E_MALFORMED, f"unknown request kind {kind[:16]!r}")


def parse_reply(body: tuple) -> tuple[str, Any]:
    """``("HELLO", (node, origin, repl, pub))`` or ``("BATCH", Batch)``."""
    kind = body[0]
    if kind == HELLO:
        _check(len(body) == 5, "HELLO reply")
        node, origin = peerfields.node_id(body[1]), peerfields.origin(body[2])
        return HELLO, (node, origin, peerfields.endpoint(body[3]), peerfields.endpoint(body[4]))
    if kind == BATCH:
        _check(
            len(body) in (9, 10) and all(type(x) is bool for x in (body[4], body[5], body[8])),
            "BATCH",
        )
        ids = [peerfields.int63(body[i], f"BATCH {name}") for i, name in _BATCH_INTS]
        held = peerfields.held(body[9]) if len(body) == 10 else {}
        entries, vv = _entries(body[2]), _vv(body[3])
        batch = Batch(ids[0], entries, vv, body[4], body[5], ids[1], ids[2], body[8], held=held)
        return BATCH, batch
    raise ProtocolError(E_MALFORMED, f"unknown reply kind {kind[:16]!r}")
