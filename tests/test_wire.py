"""Unit tests for mesh.core.wire: round trips, validation, limits, error codes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.core import envelope, wire
from mesh.core.acks import parse_w
from mesh.core.errors import (
    BadRequest,
    ConfigError,
    NotReady,
    ProtocolError,
    ServerError,
    TooLarge,
)
from mesh.core.limits import Limits
from mesh.roles.config import NodeConfig

LIMITS = Limits(max_key_bytes=16, max_value_bytes=64, max_items=4)


def raw(body: object) -> bytes:
    return wire.VERSION_BYTE + msgpack.packb(body, use_bin_type=True)


def reject(frame: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        wire.decode_request(frame, LIMITS)
    return info.value


keys = st.text(min_size=1, max_size=4)
values = st.binary(max_size=64)


@given(st.integers(0, 2**64 - 1), keys, values, st.integers(1, wire.MAX_TTL_MS), st.booleans())
def test_set_round_trip(request_id, key, value, ttl_ms, nx):
    frame = wire.encode_request(request_id, "SET", key, value, {"ttl_ms": ttl_ms, "nx": nx})
    request = wire.decode_request(frame, LIMITS)
    assert (request.id, request.op) == (request_id, "SET")
    assert request.args == (key, value, ttl_ms, nx, False)


@given(
    st.one_of(
        st.none(),
        st.binary(),
        st.integers(-(2**63), 2**64 - 1),
        st.text(),
        st.lists(st.binary(), max_size=3),
        st.dictionaries(st.text(), st.integers(-(2**63), 2**63 - 1)),
    )
)
def test_reply_round_trip(result):
    assert wire.decode_reply(wire.encode_reply(7, result)) == (7, wire.OK, result)


def test_every_op_decodes():
    cases = {
        "PING": ([], (None,)),
        "GET": (["k"], ("k",)),
        "DEL": (["a", "b"], (["a", "b"],)),
        "EXPIRE": (["k", 10], ("k", 10)),
        "PERSIST": (["k"], ("k",)),
        "TTL": (["k"], ("k",)),
        "MGET": (["a"], (["a"],)),
        "MSET": (["a", b"1", "b", "2"], ([("a", b"1"), ("b", b"2")],)),
        "STATS": ([], ()),
        "HEALTH": ([], ()),
        "CLUSTER": ([], ()),
        "GETMETA": (["k"], ("k",)),
        # key-space ops (RESP front)
        "EXISTS": (["a", "a"], (["a", "a"],)),
        "DBSIZE": ([], ()),
        "SCAN": ([0, b"a*", 5], (0, "a*", 5)),
        "KEYS": ([b"*"], ("*",)),
        "FLUSHALL": ([], ()),
        "GETDEL": (["k"], ("k",)),
        "SETX": (["k", b"v", {"at_ms": 9, "keepttl": True}], ("k", b"v", 0, 9, False, False, True)),
        "GETEX": (["k", {"persist": True}], ("k", 0, 0, True)),
    }
    cases["INCRBY"] = (["k", -3], ("k", -3))  # counters (issue 18)
    assert set(cases) | {"SET"} == wire.OPS
    for op, (args, expected) in cases.items():
        assert wire.decode_request(wire.encode_request(1, op, *args), LIMITS).args == expected


def test_write_options_carry_w():
    decode = wire.decode_request
    assert decode(wire.encode_request(1, "SET", "k", b"v", {"w": "all"}), LIMITS).w == "all"
    assert decode(wire.encode_request(1, "SET", "k", b"v"), LIMITS).w is None
    assert decode(wire.encode_request(1, "DEL", "a", "b", {"w": 2}), LIMITS).args == (["a", "b"],)
    assert decode(wire.encode_request(1, "DEL", "a", {"w": 2}), LIMITS).w == 2
    assert decode(wire.encode_request(1, "MSET", "a", b"1", {"w": "quorum"}), LIMITS).w == "quorum"
    assert decode(wire.encode_request(1, "EXPIRE", "a", 5, {"w": 1}), LIMITS).w == 1
    assert decode(wire.encode_request(1, "PERSIST", "a", {"w": "ALL"}), LIMITS).w == "all"
    for bad in ({"w": 0}, {"w": 65}, {"w": "most"}, {"w": True}, {"x": 1}, {"w": 1, "x": 2}):
        with pytest.raises(ProtocolError) as info:
            decode(wire.encode_request(9, "DEL", "a", bad), LIMITS)
        assert (info.value.code, info.value.request_id) == (wire.E_BAD_ARGS, 9)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (1, 1),
        (64, 64),
        ("quorum", "quorum"),
        ("QUORUM", "quorum"),
        (b"Quorum", "quorum"),
        ("all", "all"),
        (b"ALL", "all"),
    ],
)
def test_parse_w_accepts_counts_and_levels_in_any_case(raw, expected):
    assert parse_w(raw) == expected


@pytest.mark.parametrize("raw", [0, 65, -1, True, False, 2.0, "2", "most", b"", None, ["all"]])
def test_parse_w_refuses_anything_else(raw):
    with pytest.raises(ValueError, match='w must be 1..64, "quorum" or "all"'):
        parse_w(raw)


@pytest.mark.parametrize("level", ["QUORUM", "Quorum", "quorum", "ALL", 3])
def test_wire_and_config_accept_a_w_level_the_same_way(level):
    on_wire = wire.decode_request(wire.encode_request(1, "DEL", "a", {"w": level}), LIMITS).w
    config = NodeConfig(node_id="n1", data_dir="data", w=level, insecure=True).validate()
    assert on_wire == config.w == parse_w(level)


@pytest.mark.parametrize("level", ["MOST", 0, 65, True])
def test_wire_and_config_refuse_a_bad_w_the_same_way(level):
    with pytest.raises(ProtocolError, match='w must be 1..64, "quorum" or "all"') as info:
        wire.decode_request(wire.encode_request(1, "DEL", "a", {"w": level}), LIMITS)
    assert info.value.code == wire.E_BAD_ARGS
    with pytest.raises(ConfigError, match='w must be 1..64, "quorum" or "all", not '):
        NodeConfig(node_id="n1", data_dir="data", w=level, insecure=True).validate()


def test_op_names_are_case_insensitive():
    assert wire.decode_request(raw([1, "get", "k"]), LIMITS).op == "GET"


@pytest.mark.parametrize(
    "body, code",
    [
        ([1, "NOPE"], wire.E_UNKNOWN_OP),
        ([1, "GET"], wire.E_BAD_ARGS),
        ([1, "GET", "a", "b"], wire.E_BAD_ARGS),
        ([1, "GET", 5], wire.E_BAD_KEY),
        ([1, "GET", ""], wire.E_BAD_KEY),
        ([1, "GET", "k" * 17], wire.E_BAD_KEY),
        ([1, "SET", "k", 5], wire.E_BAD_ARGS),
        ([1, "SET", "k", b"v" * 65], wire.E_TOO_LARGE),
        ([1, "SET", "k", b"v", {"ttl_ms": 0}], wire.E_BAD_ARGS),
        ([1, "SET", "k", b"v", {"ttl_ms": -5}], wire.E_BAD_ARGS),
        ([1, "SET", "k", b"v", {"ttl_ms": 2**64 - 1}], wire.E_BAD_ARGS),
        ([1, "SET", "k", b"v", {"ttl_ms": True}], wire.E_BAD_ARGS),
        ([1, "SET", "k", b"v", {"nx": True, "xx": True}], wire.E_BAD_ARGS),
        ([1, "SET", "k", b"v", {"nx": 1}], wire.E_BAD_ARGS),
        ([1, "SET", "k", b"v", {"bogus": 1}], wire.E_BAD_ARGS),
        ([1, "SET", "k", b"v", [1]], wire.E_BAD_ARGS),
        ([1, "EXPIRE", "k", "10"], wire.E_BAD_ARGS),
        ([1, "MSET", "k"], wire.E_BAD_ARGS),
        ([1, "MGET", "a", "b", "c", "d", "e"], wire.E_TOO_LARGE),
        ([1, "DEL"], wire.E_BAD_ARGS),
        ([1, "DEL", *"abcdefghijklmnopqrstuvwxyz"], wire.E_TOO_LARGE),
        ([1, "MSET", *[b"k", b"v"] * 20], wire.E_TOO_LARGE),
        (
            [1, "SET", "k", b"v", {"nx": False, "xx": False, "ttl_ms": 5, "more": 1}],
            wire.E_BAD_ARGS,
        ),
        ([1, "STATS", 1], wire.E_BAD_ARGS),
        ([1, 5], wire.E_BAD_ARGS),
    ],
)
def test_bad_arguments_are_rejected_with_their_id(body, code):
    error = reject(raw(body))
    assert (error.code, error.request_id) == (code, 1)
    assert error.reason


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"", wire.E_MALFORMED),
        (b"\x02" + msgpack.packb([1, "PING"]), wire.E_VERSION),
        (b"\x01", wire.E_MALFORMED),
        (b"\x01\xc1", wire.E_MALFORMED),  # never-used msgpack byte
        (b"\x01\x92\x01", wire.E_MALFORMED),  # truncated array
        (raw({"id": 1}), wire.E_MALFORMED),
        (raw([1]), wire.E_MALFORMED),
        (raw([-1, "PING"]), wire.E_MALFORMED),
        (raw(["x", "PING"]), wire.E_MALFORMED),
        (raw([True, "PING"]), wire.E_MALFORMED),
        (b"\x01\x92\x01" + b"\xa3G\xffT", wire.E_MALFORMED),  # op not UTF-8 is still a str
    ],
)
def test_malformed_frames(frame, code):
    error = reject(frame)
    assert error.code in (code, wire.E_UNKNOWN_OP, wire.E_BAD_ARGS)


def test_non_utf8_key_is_a_bad_key():
    frame = wire.VERSION_BYTE + b"\x93\x01\xa3GET\xa2\xff\xfe"
    error = reject(frame)
    assert (error.code, error.request_id) == (wire.E_BAD_KEY, 1)


def test_oversized_frame_is_rejected_before_decoding_and_keeps_its_id():
    frame = wire.encode_request(42, "SET", "k", b"x" * (LIMITS.request_bytes + 1))
    error = reject(frame)
    assert (error.code, error.request_id) == (wire.E_TOO_LARGE, 42)


def test_deep_nesting_is_malformed_not_a_crash():
    frame = wire.VERSION_BYTE + b"\x91" * 5000 + b"\x00"
    assert reject(frame).code == wire.E_MALFORMED


@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_protocol_error(data):
    for frame in (data, wire.VERSION_BYTE + data):
        try:
            wire.decode_request(frame, LIMITS)
        except ProtocolError:
            pass


def test_error_codes_map_to_typed_exceptions():
    assert isinstance(wire.error_for(wire.E_BAD_KEY, "x"), BadRequest)
    assert isinstance(wire.error_for(wire.E_TOO_LARGE, "x"), TooLarge)
    assert isinstance(wire.error_for(wire.E_NOT_READY, "x"), NotReady)
    unknown = wire.error_for(1234, "x")
    assert type(unknown) is ServerError and unknown.code == 1234


def test_encode_request_refuses_what_msgpack_cannot_carry():
    with pytest.raises(ProtocolError):
        wire.encode_request(1, "SET", "k", 2**70)


def test_decode_reply_rejects_garbage():
    for frame in (b"", b"\x01", b"\x01\xc1", wire.VERSION_BYTE + msgpack.packb([1, 2])):
        with pytest.raises(ProtocolError):
            wire.decode_reply(frame)


@given(st.integers(0, 2**64 - 1), st.sampled_from(sorted(wire.OPS)), st.binary(max_size=300))
def test_peek_head_reads_id_and_op_or_code(request_id, op, value):
    request = wire.encode_request(request_id, op, value)
    assert envelope.peek_head(request) == (request_id, op.encode())
    assert envelope.peek_head(wire.encode_reply(request_id, value)) == (request_id, wire.OK)
    error = wire.encode_error(request_id, wire.E_NOT_READY, "x")
    assert envelope.peek_head(error) == (request_id, wire.E_NOT_READY)


@given(st.binary(max_size=40))
def test_peek_head_never_raises(data):
    for frame in (data, wire.VERSION_BYTE + data):
        request_id, _ = envelope.peek_head(frame)
        assert request_id is None or 0 <= request_id < 2**64


# ---------------------------------------------------------------------- bundles


@given(st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=15), min_size=1, max_size=50))
def test_bundle_round_trip(messages):
    frames = envelope.pack_bundle(messages)
    assert frames[0] == envelope.BUNDLE_MAGIC and len(frames) == 2
    assert envelope.unpack_bundle(frames[1], max_frames=15) == messages


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never used in msgpack
        msgpack.packb([]),
        msgpack.packb("a string"),
        msgpack.packb({"a": [b"x"]}),
        msgpack.packb([[]]),
        msgpack.packb([[b"x", 1]]),
        msgpack.packb([[b"x", "str"]]),
        msgpack.packb([b"x"]),
        msgpack.packb([[b"x"] * 16]),  # over max_frames
        msgpack.packb([[b"x"]] * (envelope.BUNDLE_MAX + 1)),
        msgpack.packb([[b"x"]])[:-1],  # truncated
        msgpack.packb([[b"x"]]) + b"\x00",  # trailing bytes
    ],
)
def test_malformed_bundles_raise_protocol_error(body):
    with pytest.raises(ProtocolError) as info:
        envelope.unpack_bundle(body, max_frames=15)
    assert info.value.code == wire.E_MALFORMED


@given(st.binary(max_size=300))
def test_random_bundle_bytes_only_ever_raise_protocol_error(data):
    try:
        messages = envelope.unpack_bundle(data, max_frames=15)
    except ProtocolError:
        return
    assert all(type(f) is bytes for m in messages for f in m)


def test_incrby_takes_an_int64_delta_and_w():
    decode = wire.decode_request
    assert decode(wire.encode_request(1, "INCRBY", "k", 5, {"w": 2}), LIMITS).w == 2
    for bad in (2**63, -(2**63) - 1, 1.5, b"1", None, True):
        with pytest.raises(ProtocolError) as info:
            decode(wire.encode_request(1, "INCRBY", "k", bad), LIMITS)
        assert info.value.code == wire.E_BAD_ARGS
    with pytest.raises(ProtocolError):
        decode(wire.encode_request(1, "INCRBY", "k"), LIMITS)


@pytest.mark.parametrize(
    "op, args",
    [
        ("SCAN", [-1]),
        ("SCAN", [0, b"*", 0]),
        ("SCAN", [0, 5]),
        ("KEYS", []),
        ("SETX", ["k", b"v", {"ttl_ms": 5, "at_ms": 5}]),
        ("SETX", ["k", b"v", {"nx": True, "xx": True}]),
        ("SETX", ["k", b"v", {"bogus": 1}]),
        ("SETX", ["k", b"v", {"keepttl": 1}]),
        ("GETEX", ["k", {"persist": True, "ttl_ms": 5}]),
        ("GETEX", ["k", {"at_ms": 0}]),
        ("FLUSHALL", [{"x": 1}]),
    ],
)
def test_keyspace_ops_refuse_bad_arguments(op, args):
    with pytest.raises(ProtocolError) as info:
        wire.decode_request(wire.encode_request(1, op, *args), LIMITS)
    assert info.value.code == wire.E_BAD_ARGS and info.value.request_id == 1


def test_keyspace_write_ops_carry_w():
    decode = wire.decode_request
    assert decode(wire.encode_request(1, "FLUSHALL", {"w": "all"}), LIMITS).w == "all"
    assert decode(wire.encode_request(1, "GETDEL", "k", {"w": 2}), LIMITS).w == 2
    assert decode(wire.encode_request(1, "SETX", "k", b"v", {"w": 2}), LIMITS).w == 2
    assert decode(wire.encode_request(1, "GETEX", "k", {"w": 3, "ttl_ms": 9}), LIMITS).args[1] == 9
    assert {"FLUSHALL", "GETDEL", "SETX", "GETEX"} <= wire.WRITE_OPS
