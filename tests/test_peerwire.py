"""Node-to-node messages: entries travel as their encoded log records."""

from __future__ import annotations

import msgpack
import pytest

from mesh import peerwire
from mesh.errors import ProtocolError
from mesh.mutation import Mutation, encode_records
from mesh.replication import Batch

MUTATIONS = [
    Mutation("n1/1", 1, 5 << 16, "k", b"v" * 100, 0),
    Mutation("n1/1", 2, 6 << 16, "ü-key", None, 0),
    Mutation("n2/7", 9, 7 << 16, "t", b"", 1_700_000_000_000),
]
LIMIT = 1 << 20


def published(entries: list) -> tuple[str, tuple]:
    frame = b"\x01" + msgpack.packb([peerwire.ENTRIES, "n1/1", entries, False], use_bin_type=True)
    return peerwire.parse_published(peerwire.decode(frame, LIMIT))


def test_entries_round_trip_with_their_records() -> None:
    records = encode_records(MUTATIONS)
    for ack in (False, True):
        frame = peerwire.encode_entries("n1/1", records, ack)
        kind, (entries, got, wanted) = peerwire.parse_published(peerwire.decode(frame, LIMIT))
        assert kind == peerwire.ENTRIES and entries == MUTATIONS and got == records
        assert wanted is ack


def test_batch_round_trip_with_its_records() -> None:
    batch = Batch(7, MUTATIONS, {"n1/1": 2, "n2/7": 9}, True, False, 3, 4, False)
    kind, got = peerwire.parse_reply(peerwire.decode(peerwire.encode_batch(batch), LIMIT))
    assert kind == peerwire.BATCH and got == batch
    assert got.records == encode_records(MUTATIONS)


@pytest.mark.parametrize(
    "split",
    [
        lambda r: [b"".join(r)],  # two records in one bin
        lambda r: [r[0][:-1], r[0][-1:] + r[1]],  # boundaries moved: same count of records
        lambda r: [r[0], r[1][:5]],  # a record cut short
        lambda r: [r[0], b"\xc1"],  # not msgpack
    ],
)
def test_bins_that_are_not_one_record_each_are_refused(split) -> None:
    with pytest.raises(ProtocolError):
        published(split(encode_records(MUTATIONS[:2])))


@pytest.mark.parametrize(
    "record",
    [
        ["n1/1", 1, 5, "k", b"v"],  # five fields
        ["n1/1", "1", 5, "k", b"v", 0],  # seq not an int
        ["n1/1", 1, -5, "k", b"v", 0],  # negative hlc
        ["n1/1", 1, 5, b"k", b"v", 0],  # key not a str
        ["n1/1", 1, 5, "k", 7, 0],  # value neither bin nor nil
        ["n1/1", 1, True, "k", b"v", 0],  # a bool is not a timestamp
    ],
)
def test_badly_typed_records_are_refused(record: list) -> None:
    with pytest.raises(ProtocolError):
        published([msgpack.packb(record, use_bin_type=True)])


def test_entries_given_as_arrays_are_refused() -> None:
    with pytest.raises(ProtocolError):
        published([list(MUTATIONS[0])])


def test_a_record_not_encoded_canonically_is_taken_but_not_logged_as_sent() -> None:
    """str8 for a short origin decodes the same, but the log's origin index would miss it."""
    canonical = encode_records(MUTATIONS[:1])[0]
    origin = b"n1/1"
    odd = b"\x96\xd9" + bytes([len(origin)]) + origin + canonical[2 + len(origin) :]
    _, (entries, records, _) = published([odd])
    assert entries == MUTATIONS[:1] and records is None


@pytest.mark.parametrize("tail", [[], ["yes"], [1], [False, 0]])
def test_an_entries_message_without_a_bool_ack_flag_is_refused(tail) -> None:
    body = [peerwire.ENTRIES, "n1/1", encode_records(MUTATIONS[:1]), *tail]
    with pytest.raises(ProtocolError):
        peerwire.parse_published(peerwire.decode(b"\x01" + msgpack.packb(body), LIMIT))


def test_heartbeats_say_whether_their_vv_is_logged() -> None:
    beat = {"node": "n1", "origin": "n1/1", "state": "ready", "vv": {"n1/1": 3}}
    for logged in (True, False):
        frame = peerwire.encode_heartbeat(beat, ["n2"], logged)
        kind, got = peerwire.parse_published(peerwire.decode(frame, LIMIT))
        assert kind == peerwire.HEARTBEAT and got == (
            "n1",
            "n1/1",
            "ready",
            {"n1/1": 3},
            ["n2"],
            logged,
        )
    old = b"\x01" + msgpack.packb([peerwire.HEARTBEAT, "n1", "n1/1", "ready", {}, []])
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
    assert kind == peerwire.HEARTBEAT and got[-1] is False  # were one to arrive: acks nothing
