"""Messages between nodes: PUB/SUB fan-out and the ROUTER catch-up socket.

Every message is one ZeroMQ frame: the version byte ``0x01`` and an msgpack
array whose first element names the kind.  An entry is a bin holding the
msgpack of a mutation record (``[origin, seq, hlc, key, value | nil,
deadline]``, see :mod:`mesh.mutation`): the very bytes of its log record, so
that a receiver logs what it got without encoding it again.  ``vv`` is a map
of origin (str) to the highest contiguous seq applied (uint).

On each node's PUB socket (peers SUBscribe to the "E" and "H" kinds only,
:data:`PEER_SUBSCRIPTIONS`; observers to everything)::

    ["E", origin, [entry, ...], ack]                a batch of the sender's own writes;
                                                    ack: its origin holds a reply (w > 1)
    ["H", node_id, origin, state, vv, [peer id, ...], logged]
                                                    heartbeat, ~every 100 ms and at once
                                                    after logging entries that wanted an
                                                    ack; a node not in the peer list
                                                    says HELLO
    ["P", node_id, origin, state, vv, [peer id, ...], false]
                                                    progress beat, right after applying
                                                    other entries (for observers)

On each node's ROUTER "repl" socket (peers connect a DEALER)::

    request  ["HELLO", node_id, repl_endpoint, pub_endpoint]
    reply    ["HELLO", node_id, origin, repl_endpoint, pub_endpoint]

    request  ["FETCH", node_id, request_id, vv, full, session, cursor]
    reply    ["BATCH", request_id, [entry, ...], vv, more, snapshot, session,
              cursor, need_full]

Peers are trusted to be PyCache nodes, but a malformed message is still only
logged and dropped (:class:`~mesh.errors.ProtocolError`), never fatal.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mesh.errors import ProtocolError
from mesh.mutation import Mutation, encode_records, record_prefix
from mesh.replication import Batch, Fetch
from mesh.wire import E_MALFORMED, VERSION, VERSION_BYTE

ENTRIES = "E"
HEARTBEAT = "H"
PROGRESS = "P"
HELLO = "HELLO"
FETCH = "FETCH"
BATCH = "BATCH"

_packer = msgpack.Packer(use_bin_type=True)


def _pack(body: list) -> bytes:
    return VERSION_BYTE + _packer.pack(body)


def decode(frame: bytes, max_bytes: int) -> list:
    """Decode a peer frame into its array; raises ProtocolError."""
    if len(frame) > max_bytes:
        raise ProtocolError(E_MALFORMED, f"peer frame of {len(frame)} bytes is over {max_bytes}")
    if not frame or frame[0] != VERSION:
        raise ProtocolError(E_MALFORMED, "peer frame without version byte 1")
    try:
        body = msgpack.unpackb(memoryview(frame)[1:], raw=False, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(E_MALFORMED, f"undecodable peer frame: {exc}") from exc
    if not isinstance(body, list) or not body or not isinstance(body[0], str):
        raise ProtocolError(E_MALFORMED, "a peer frame is an array [kind, ...]")
    return body


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ProtocolError(E_MALFORMED, f"malformed {what}")


def _entries(raw: Any) -> tuple[list[Mutation], list[bytes] | None]:
    """The entries of a message as Mutations, and the encoded records they came in.

    Each entry travels as the msgpack bytes of its record (a bin), which the
    receiver logs as they are.  All of a message's records are decoded by
    one msgpack Unpacker, then every field's type is checked.  The records
    are kept (second item) only when each is exactly the canonical encoding
    of its origin's record prefix, as :meth:`mesh.log.Log.read_from` expects;
    otherwise the receiver encodes them again.
    """
    _check(type(raw) is list and all(type(r) is bytes for r in raw), "entry list")
    unpacker = msgpack.Unpacker(use_list=False, raw=False, max_buffer_size=0, max_ext_len=0)
    unpacker.feed(b"".join(raw))
    unpack, tell, end = unpacker.unpack, unpacker.tell, 0
    shape = "malformed entry: not [str, uint, uint, str, bin|nil, int]"
    new, mutation = tuple.__new__, Mutation
    out: list[Mutation] = []
    add = out.append
    prefixes: dict[str, bytes] = {}
    canonical = True
    for record in raw:  # each bin must hold exactly one record
        try:
            r = unpack()
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(E_MALFORMED, f"undecodable entry: {exc}") from exc
        end += len(record)
        if tell() != end:
            raise ProtocolError(
                E_MALFORMED, "undecodable entry: a bin that is not exactly one record"
            )
        if (
            type(r) is not tuple
            or len(r) != 6
            or type(r[0]) is not str
            or type(r[1]) is not int
            or type(r[2]) is not int
            or r[2] < 0
            or type(r[3]) is not str
            or (r[4] is not None and type(r[4]) is not bytes)
            or type(r[5]) is not int
        ):
            raise ProtocolError(E_MALFORMED, shape)
        prefix = prefixes.get(r[0])
        if prefix is None:
            prefix = prefixes[r[0]] = record_prefix(r[0])
        if canonical and not record.startswith(prefix):
            canonical = False
        add(new(mutation, r))
    return out, raw if canonical else None


def _vv(vv: Any) -> dict[str, int]:
    _check(
        isinstance(vv, dict)
        and all(isinstance(o, str) and type(s) is int and s >= 0 for o, s in vv.items()),
        "version vector",
    )
    return vv


# --------------------------------------------------------------------- PUB / SUB


def encode_entries(origin: str, records: list[bytes], ack: bool = False) -> bytes:
    """A PUB batch of one origin's entries, given encoded (:func:`encode_records`).

    ``ack``: the origin holds a reply until others log these (``w`` > 1), so
    receivers should heartbeat as soon as they have logged them.
    """
    return _pack([ENTRIES, origin, records, ack])


def encode_heartbeat(beat: dict[str, Any], peers: list[str], logged: bool = True) -> bytes:
    """A PUB heartbeat from :meth:`mesh.replication.Replica.heartbeat` and known peers.

    ``logged``: every entry the vv counts is logged as the sender's fsync
    policy requires, so it counts toward w > 1 acknowledgements.
    """
    vv = beat["vv"]
    return _pack([HEARTBEAT, beat["node"], beat["origin"], beat["state"], vv, peers, logged])


def encode_progress(beat: dict[str, Any], peers: list[str]) -> bytes:
    """A progress beat: a heartbeat's fields, sent right after applying a peer's entries.

    Its kind is "P", so it matches none of :data:`PEER_SUBSCRIPTIONS`: peers
    never receive it (PUB filters before sending), only observers that
    subscribe to everything (monitoring, ``bench/catchup.py``'s lag meter).
    """
    vv = beat["vv"]
    return _pack([PROGRESS, beat["node"], beat["origin"], beat["state"], vv, peers, False])


#: What a node's SUB subscribes to: its peers' entries and heartbeats (each
#: message's first bytes: the version byte, the array header, the kind).
PEER_SUBSCRIPTIONS = (
    VERSION_BYTE + _packer.pack([ENTRIES, "", [], False])[:3],
    VERSION_BYTE + _packer.pack([HEARTBEAT, "", "", "", {}, [], False])[:3],
)


def parse_published(body: list) -> tuple[str, Any]:
    """``("E", ([Mutation...], records | None, ack))``
    or ``("H", (node, origin, state, vv, peers, logged))`` (a progress beat too,
    with ``logged`` False, should one arrive)."""
    kind = body[0]
    if kind == ENTRIES:
        _check(len(body) == 4 and type(body[3]) is bool, "entries message")
        return ENTRIES, (*_entries(body[2]), body[3])
    if kind in (HEARTBEAT, PROGRESS):
        _check(
            len(body) == 7
            and all(isinstance(x, str) for x in body[1:4])
            and isinstance(body[5], list)
            and all(isinstance(x, str) for x in body[5])
            and type(body[6]) is bool,
            "heartbeat",
        )
        return HEARTBEAT, (body[1], body[2], body[3], _vv(body[4]), body[5], body[6])
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


def pack_entries(entries: list[Mutation]) -> bytes:
    """The msgpack of a list of entries, as it goes inside a BATCH (see encode_batch)."""
    return _packer.pack(encode_records(entries))


def encode_batch(batch: Batch, packed_entries: bytes | None = None) -> bytes:
    """A catch-up reply; ``packed_entries`` is :func:`pack_entries` of its entries,
    when already made."""
    if packed_entries is None:
        packed_entries = pack_entries(batch.entries)
    pack = _packer.pack
    return b"".join(
        [
            VERSION_BYTE,
            b"\x99",  # a 9-element array, packed element by element
            pack(BATCH),
            pack(batch.request_id),
            packed_entries,
            pack(batch.vv),
            pack(batch.more),
            pack(batch.snapshot),
            pack(batch.session),
            pack(batch.cursor),
            pack(batch.need_full),
        ]
    )


def parse_request(body: list) -> tuple[str, Any]:
    """``("HELLO", (node, repl, pub))`` or ``("FETCH", (node, Fetch))``."""
    kind = body[0]
    if kind == HELLO:
        _check(len(body) == 4 and all(isinstance(x, str) for x in body[1:]), "HELLO")
        return HELLO, (body[1], body[2], body[3])
    if kind == FETCH:
        _check(
            len(body) == 7
            and isinstance(body[1], str)
            and all(type(x) is int for x in (body[2], body[5], body[6]))
            and isinstance(body[4], bool),
            "FETCH",
        )
        return FETCH, (body[1], Fetch(body[2], _vv(body[3]), body[4], body[5], body[6]))
    raise ProtocolError(E_MALFORMED, f"unknown request kind {kind[:16]!r}")


def parse_reply(body: list) -> tuple[str, Any]:
    """``("HELLO", (node, origin, repl, pub))`` or ``("BATCH", Batch)``."""
    kind = body[0]
    if kind == HELLO:
        _check(len(body) == 5 and all(isinstance(x, str) for x in body[1:]), "HELLO reply")
        return HELLO, (body[1], body[2], body[3], body[4])
    if kind == BATCH:
        _check(
            len(body) == 9
            and type(body[1]) is int
            and all(isinstance(x, bool) for x in (body[4], body[5], body[8]))
            and all(type(x) is int for x in (body[6], body[7])),
            "BATCH",
        )
        entries, records = _entries(body[2])
        batch = Batch(
            body[1], entries, _vv(body[3]), body[4], body[5], body[6], body[7], body[8], records
        )
        return BATCH, batch
    raise ProtocolError(E_MALFORMED, f"unknown reply kind {kind[:16]!r}")
