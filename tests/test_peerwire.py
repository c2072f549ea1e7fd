"""Node-to-node messages: entries travel inline and are checked field by field."""

from __future__ import annotations

from dataclasses import replace

import msgpack
import pytest

from mesh.core import peerwire
from mesh.core.catchup import Batch
from mesh.core.errors import ProtocolError
from mesh.core.mutation import Mutation, encode_records
from mesh.storage.log import Log

MUTATIONS = [
    Mutation("n1/1", 1, 5 << 16, "k", b"v" * 100, 0),
    Mutation("n1/1", 2, 6 << 16, "ü-key", None, 0),
    Mutation("n2/7", 9, 7 << 16, "t", b"", 1_700_000_000_000),
]
LIMIT = 1 << 20


def published(entries: list) -> tuple[str, tuple]:
    body = [peerwire.ENTRIES, "n1/1", entries, False]
    frame = peerwire.PEER_VERSION_BYTE + msgpack.packb(body, use_bin_type=True)
    return peerwire.parse_published(peerwire.decode(frame, LIMIT))


def test_entries_round_trip() -> None:
    records = encode_records(MUTATIONS)
    for ack in (False, True):
        frame = peerwire.encode_entries("n1/1", records, ack)
        kind, (entries, wanted) = peerwire.parse_published(peerwire.decode(frame, LIMIT))
        assert kind == peerwire.ENTRIES and list(entries) == MUTATIONS
        assert wanted is ack


def test_batch_round_trip() -> None:
    batch = Batch(7, MUTATIONS, {"n1/1": 2, "n2/7": 9}, True, False, 3, 4, False)
    kind, got = peerwire.parse_reply(peerwire.decode(peerwire.encode_batch(batch), LIMIT))
    assert kind == peerwire.BATCH and got == replace(batch, entries=tuple(MUTATIONS))


def test_a_snapshot_chunk_carries_the_seqs_its_store_holds_past_a_hole() -> None:
    """Only when there are any: a chunk without is the 9-element BATCH as before."""
    held = {"n1/1": [5, 6], "n2/7": [12]}
    chunk = Batch(7, MUTATIONS, {"n1/1": 3, "n2/7": 9}, True, True, 3, 4, False, held=held)
    frame = peerwire.encode_batch(chunk)
    _, got = peerwire.parse_reply(peerwire.decode(frame, LIMIT))
    assert got == replace(chunk, entries=tuple(MUTATIONS)) and got.held == held
    plain = peerwire.encode_batch(replace(chunk, held={}))
    assert plain[1:2] == b"\x99" and frame[1:2] == b"\x9a"
    assert peerwire.packed_batch_entries(frame) == peerwire.packed_batch_entries(plain)


@pytest.mark.parametrize(
    "held",
    [[1], {"n1/1": 5}, {"n1/1": [0]}, {"n1/1": [True]}, {"n1/1": [1 << 63]}, {"bad": [1]}],
)
def test_malformed_held_seqs_are_refused(held: object) -> None:
    body = [peerwire.BATCH, 7, [], {"n1/1": 3}, False, True, 1, 0, False, held]
    frame = peerwire.PEER_VERSION_BYTE + msgpack.packb(body, use_bin_type=True)
    with pytest.raises(ProtocolError, match="held seqs"):
        peerwire.parse_reply(peerwire.decode(frame, LIMIT))


def test_frames_of_another_protocol_version_are_refused() -> None:
    """Version 1 carried each entry as a bin of its record's bytes; version 2 had no
    counters (a cluster is upgraded all at once)."""
    body = [peerwire.ENTRIES, "n1/1", encode_records(MUTATIONS), False]
    for version in (b"\x01", b"\x02", b"\x04"):
        with pytest.raises(ProtocolError, match="version byte 3"):
            peerwire.decode(version + msgpack.packb(body, use_bin_type=True), LIMIT)
    with pytest.raises(ProtocolError, match="malformed entry"):
        published(encode_records(MUTATIONS))  # the old layout under the new version byte


@pytest.mark.parametrize(
    "record",
    [
        ["n1/1", 1, 5, "k", b"v"],  # five fields
        ["n1/1", 1, 5, "k", b"v", 0, 0],  # seven fields
        ["n1/1", "1", 5, "k", b"v", 0],  # seq not an int
        ["n1/1", 1, -5, "k", b"v", 0],  # negative hlc
        ["n1/1", 1, 5, b"k", b"v", 0],  # key not a str
        ["n1/1", 1, 5, "k", 7, 0],  # value neither bin nor nil
        ["n1/1", 1, True, "k", b"v", 0],  # a bool is not a timestamp
        {"origin": "n1/1"},  # not an array
    ],
)
def test_badly_typed_records_are_refused(record: list) -> None:
    with pytest.raises(ProtocolError, match="malformed entry"):
        published([list(MUTATIONS[0]), record])


def test_an_entry_list_that_is_not_an_array_is_refused() -> None:
    with pytest.raises(ProtocolError, match="entry list"):
        published({"n1/1": list(MUTATIONS[0])})  # type: ignore[arg-type]


def test_a_record_not_encoded_canonically_is_logged_canonically(tmp_path) -> None:
    """str8 for a short origin decodes the same; the log, which finds an origin's
    records by their encoded prefix, must still find it."""
    origin = b"n1/1"
    canonical = encode_records(MUTATIONS[:1])[0]
    odd = b"\x96\xd9" + bytes([len(origin)]) + origin + canonical[2 + len(origin) :]
    frame = peerwire.PEER_VERSION_BYTE + b"".join(
        [b"\x94", msgpack.packb(peerwire.ENTRIES), msgpack.packb("n1/1"), b"\x91", odd, b"\xc2"]
    )
    _, (entries, _) = peerwire.parse_published(peerwire.decode(frame, LIMIT))
    assert list(entries) == MUTATIONS[:1]
    log = Log(tmp_path)
    try:
        log.append(entries)
        assert list(log.read_from("n1/1", 1)) == MUTATIONS[:1]
    finally:
        log.close()


@pytest.mark.parametrize("tail", [[], ["yes"], [1], [False, 0]])
def test_an_entries_message_without_a_bool_ack_flag_is_refused(tail) -> None:
    body = [peerwire.ENTRIES, "n1/1", [list(MUTATIONS[0])], *tail]
    with pytest.raises(ProtocolError):
        frame = peerwire.PEER_VERSION_BYTE + msgpack.packb(body)
        peerwire.parse_published(peerwire.decode(frame, LIMIT))


def test_heartbeats_say_whether_their_vv_is_logged() -> None:
    beat = {"node": "n1", "origin": "n1/1", "state": "ready", "vv": {"n1/1": 3}}
    for logged in (True, False):
        frame = peerwire.encode_heartbeat(beat, ["n2"], logged, wall=1_700_000_000_000)
        kind, got = peerwire.parse_published(peerwire.decode(frame, LIMIT))
        assert kind == peerwire.HEARTBEAT and got == (
            "n1",
            "n1/1",
            "ready",
            {"n1/1": 3},
            ("n2",),
            logged,
            1_700_000_000_000,
        )
    body = [peerwire.HEARTBEAT, "n1", "n1/1", "ready", {}, []]  # without the logged flag
    old = peerwire.PEER_VERSION_BYTE + msgpack.packb(body)
    with pytest.raises(ProtocolError):
        peerwire.parse_published(peerwire.decode(old, LIMIT))


def test_peers_subscribe_to_entries_and_heartbeats_but_not_progress_beats() -> None:
    beat = {"node": "n1", "origin": "n1/1", "state": "ready", "vv": {"n1/1": 3}}
    subscribed = [
        peerwire.encode_entries("n1/1", encode_records(MUTATIONS), True),
        peerwire.encode_entries("n1/1", [], False),
        peerwire.encode_heartbeat(beat, ["n2", "n3"], True),
    ]
    for frame in subscribed:
        assert frame.startswith(peerwire.PEER_SUBSCRIPTIONS), frame[:8]
    progress = peerwire.encode_progress(beat, ["n2"])
    assert not progress.startswith(peerwire.PEER_SUBSCRIPTIONS)
    kind, got = peerwire.parse_published(peerwire.decode(progress, LIMIT))
    assert kind == peerwire.HEARTBEAT and got[-2] is False  # were one to arrive: acks nothing


# ---------------------------------------------------------------------- range checks

BIG = 1 << 63
TOP = BIG - 1


def frame_of(body: list) -> bytes:
    return peerwire.PEER_VERSION_BYTE + msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(
    "record",
    [
        ["n1/1", -1, 5, "k", b"v", 0],  # negative seq
        ["n1/1", BIG, 5, "k", b"v", 0],  # seq 2**63
        ["n1/1", 1, BIG, "k", b"v", 0],  # hlc 2**63
        ["n1/1", 1, 2**64 - 1, "k", b"v", 0],  # hlc 2**64-1
        ["n1/1", 1, 5, "k", b"v", -1],  # negative deadline
        ["n1/1", 1, 5, "k", b"v", BIG],  # deadline 2**63
        ["n1/1", 1, 5, "", b"v", 0],  # empty key
        ["n1/1", 1, 5, "k" * (64 * 1024 + 1), b"v", 0],  # key over the largest limit
        ["no slash", 1, 5, "k", b"v", 0],  # origin of the wrong shape
        ["n1/1\n", 1, 5, "k", b"v", 0],  # origin with a newline
        ["n1/1", 1, 5.0, "k", b"v", 0],  # a float hlc
        "abcdef",  # a string of six characters is not an entry
    ],
)
def test_entries_out_of_range_are_refused(record) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        published([list(MUTATIONS[0]), record])


def test_the_largest_values_in_range_pass() -> None:
    record = ("n1/abc", TOP, TOP, "k", None, TOP)
    assert published([record])[1][0] == (record,)


def beat_body(**change) -> list:
    fields = {
        "node": "n1",
        "origin": "n1/1",
        "state": "ready",
        "vv": {"n1/1": 3},
        "peers": ["n2"],
        "logged": True,
        "wall": 1_700_000_000_000,
    }
    fields.update(change)
    return [peerwire.HEARTBEAT, *fields.values()]


@pytest.mark.parametrize(
    "change",
    [
        {"node": "x" * 65},
        {"node": "n 1"},
        {"node": 7},
        {"origin": "n1"},
        {"state": "on fire"},
        {"state": {"a": 1}},
        {"vv": {"n1/1": -1}},
        {"vv": {"n1/1": BIG}},
        {"vv": {"garbage": 1}},
        {"vv": [1, 2]},
        {"peers": ["n2"] * 1025},
        {"peers": ["bad id!"]},
        {"peers": "n2"},
        {"logged": 1},
        {"wall": 0},
        {"wall": -5},
        {"wall": 1 << 48},
        {"wall": 1.5},
    ],
)
def test_heartbeats_out_of_range_are_refused(change) -> None:
    peerwire.parse_published(peerwire.decode(frame_of(beat_body()), LIMIT))  # the base is good
    with pytest.raises(ProtocolError, match="malformed"):
        peerwire.parse_published(peerwire.decode(frame_of(beat_body(**change)), LIMIT))


GOOD = "tcp://127.0.0.1:7101"


@pytest.mark.parametrize(
    "endpoint",
    [
        "garbage",
        "ipc:///tmp/x",
        "inproc://x",
        "tcp://*:7101",
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:65536",
        "tcp://127.0.0.1",
        "tcp://a;b:1",
        "tcp://127.0.0.1:7101\n",
        "udp://127.0.0.1:7101",
        "tcp://:7101",
        "",
        7101,
    ],
)
def test_hellos_naming_anything_but_a_tcp_host_and_port_are_refused(endpoint) -> None:
    for body in (
        [peerwire.HELLO, "n2", endpoint, GOOD],
        [peerwire.HELLO, "n2", GOOD, endpoint],
    ):
        with pytest.raises(ProtocolError, match="malformed"):
            peerwire.parse_request(peerwire.decode(frame_of(body), LIMIT))
    with pytest.raises(ProtocolError, match="malformed"):
        reply = [peerwire.HELLO, "n2", "n2/1", endpoint, GOOD]
        peerwire.parse_reply(peerwire.decode(frame_of(reply), LIMIT))


@pytest.mark.parametrize("endpoint", [GOOD, "tcp://node-2.example:1", "tcp://[::1]:65535"])
def test_hellos_naming_a_tcp_host_and_port_pass(endpoint) -> None:
    body = [peerwire.HELLO, "n2", endpoint, endpoint]
    assert peerwire.parse_request(peerwire.decode(frame_of(body), LIMIT))[1][1] == endpoint


@pytest.mark.parametrize("node_id", ["", "x" * 65, "n/1", "n1\n", None, 3])
def test_hellos_with_a_bad_node_id_are_refused(node_id) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        body = [peerwire.HELLO, node_id, GOOD, GOOD]
        peerwire.parse_request(peerwire.decode(frame_of(body), LIMIT))


@pytest.mark.parametrize(
    "fields",
    [
        (-1, {}, False, 0, 0),  # request id
        (1, {"n1/1": BIG}, False, 0, 0),
        (1, {"n1/1": -1}, False, 0, 0),
        (1, {"bad": 1}, False, 0, 0),
        (1, {}, 1, 0, 0),  # full not a bool
        (1, {}, False, -1, 0),  # session
        (1, {}, False, 0, BIG),  # cursor
    ],
)
def test_fetches_out_of_range_are_refused(fields) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        body = [peerwire.FETCH, "n2", *fields]
        peerwire.parse_request(peerwire.decode(frame_of(body), LIMIT))


def test_snapshot_entries_carry_seq_0() -> None:
    """A full sync streams the store's entries, which know no seq."""
    record = ("n1/abc", 0, 5 << 16, "k", b"v", 0)
    body = [peerwire.BATCH, 1, [record], {"n1/abc": 9}, True, True, 2, 1, False]
    _, batch = peerwire.parse_reply(peerwire.decode(frame_of(body), LIMIT))
    assert list(batch.entries) == [record]
