"""A live node fed malformed and hostile frames: each gets its error reply or is dropped.

Every test starts its own node, stores a known data set through the Python client
(:class:`Cache`), then talks to the node with raw pyzmq DEALER sockets (:class:`Probe`)
and, for the transport level, with plain TCP.  Each hostile message is followed by a
PING "barrier" on the same socket: replies on one connection come back in order, so the
messages that arrive before the barrier's reply are exactly the replies to the hostile
message, and "dropped" is checked without waiting for a timeout.

What each reply must be comes from docs/protocol.md: the code, and the id where the doc
says it is readable (nil where it says it is not).  At the end of every test
:meth:`Cache.assert_intact` checks that the process is alive, still answers, and still
holds exactly the data set (digest, keys, seq, tombstones, log offset, every value and
TTL), and that ``bad_requests`` grew by exactly the number of error replies seen.

Tests named ``test_bug_*`` assert documented behaviour the node does not have yet.
"""

from __future__ import annotations

import itertools
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

from mesh.core import envelope, wire
from mesh.core.errors import ProtocolError
from mesh.core.limits import Limits
from tests.conftest import NodeProcess

pytestmark = pytest.mark.processes

# Codes and limits as docs/protocol.md fixes them: spelled out, not imported from
# mesh.core.wire, so that a change there cannot silently change what these tests expect.
OK, MALFORMED, VERSION, UNKNOWN_OP, BAD_ARGS, BAD_KEY, TOO_LARGE = 0, 1, 2, 3, 4, 5, 6
NAMES = {0: "OK", 1: "MALFORMED", 2: "VERSION", 3: "UNKNOWN_OP", 4: "BAD_ARGS", 5: "BAD_KEY"}
NAMES.update({6: "TOO_LARGE", 99: "INTERNAL"})
MAX_KEY = 512
MAX_VALUE = 8 * 1024 * 1024
REQUEST_LIMIT = MAX_VALUE + 64 * 1024  # 8,454,144 bytes, version byte included
CEILING = 2 * REQUEST_LIMIT  # ZMQ_MAXMSGSIZE: a larger frame drops the connection
MAX_ITEMS = 10_000
MAX_FRAMES = 16  # routing identity included
MAX_TTL = 2**47
NIL = None
TIMEOUT = 10.0  # seconds; only ever reached when something is wrong
TTL_MS = 3_600_000  # far in the future for the length of a test
ERROR_REPLY_MAX = 512  # an error reply is small whatever the request was (no amplification)

EVIL = b"EVIL"  # a value the data set never holds: seeing it stored means a bad write ran
KEYS = [f"k:{i:03d}" for i in range(94)]
K0, K1, K2 = KEYS[0], KEYS[1], KEYS[2]  # K0 has a TTL (every third key has one), K1 not
MISSING = "no-such-key"


# --------------------------------------------------------------------------- msgpack


class Raw(bytes):
    """Msgpack bytes spliced into a request as they are: what ``packb`` will not write."""


def pack(item: Any) -> bytes:
    return bytes(item) if isinstance(item, Raw) else msgpack.packb(item, use_bin_type=True)


def _sized(n: int, fix: int | None, fix_max: int, codes: Sequence[int], widths: str) -> bytes:
    if fix is not None and n <= fix_max:
        return bytes([fix | n])
    for code, width in zip(codes, widths, strict=True):
        if n < 2 ** (8 * struct.calcsize(">" + width)):
            return bytes([code]) + struct.pack(">" + width, n)
    raise ValueError(n)


def array_header(n: int) -> bytes:
    return _sized(n, 0x90, 15, (0xDC, 0xDD), "HI")


def map_header(n: int) -> bytes:
    return _sized(n, 0x80, 15, (0xDE, 0xDF), "HI")


def raw_array(*items: Any) -> Raw:
    return Raw(array_header(len(items)) + b"".join(pack(item) for item in items))


def raw_map(*pairs: tuple[Any, Any]) -> Raw:
    """A map written pair by pair, so it can repeat a name or use any key type."""
    return Raw(map_header(len(pairs)) + b"".join(pack(k) + pack(v) for k, v in pairs))


def raw_str(data: bytes) -> Raw:
    """A msgpack **str** holding ``data`` as is, valid UTF-8 or not."""
    return Raw(_sized(len(data), 0xA0, 31, (0xD9, 0xDA, 0xDB), "BHI") + data)


def request(*items: Any) -> bytes:
    """A request frame: version byte 0x01, then the msgpack array of ``items``."""
    return b"\x01" + raw_array(*items)


def frame(body: Any) -> bytes:
    """Version byte 0x01 followed by any single msgpack value."""
    return b"\x01" + pack(body)


def ext(code: int, data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(code, data)


def padded_to(size: int, head: bytes, fill: bytes = b"\x00") -> bytes:
    assert len(head) <= size
    return head + fill * (size - len(head))


def oversized_set(size: int, request_id: int) -> bytes:
    """A well-formed SET frame of exactly ``size`` bytes (its value fills the rest)."""
    head = b"\x01" + array_header(4) + pack(request_id) + pack("SET") + pack(K0)
    value_len = size - len(head) - 5  # bin 32 header
    return head + b"\xc6" + struct.pack(">I", value_len) + b"v" * value_len


# --------------------------------------------------------------------------- sockets


@dataclass
class Reply:
    envelope: list[bytes]
    id: Any
    code: int
    result: Any
    size: int


def decode(message: list[bytes], what: str) -> Reply:
    """A reply message as the doc defines it; fails the test on anything else."""
    *envelope, data = message
    assert data[:1] == b"\x01", f"{what}: reply without version byte: {data[:32]!r}"
    try:
        body = msgpack.unpackb(data[1:], raw=False)
    except Exception as exc:
        pytest.fail(f"{what}: undecodable reply {data[:64]!r}: {exc}")
    assert isinstance(body, list) and len(body) == 3, f"{what}: reply {body!r}"
    request_id, code, result = body
    assert type(code) is int and code >= 0, f"{what}: reply code {code!r}"
    assert request_id is None or (type(request_id) is int and request_id >= 0), what
    return Reply(envelope, request_id, code, result, len(data))


def describe(message: bytes | Sequence[bytes]) -> str:
    if isinstance(message, bytes):
        return f"{message[:100]!r} ({len(message)} bytes)"
    return f"{len(message)} frames ending {describe(message[-1])}"


class Probe:
    """A raw DEALER on the node's API; every send and receive is bounded by a deadline."""

    BARRIER_ID = 2**64 - 2

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.monitor: zmq.Socket | None = None
        for option, value in (
            (zmq.LINGER, 0),
            (zmq.IMMEDIATE, 1),
            (zmq.SNDHWM, 0),
            (zmq.RCVHWM, 0),
        ):
            self.sock.setsockopt(option, value)
        self.sock.connect(endpoint)
        self.errors = 0  # error replies seen: bad_requests must grow by exactly this
        self._tokens = itertools.count()

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()

    def send(self, message: bytes | Sequence[bytes], deadline: float) -> None:
        frames = [message] if isinstance(message, bytes) else list(message)
        while True:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:  # IMMEDIATE: not connected yet
                left = deadline - time.monotonic()
                if left <= 0 or not self.sock.poll(left * 1000, zmq.POLLOUT):
                    pytest.fail("the node did not take a message before the deadline")

    def exchange_many(
        self, messages: Sequence[bytes | Sequence[bytes]], what: str, timeout: float = TIMEOUT
    ) -> list[list[bytes]]:
        """Send ``messages`` and a PING barrier; return every message received before its reply."""
        deadline = time.monotonic() + timeout
        for message in messages:
            self.send(message, deadline)
        token = b"barrier %d" % next(self._tokens)
        self.send(request(self.BARRIER_ID, "PING", token), deadline)
        before: list[list[bytes]] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(left * 1000, zmq.POLLIN):
                pytest.fail(
                    f"{what}: no reply to the PING sent after it within {timeout} s; "
                    f"{len(before)} replies before that"
                )
            message = self.sock.recv_multipart()
            if len(message) == 1:
                reply = decode(message, what)
                if (reply.id, reply.code, reply.result) == (self.BARRIER_ID, OK, token):
                    return before
            before.append(message)

    def exchange(self, message: bytes | Sequence[bytes], what: str) -> list[list[bytes]]:
        return self.exchange_many([message], what)

    def call(self, message: bytes | Sequence[bytes], what: str) -> Reply:
        """Exactly one reply to ``message``, decoded."""
        replies = self.exchange(message, what)
        assert len(replies) == 1, f"{what}: expected one reply, got {len(replies)}"
        reply = decode(replies[0], what)
        if reply.code != OK:
            self.errors += 1
        return reply

    def expect(
        self,
        message: bytes | Sequence[bytes],
        code: int,
        request_id: int | None = NIL,
        what: str = "",
        envelope: Sequence[bytes] = (),
    ) -> Any:
        """Send ``message``; its one reply must have ``code`` and ``request_id``."""
        what = what or describe(message)
        reply = self.call(message, what)
        got = (NAMES.get(reply.code, reply.code), reply.id)
        assert got == (NAMES[code], request_id), (
            f"{what}: expected {NAMES[code]} with id {request_id}, got {got[0]} with id "
            f"{reply.id}: {reply.result!r:.200}"
        )
        assert reply.envelope == list(envelope), f"{what}: envelope {reply.envelope!r:.200}"
        if code != OK:
            assert isinstance(reply.result, str), f"{what}: reason {reply.result!r:.100}"
            assert reply.size <= ERROR_REPLY_MAX, f"{what}: error reply of {reply.size} bytes"
        return reply.result


# --------------------------------------------------------------------------- the data set


def data_set() -> tuple[dict[str, bytes], set[str]]:
    """100 keys: binary, empty, non-UTF-8 and 64 KiB values, multi-byte and 512-byte keys."""
    rng = random.Random(20240601)
    values = {key: rng.randbytes(rng.randrange(1, 300)) for key in KEYS}
    values.update(
        {
            "k:empty": b"",
            "ключ": "значение".encode(),
            "🔑": b"\xff\xfe\x00 not UTF-8",
            "K" * MAX_KEY: b"the longest key",
            "€" * 170 + "ab": b"512 bytes of multi-byte key",
            "k:big": rng.randbytes(64 * 1024),
        }
    )
    assert len(values) == 100 and all(v != EVIL for v in values.values())
    return values, set(list(values)[::3])


class Cache:
    """The node under attack, the data set it holds, and the probes talking to it."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.values, self.ttl_keys = data_set()
        self.probes: list[Probe] = []
        with node.client() as client, client.pipeline() as pipe:
            for key, value in self.values.items():
                pipe.set(key, value, px=TTL_MS if key in self.ttl_keys else None)
            assert pipe.execute() == [True] * len(self.values)
            self.before = client.stats()
        assert self.before["keys"] == len(self.values) and self.before["bad_requests"] == 0

    @property
    def endpoint(self) -> str:
        return self.node.endpoint

    def probe(self) -> Probe:
        probe = Probe(self.endpoint)
        self.probes.append(probe)
        return probe

    def close(self) -> None:
        for probe in self.probes:
            probe.close()
        self.probes = []

    def alive(self) -> None:
        process = self.node.process
        assert process is not None
        if process.poll() is not None:
            pytest.fail(f"node exited with {process.returncode}:\n{self.node.stderr()[-3000:]}")

    def assert_intact(self, exact: bool = True, extra_errors: int = 0) -> dict:
        """The node lives, answers, and holds exactly the data set it held before."""
        self.alive()
        with self.node.client() as client:
            assert client.ping() == "PONG"
            stats = client.stats()
            with client.pipeline() as pipe:
                pipe.mget(list(self.values))
                for key in self.values:
                    pipe.pttl(key)
                values, *ttls = pipe.execute()
        self.alive()
        assert stats["state"] == "ready"
        for field in ("digest", "keys", "seq", "tombstones"):
            assert stats[field] == self.before[field], f"{field} changed"
        assert stats["log"]["next_offset"] == self.before["log"]["next_offset"], "log written"
        changed = [k for k, v in zip(self.values, values, strict=True) if v != self.values[k]]
        assert changed == [], f"values changed: {changed[:5]}"
        for key, ttl in zip(self.values, ttls, strict=True):
            if key in self.ttl_keys:
                assert 0 < ttl <= TTL_MS, f"{key}: TTL {ttl}"
            else:
                assert ttl == -1, f"{key}: TTL {ttl}"
        seen = sum(probe.errors for probe in self.probes) + extra_errors
        grew = stats["bad_requests"] - self.before["bad_requests"]
        if seen:
            assert grew > 0, "no bad request was counted"
        if exact:
            assert grew == seen, f"bad_requests grew by {grew}, {seen} error replies seen"
        else:
            assert grew >= seen, f"bad_requests grew by {grew}, {seen} error replies seen"
        stderr = self.node.stderr()
        assert "Traceback" not in stderr and "internal error" not in stderr, stderr[-3000:]
        return stats


@pytest.fixture
def cache(node: NodeProcess) -> Iterator[Cache]:
    cache = Cache(node)
    try:
        yield cache
    finally:
        cache.close()


# --------------------------------------------------------------------------- random bytes


def reference(data: bytes) -> tuple[int, int | None, str | None]:
    """What mesh.core.wire's decoder makes of a frame: (code, id, op)."""
    try:
        decoded = wire.decode_request(data, Limits())
    except ProtocolError as exc:
        return exc.code, exc.request_id, None
    return OK, decoded.id, decoded.op


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
)
_objects = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)
_op_names = st.sampled_from(sorted(wire.OPS) + ["get", "Mset", "FROB", "", "PING "])
_requests = st.builds(
    lambda request_id, op, args: request(request_id, op, *args),
    st.integers(0, 2**64 - 1) | _objects,
    _op_names | st.text(max_size=8) | _objects,
    st.lists(st.sampled_from([K0, K1, "", "x" * 513]) | _objects, max_size=5),
)
_valid = [
    request(1, "SET", K0, EVIL, {"ttl_ms": 1000, "nx": True}),
    request(2, "MSET", K0, EVIL, K1, EVIL),
    request(3, "DEL", K0, K1, K2),
    request(4, "EXPIRE", K1, 5),
]
_mutants = st.builds(
    lambda base, index, byte, cut: (base[:index] + bytes([byte]) + base[index + 1 :])[:cut],
    st.sampled_from(_valid),
    st.integers(0, 40),
    st.integers(0, 255),
    st.integers(0, 60),
)
random_frames = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda data: b"\x01" + data),
    _objects.map(frame),
    _requests,
    _mutants,
)


def test_random_frames_get_an_error_reply(cache):
    probe = cache.probe()
    counts: Counter[str] = Counter()

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(data=random_frames)
    def check(data: bytes) -> None:
        code, request_id, op = reference(data)
        if code == OK and op in wire.WRITE_OPS:
            reject()  # a valid write would change the data set on purpose
        reply = probe.call(data, f"frame {data[:80]!r}")
        counts[NAMES.get(reply.code, str(reply.code))] += 1
        # What the doc fixes for any frame ...
        if not data:
            assert (reply.code, reply.id) == (MALFORMED, NIL)
        elif data[0] != 1:
            assert (reply.code, reply.id) == (VERSION, NIL)
        assert reply.code in NAMES and reply.code != 99, reply
        if reply.code in (MALFORMED, VERSION):
            assert reply.id is NIL, reply
        elif reply.code != OK:
            assert isinstance(reply.id, int) and isinstance(reply.result, str), reply
        # ... and the node agrees with its reference decoder.
        assert (reply.code, reply.id) == (code, request_id), (data, reply)

    check()
    past_the_decoder = sum(counts[name] for name in ("OK", "UNKNOWN_OP", "BAD_ARGS", "BAD_KEY"))
    assert counts["MALFORMED"] and counts["VERSION"] and past_the_decoder, counts
    cache.assert_intact()


# --------------------------------------------------------------------------- frame level


def test_empty_frames_and_wrong_version_bytes(cache):
    probe = cache.probe()
    probe.expect(b"", MALFORMED, what="empty frame")
    probe.expect(b"\x01", MALFORMED, what="version byte and no body")
    probe.expect(b"\x01\x01", MALFORMED, what="a second version byte as the body")
    write = request(1, "SET", K0, EVIL)[1:]
    for version in (0x00, 0x02, 0x03, 0x10, 0x7F, 0x80, 0x93, 0xC0, 0xFE, 0xFF):
        probe.expect(bytes([version]), VERSION, what=f"version {version:#x} alone")
        probe.expect(bytes([version]) + write, VERSION, what=f"SET under version {version:#x}")
        probe.expect(bytes([version]) * 1000, VERSION, what=f"1000 x {version:#x}")
    probe.expect(write, VERSION, what="a request without its version byte")
    probe.expect(b"\x02" + request(2, "PING"), VERSION, what="version 2 then a full frame")
    cache.assert_intact()


def test_truncated_requests_at_every_cut_point(cache):
    probe = cache.probe()
    for whole in _valid + [request(5, "PERSIST", K0), request(6, "SET", K1, EVIL, None)]:
        for cut in range(len(whole)):
            probe.expect(whole[:cut], MALFORMED, what=f"{whole!r} cut at {cut}")
    # A length that promises more than the frame holds.
    promise = b"\x01" + array_header(4) + pack(7) + pack("SET") + pack(K0)
    for header in (b"\xc4\xff", b"\xc5\xff\xff", b"\xc6\x00\x80\x00\x00", b"\xdb\x00\x00\x10\x00"):
        probe.expect(promise + header + b"EVIL", MALFORMED, what=f"bin/str header {header!r}")
    # Whatever follows the single msgpack body makes the frame malformed.
    for tail in (b"\x00", b"\xc0", b"\xc1", request(8, "PING")[1:], b" " * 100):
        probe.expect(request(9, "DEL", K0, K1) + tail, MALFORMED, what=f"DEL + {tail!r}")
    cache.assert_intact()


def test_valid_msgpack_of_the_wrong_shape(cache):
    probe = cache.probe()
    shapes: list[tuple[str, Any]] = [
        ("nil", None),
        ("true", True),
        ("int", 1),
        ("negative int", -1),
        ("float", 1.5),
        ("str", "PING"),
        ("bin", b"\x01\x92\x01\xa4PING"),
        ("empty array", []),
        ("array of 1", [1]),
        ("array of 1 op", ["PING"]),
        ("empty map", {}),
        ("map request", {"id": 1, "op": "PING"}),
        ("array in an array", [[1, "PING"]]),
        ("two arrays", [[1], ["PING"]]),
        ("op first", ["SET", 1, K0, EVIL]),
        ("nested ids", [[[1]], "PING"]),
    ]
    for what, body in shapes:
        probe.expect(frame(body), MALFORMED, what=what)
    deep_arrays = Raw(b"\x91" * 10_000 + b"\xc0")
    deep_maps = Raw(b"\x81\xa1a" * 10_000 + b"\xc0")
    probe.expect(b"\x01" + deep_arrays, MALFORMED, what="10,000 nested arrays")
    probe.expect(b"\x01" + deep_maps, MALFORMED, what="10,000 nested maps")
    probe.expect(request(1, "PING", deep_arrays), MALFORMED, what="PING of 10,000 levels")
    probe.expect(request(2, "SET", K0, deep_maps), MALFORMED, what="SET of 10,000 levels")
    probe.expect(request(3, "MGET", K0, deep_arrays), MALFORMED, what="MGET of 10,000 levels")
    shallow = Raw(b"\x91" * 500 + b"\xc0")  # deep, but within the decoder's nesting cap
    probe.expect(request(4, "GET", shallow), BAD_KEY, 4, what="key nested 500 deep")
    probe.expect(request(5, "SET", K0, shallow), BAD_ARGS, 5, what="value nested 500 deep")
    probe.expect(request(6, "PING", shallow), BAD_ARGS, 6, what="message nested 500 deep")
    # Counts that promise far more elements than the frame holds.
    for header in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdc\xff\xff"):
        probe.expect(b"\x01" + header + b"\x01\xa4PING", MALFORMED, what=f"count {header!r}")
    bomb = request(7, "MGET", Raw(b"\xdd\x7f\xff\xff\xff"))
    probe.expect(bomb, MALFORMED, what="argument promising 2**31 elements")
    cache.assert_intact()


def test_ids_of_the_wrong_type_or_range(cache):
    probe = cache.probe()
    bad_ids: list[tuple[str, Any]] = [
        ("str", "1"),
        ("bin", b"\x01"),
        ("nil", None),
        ("true", True),
        ("false", False),
        ("float 1.0", 1.0),
        ("float32 1.0", Raw(b"\xca\x3f\x80\x00\x00")),
        ("nan", float("nan")),
        ("-1", -1),
        ("-1 as int 64", Raw(b"\xd3" + struct.pack(">q", -1))),
        ("-2**63", -(2**63)),
        ("array", [1]),
        ("map", {"id": 1}),
    ]
    for what, bad in bad_ids:
        probe.expect(request(bad, "SET", K0, EVIL), MALFORMED, what=f"id {what}")
        probe.expect(request(bad, "FROB"), MALFORMED, what=f"id {what}, unknown op")
    # Any integer encoding of 0..2**64-1 is an id, and comes back as that number.
    good_ids: list[tuple[Any, int]] = [
        (0, 0),
        (2**64 - 1, 2**64 - 1),
        (Raw(b"\xd0\x05"), 5),
        (Raw(b"\xd3" + struct.pack(">q", 2**63 - 1)), 2**63 - 1),
        (Raw(b"\xcf" + struct.pack(">Q", 3)), 3),
    ]
    for raw_id, number in good_ids:
        assert probe.expect(request(raw_id, "PING"), OK, number) == "PONG"
        probe.expect(request(raw_id, "FROB"), UNKNOWN_OP, number, what=f"id {number}")
    cache.assert_intact()


def test_ops_of_the_wrong_type_and_unknown_ops(cache):
    probe = cache.probe()
    ids = itertools.count(100)
    for what, op in [
        ("int", 1),
        ("nil", None),
        ("true", True),
        ("float", 1.0),
        ("array", ["SET"]),
        ("map", {"op": "SET"}),
    ]:
        request_id = next(ids)
        message = request(request_id, op, K0, EVIL)
        probe.expect(message, BAD_ARGS, request_id, what=f"op {what}")
    unknown = [
        "FROB",
        "",
        " SET",
        "SET ",
        "SET\x00",
        "SETXX",
        "S",
        "FLUSHDB",  # FLUSHALL and KEYS are ops (the RESP front's), FLUSHDB is not
        "SHUTDOWN",
        "CONFIG",
        "DEBUG",
        "EVAL",
        "SAVE",
        "SNAPSHOT",
        "_set",
        "__init__",
        "execute",
        "ſet",  # U+017F, which str.upper() turns into "S"
        "pıng",  # dotless i, which str.upper() turns into "I"
        "ＳＥＴ",  # full width
        "X" * 100_000,
        Raw(raw_str(b"SET\xff")),
        Raw(raw_str(b"\xff\xfe")),
    ]
    for op in unknown:
        request_id = next(ids)
        message = request(request_id, op, K0, EVIL)
        probe.expect(message, UNKNOWN_OP, request_id, what=f"op {op!r:.40}")
    # The op is case-insensitive and may be bin; these are the real PING.
    for op in ("ping", "PiNg", b"PING"):
        assert probe.expect(request(7, op), OK, 7, what=f"op {op!r}") == "PONG"
    cache.assert_intact()


def test_each_op_with_the_wrong_number_of_arguments(cache):
    probe = cache.probe()
    cases: list[tuple[str, list[Any]]] = [
        ("PING", ["a", "b"]),
        ("GET", []),
        ("GET", [K0, K1]),
        ("SET", []),
        ("SET", [K0]),
        ("SET", [K0, EVIL, None, None]),
        ("SET", [K0, EVIL, {"ttl_ms": 5}, {"nx": True}]),
        ("DEL", []),
        ("EXPIRE", []),
        ("EXPIRE", [K1]),
        ("EXPIRE", [K1, 5, 5]),
        ("PERSIST", []),
        ("PERSIST", [K0, K1]),
        ("TTL", []),
        ("TTL", [K0, K1]),
        ("MGET", []),
        ("MSET", []),
        ("MSET", [K0]),
        ("MSET", [K0, EVIL, K1]),
        ("MSET", [K0, EVIL, K1, EVIL, K2]),
        ("MSET", [*([K0, EVIL] * MAX_ITEMS), K1]),  # odd beats too many
        ("STATS", ["x"]),
        ("STATS", [None]),
    ]
    for request_id, (op, args) in enumerate(cases, start=1):
        message = request(request_id, op, *args)
        probe.expect(message, BAD_ARGS, request_id, what=f"{op} with {len(args)} arguments")
    cache.assert_intact()


BAD_KEYS: list[tuple[str, Any]] = [
    ("int", 1),
    ("negative int", -1),
    ("nil", None),
    ("true", True),
    ("float", 1.5),
    ("array", [K0]),
    ("map", {K0: 1}),
    ("empty str", ""),
    ("empty bin", b""),
    ("513 bytes", "x" * (MAX_KEY + 1)),
    ("513 bytes of multi-byte", "€" * 171),
    ("100 KiB", "x" * 100_000),
    ("str of invalid byte", raw_str(b"\xff")),
    ("str of lone continuation", raw_str(b"k\x80")),
    ("str of overlong NUL", raw_str(b"\xc0\x80")),
    ("str of overlong slash", raw_str(b"\xe0\x80\xaf")),
    ("str of a surrogate", raw_str(b"\xed\xa0\x80")),
    ("str past U+10FFFF", raw_str(b"\xf4\x90\x80\x80")),
    ("str of a 5-byte sequence", raw_str(b"\xf8\x88\x80\x80\x80")),
    ("str cut mid-character", raw_str(K0.encode() + b"\xe2\x82")),
    ("str of Latin-1", raw_str("clé".encode("latin-1"))),
    ("bin not UTF-8", b"\xff\xfek"),
    ("bin of a surrogate", b"\xed\xb0\x80"),
]


def test_keys_that_break_the_rules(cache):
    probe = cache.probe()
    ids = itertools.count(1)
    for what, bad in BAD_KEYS:
        for op, args in [
            ("GET", [bad]),
            ("TTL", [bad]),
            ("PERSIST", [bad]),
            ("SET", [bad, EVIL]),
            ("SET", [bad, EVIL, {"ttl_ms": 5}]),
            ("EXPIRE", [bad, 5]),
            ("DEL", [K0, K1, bad]),  # the good keys before it must not be deleted
            ("MGET", [K0, bad]),
            ("MSET", [K0, EVIL, K1, EVIL, bad, EVIL]),  # nor the good pairs written
            ("MSET", [bad, EVIL, K0, EVIL]),
        ]:
            request_id = next(ids)
            message = request(request_id, op, *args)
            # A map as the last argument of DEL is read as its options map (w).
            code = BAD_ARGS if op == "DEL" and isinstance(bad, dict) else BAD_KEY
            probe.expect(message, code, request_id, what=f"{op} with key {what}")
    # The limits themselves are fine: 512 bytes, and bin holding valid UTF-8.
    longest = "€" * 170 + "ab"
    assert probe.expect(request(1, "GET", longest), OK, 1) == cache.values[longest]
    assert probe.expect(request(2, "GET", "K" * MAX_KEY), OK, 2) == cache.values["K" * MAX_KEY]
    assert probe.expect(request(3, "GET", "ключ".encode()), OK, 3) == cache.values["ключ"]
    cache.assert_intact()


def test_arguments_of_the_wrong_type(cache):
    probe = cache.probe()
    ids = itertools.count(1)
    bad_values = [1, -1, None, True, 1.5, [EVIL], {"v": EVIL}]
    for bad in bad_values:
        for op, args in [
            ("SET", [K0, bad]),
            ("SET", [K0, bad, {"ttl_ms": 5}]),
            ("MSET", [K0, EVIL, K1, bad]),
            ("PING", [bad]),
        ]:
            request_id = next(ids)
            probe.expect(request(request_id, op, *args), BAD_ARGS, request_id, what=f"{op} {bad}")
    # Checks run in argument order: the key first, then the value, then the rest.
    big = b"v" * (MAX_VALUE + 1)
    for args, code in [
        ([None, None], BAD_KEY),
        (["", big, "options"], BAD_KEY),
        (["x" * 513, big], BAD_KEY),
        ([K0, None, "options"], BAD_ARGS),
        ([K0, big, "options"], TOO_LARGE),
        ([K0, big, {"ttl_ms": 0}], TOO_LARGE),
    ]:
        request_id = next(ids)
        probe.expect(request(request_id, "SET", *args), code, request_id, what="argument order")
    request_id = next(ids)
    probe.expect(request(request_id, "EXPIRE", None, 0), BAD_KEY, request_id, what="EXPIRE order")
    cache.assert_intact()


def test_values_over_the_limit(cache):
    probe = cache.probe()
    big = b"v" * (MAX_VALUE + 1)
    for request_id, (op, args) in enumerate(
        [
            ("SET", [K0, big]),
            ("SET", [K0, raw_str(big)]),
            ("SET", [MISSING, big, {"nx": True}]),
            ("MSET", [K0, EVIL, K1, big]),
            ("PING", [big]),
            ("PING", [raw_str(big)]),
        ],
        start=1,
    ):
        probe.expect(request(request_id, op, *args), TOO_LARGE, request_id, what=f"{op} 8 MiB+1")
    # Exactly 8 MiB is fine (and a SET with xx on a missing key writes nothing).
    assert probe.expect(request(20, "SET", MISSING, big[:-1], {"xx": True}), OK, 20) is False
    assert probe.expect(request(21, "PING", big[:-1]), OK, 21) == big[:-1]
    cache.assert_intact()


def test_frames_over_the_request_limit(cache):
    probe = cache.probe()
    over = REQUEST_LIMIT + 1
    probe.expect(oversized_set(over, 77), TOO_LARGE, 77, what="SET frame of limit + 1")
    probe.expect(oversized_set(over, 2**64 - 1), TOO_LARGE, 2**64 - 1, what="id uint 64")
    probe.expect(oversized_set(CEILING, 78), TOO_LARGE, 78, what="SET frame at the ceiling")
    # The size check comes first, and the id comes from the first bytes when it can.
    probe.expect(padded_to(over, b""), TOO_LARGE, NIL, what="zeros")
    probe.expect(padded_to(over, b"\x02", b"\xff"), TOO_LARGE, NIL, what="wrong version")
    probe.expect(padded_to(over, b"\x01\x81"), TOO_LARGE, NIL, what="a map")
    probe.expect(padded_to(over, b"\x01\x91\x05"), TOO_LARGE, NIL, what="an array of 1")
    probe.expect(padded_to(over, b"\x01\x92\xa1x"), TOO_LARGE, NIL, what="a str id")
    probe.expect(padded_to(over, b"\x01\x92\xff"), TOO_LARGE, NIL, what="id -1")
    head = b"\x02" + array_header(2) + pack(79)
    probe.expect(padded_to(over, head), TOO_LARGE, 79, what="wrong version, readable id")
    # At the limit exactly the frame is read, so the next check decides.
    probe.expect(padded_to(REQUEST_LIMIT, b"\x02"), VERSION, NIL, what="limit, version 2")
    probe.expect(padded_to(REQUEST_LIMIT, b"\x01\xc1"), MALFORMED, NIL, what="limit, garbage")
    cache.assert_intact()


BUNDLE = b"\x00bundle"  # docs/protocol.md: the first frame of a bundle


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        msgpack.packb([]),
        msgpack.packb({"a": 1}),
        msgpack.packb([[]]),
        msgpack.packb([[b"id", 5]]),
        msgpack.packb([[b"x"] * MAX_FRAMES]),  # with the routing id, one frame too many
        msgpack.packb([[b"id", request(1, "SET", K0, EVIL)]] * 4097),  # over 4096 requests
        msgpack.packb([[b"id", request(1, "SET", K0, EVIL)]])[:-1],
    ],
    ids=[
        "empty",
        "never-used-byte",
        "no-messages",
        "a-map",
        "an-empty-message",
        "an-int-frame",
        "too-many-frames",
        "over-4096-messages",
        "truncated",
    ],
)
def test_malformed_bundles_get_one_error_and_run_nothing(cache, body):
    probe = cache.probe()
    probe.expect([BUNDLE, body], MALFORMED, NIL, what=f"bundle {body[:20]!r}")
    cache.assert_intact()


def test_a_bundle_runs_each_request_as_if_it_came_alone(cache):
    probe = cache.probe()
    messages = [
        [b"a", request(1, "GET", K0)],
        [b"b", b"garbage"],
        [b"c", request(3, "SET", K0, EVIL, {"nx": True})],  # K0 exists: NX does nothing
        [b"d", b"e", request(4, "FROB")],
    ]
    replies = probe.exchange([BUNDLE, msgpack.packb(messages)], "a bundle")
    assert len(replies) == 1 and replies[0][0] == BUNDLE, describe(replies[0])
    inner = envelope.unpack_bundle(replies[0][1], MAX_FRAMES)
    decoded = [decode(m, "bundled reply") for m in inner]
    assert [r.envelope for r in decoded] == [[b"a"], [b"b"], [b"c"], [b"d", b"e"]]
    assert [NAMES[r.code] for r in decoded] == ["OK", "VERSION", "OK", "UNKNOWN_OP"]
    assert decoded[0].result == cache.values[K0] and decoded[2].result is False
    probe.errors += 2
    cache.assert_intact()


def _wait_disconnected(probe: Probe, timeout: float) -> list[list[bytes]]:
    """Wait for the probe's connection to drop; return any reply that came meanwhile."""
    assert probe.monitor is not None
    poller = zmq.Poller()
    poller.register(probe.monitor, zmq.POLLIN)
    poller.register(probe.sock, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    replies = []
    while (left := deadline - time.monotonic()) > 0:
        ready = dict(poller.poll(left * 1000))
        if probe.sock in ready:
            replies.append(probe.sock.recv_multipart())
        if probe.monitor in ready:
            event = recv_monitor_message(probe.monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                return replies
    pytest.fail(f"the connection was not dropped within {timeout} s; replies {replies!r:.200}")


def test_a_frame_over_the_hard_ceiling_drops_the_connection(cache):
    old = cache.probe()
    assert old.expect(request(1, "PING"), OK, 1) == "PONG"
    old.monitor = old.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    deadline = time.monotonic() + TIMEOUT
    old.send(oversized_set(CEILING + 1, 5), deadline)
    replies = _wait_disconnected(old, TIMEOUT)
    assert replies == [], f"a reply came for a frame over the ceiling: {replies!r:.200}"
    # A new connection is served as before.
    new = cache.probe()
    assert new.expect(request(2, "PING"), OK, 2) == "PONG"
    new.expect(request(3, "FROB"), UNKNOWN_OP, 3)
    assert old.sock.poll(0, zmq.POLLIN) == 0, "a late reply came for the dropped frame"
    cache.assert_intact()


def test_integers_out_of_range(cache):
    probe = cache.probe()
    ids = itertools.count(1)
    bad_ttls: list[Any] = [
        0,
        -1,
        -(2**63),
        MAX_TTL + 1,
        2**63 - 1,
        2**64 - 1,
        Raw(b"\xd3" + struct.pack(">q", 0)),
        1.0,
        0.5,
        1e3,
        float("inf"),
        float("-inf"),
        float("nan"),
        Raw(b"\xca\x44\x7a\x00\x00"),  # float 32 of 1000.0
        True,
        False,
        None,
        "1000",
        b"1000",
        [1000],
        {"ms": 1000},
    ]
    for bad in bad_ttls:
        for op, args in [
            ("EXPIRE", [K0, bad]),
            ("EXPIRE", [K1, bad]),
            ("SET", [K1, EVIL, raw_map(("ttl_ms", bad))]),
            ("SET", [K0, EVIL, raw_map(("ttl_ms", bad), ("xx", True))]),
        ]:
            if op == "SET" and bad is None:
                continue  # a nil ttl_ms option means "no TTL": a valid SET
            request_id = next(ids)
            probe.expect(request(request_id, op, *args), BAD_ARGS, request_id, what=f"ttl {bad!r}")
    # The range's ends are accepted (on a missing key, so nothing is written).
    for ttl in (1, MAX_TTL, Raw(b"\xd3" + struct.pack(">q", MAX_TTL))):
        assert probe.expect(request(90, "EXPIRE", MISSING, ttl), OK, 90) is False
        message = request(91, "SET", MISSING, EVIL, raw_map(("ttl_ms", ttl), ("xx", True)))
        assert probe.expect(message, OK, 91) is False
    cache.assert_intact()


def test_set_options_that_break_the_rules(cache):
    probe = cache.probe()
    bad_options: list[tuple[str, Any]] = [
        ("unknown name", {"px": 5}),
        ("upper-case name", {"TTL_MS": 5}),
        ("name with a space", {"ttl_ms ": 5}),
        ("empty name", {"": True}),
        ("keepttl", {"keepttl": True}),
        ("bin unknown name", raw_map((b"bogus", True))),
        ("name not UTF-8", raw_map((raw_str(b"nx\xff"), True))),
        ("nx int", {"nx": 1}),
        ("nx zero", {"nx": 0}),
        ("nx str", {"nx": "true"}),
        ("nx nil", {"nx": None}),
        ("nx float", {"nx": 1.0}),
        ("xx array", {"xx": [True]}),
        ("xx map", {"xx": {}}),
        ("nx and xx", {"nx": True, "xx": True}),
        ("nx and xx and ttl", {"nx": True, "xx": True, "ttl_ms": 5}),
        ("four names", {"ttl_ms": 5, "nx": False, "xx": False, "bogus": 1}),
        ("a list", [["ttl_ms", 5]]),
        ("an empty list", []),
        ("a str", "nx"),
        ("an int", 5000),
        ("true", True),
        ("bin", b"\x81\xa2nx\xc3"),
        ("a float", 1.5),
    ]
    for request_id, (what, options) in enumerate(bad_options, start=1):
        for key in (K0, K1, MISSING):
            message = request(request_id, "SET", key, EVIL, options)
            probe.expect(message, BAD_ARGS, request_id, what=f"SET {key} options {what}")
    # Valid options that write nothing: xx on a missing key, nx on a present one.
    for request_id, (key, options) in enumerate(
        [
            (MISSING, {"xx": True}),
            (MISSING, raw_map((b"xx", True), (b"ttl_ms", None))),
            (K0, {"nx": True, "ttl_ms": 5}),
            (K1, {"nx": True, "xx": False}),
        ],
        start=100,
    ):
        assert probe.expect(request(request_id, "SET", key, EVIL, options), OK, request_id) is False
    cache.assert_intact()


def test_too_many_items(cache):
    probe = cache.probe()
    keys = list(cache.values) + [f"filler:{i}" for i in range(MAX_ITEMS + 1 - len(cache.values))]
    assert len(keys) == MAX_ITEMS + 1
    probe.expect(request(1, "MGET", *keys), TOO_LARGE, 1, what="MGET 10,001 keys")
    probe.expect(request(2, "DEL", *keys), TOO_LARGE, 2, what="DEL 10,001 keys")
    probe.expect(request(3, "DEL", *keys[:-1], ""), TOO_LARGE, 3, what="DEL 10,001, bad last")
    pairs = [item for key in keys for item in (key, EVIL)]
    probe.expect(request(4, "MSET", *pairs), TOO_LARGE, 4, what="MSET 10,001 pairs")
    probe.expect(request(5, "MGET", *keys, *keys), TOO_LARGE, 5, what="MGET 20,002 keys")
    # 10,000 is allowed.
    got = probe.expect(request(6, "MGET", *keys[:MAX_ITEMS]), OK, 6, what="MGET 10,000")
    assert got[: len(cache.values)] == list(cache.values.values())
    assert got[len(cache.values) :] == [None] * (MAX_ITEMS - len(cache.values))
    cache.assert_intact()


def test_extension_types(cache):
    probe = cache.probe()
    one = ext(1, b"\x01")
    cases: list[tuple[str, bytes]] = [
        ("as the body", frame(one)),
        ("as the id", request(one, "PING")),
        ("as the op", request(1, ext(1, b"PING"))),
        ("as a key", request(2, "GET", ext(1, K0.encode()))),
        ("as a DEL key", request(3, "DEL", K0, ext(1, K1.encode()))),
        ("as a value", request(4, "SET", K0, ext(1, EVIL))),
        ("as an MSET value", request(5, "MSET", K0, EVIL, K1, ext(1, EVIL))),
        ("as a ttl", request(6, "EXPIRE", K1, one)),
        ("as an option", request(7, "SET", K0, EVIL, {"ttl_ms": one})),
        ("as an option name", request(8, "SET", K0, EVIL, raw_map((one, True)))),
        ("nested", request(9, "PING", raw_array([1, 2], raw_array(one)))),
        ("timestamp", request(10, "SET", K0, EVIL, {"ttl_ms": msgpack.Timestamp(10**9)})),
        ("type -128", request(11, "PING", Raw(b"\xd4\x80x"))),
        ("type 127", request(12, "PING", ext(127, b"x" * 300))),
    ]
    for size in (1, 2, 4, 8, 16, 3, 255, 256, 70_000):  # fixext 1..16, ext 8/16/32
        cases.append((f"{size} bytes", request(20 + size, "PING", ext(5, b"e" * size))))
    empty = ext(5, b"")  # ext 8 of 0 bytes: under any max_ext_len, still an extension type
    cases += [
        ("of 0 bytes as the body", frame(empty)),
        ("of 0 bytes as the id", request(empty, "PING")),
        ("of 0 bytes as the op", request(13, empty)),
        ("of 0 bytes as a key", request(14, "GET", empty)),
        ("of 0 bytes as a value", request(15, "SET", K0, empty)),
        ("of 0 bytes as a PING message", request(16, "PING", empty)),
        ("of 0 bytes as a ttl", request(17, "EXPIRE", K0, empty)),
        ("of 0 bytes as nx", request(18, "SET", K0, EVIL, {"nx": empty})),
        ("of 0 bytes as an MGET key", request(19, "MGET", K0, empty)),
    ]
    for what, message in cases:
        probe.expect(message, MALFORMED, NIL, what=f"extension type {what}")
    cache.assert_intact()


def test_multipart_messages(cache):
    probe = cache.probe()
    write = request(1, "SET", K0, EVIL)
    # More than max_frames frames: MALFORMED with a nil id, without the envelope.
    for count in (MAX_FRAMES, MAX_FRAMES + 1, 100, 5_000):
        frames = [b"envelope %d" % i for i in range(count - 1)] + [write]
        probe.expect(frames, MALFORMED, NIL, what=f"{count} frames")
    probe.expect([b""] * 5_000, MALFORMED, NIL, what="5,000 empty frames")
    probe.expect([b"x" * 1024] * 5_000, MALFORMED, NIL, what="5,000 frames of 1 KiB")
    # Up to 14 envelope frames come back untouched, whatever the request.
    envelope = [b"", b"\x00\xff", b"e" * 1000] + [b"%d" % i for i in range(11)]
    assert len(envelope) == MAX_FRAMES - 2
    assert probe.expect([*envelope, request(2, "PING")], OK, 2, envelope=envelope) == "PONG"
    probe.expect([*envelope, b"\x02garbage"], VERSION, NIL, envelope=envelope)
    probe.expect([*envelope, b""], MALFORMED, NIL, envelope=envelope)
    probe.expect([b"", write[:-1]], MALFORMED, NIL, envelope=[b""], what="REQ-like, cut")
    probe.expect([b"", request(3, "FROB")], UNKNOWN_OP, 3, envelope=[b""], what="REQ-like")
    probe.expect([write, b"\x01\xc1"], MALFORMED, NIL, envelope=[write], what="write as envelope")
    cache.assert_intact()


def _flood(rng: random.Random, count: int) -> tuple[list[Any], Counter]:
    """``count`` garbage messages and the (code, id) replies they must get."""
    messages: list[Any] = []
    expected: Counter = Counter()
    for i in range(count):
        kind = i % 10
        noise = rng.randbytes(rng.randrange(0, 48))
        if kind == 0:
            message, reply = bytes([rng.choice([0, 2, 0xFF])]) + noise, (VERSION, NIL)
        elif kind == 1:
            message, reply = b"", (MALFORMED, NIL)
        elif kind == 2:
            message, reply = b"\x01\xc1" + noise, (MALFORMED, NIL)
        elif kind == 3:
            message, reply = request(i, "NOPE", K0), (UNKNOWN_OP, i)
        elif kind == 4:
            message, reply = request(i, "SET", "", EVIL), (BAD_KEY, i)
        elif kind == 5:
            message, reply = request(i, "SET", K0, EVIL)[: rng.randrange(2, 10)], (MALFORMED, NIL)
        elif kind == 6:
            message, reply = request(i, "MSET", K0, EVIL, K1), (BAD_ARGS, i)
        elif kind == 7:
            message = [noise] * MAX_FRAMES + [request(i, "DEL", K0)]
            reply = (MALFORMED, NIL)
        elif kind == 8:
            message, reply = request(i, "EXPIRE", K0, 0), (BAD_ARGS, i)
        else:
            message, reply = request(i, "PERSIST", raw_str(b"\xff" + noise)), (BAD_KEY, i)
        messages.append(message)
        expected[reply] += 1
    return messages, expected


def test_a_flood_of_ten_thousand_garbage_frames(cache):
    probe = cache.probe()
    messages, expected = _flood(random.Random(7), 10_000)
    deadline = time.monotonic() + TIMEOUT
    for message in messages:
        probe.send(message, deadline)
    # Another client is served while the flood is being worked through.
    with cache.node.client() as client:
        assert client.ping() == "PONG"
    replies = probe.exchange_many([], "the flood", timeout=30)
    got = Counter()
    for message in replies:
        reply = decode(message, "flood reply")
        assert len(message) == 1, f"envelope on a flood reply: {message[:-1]!r:.200}"
        got[(reply.code, reply.id)] += 1
    assert len(replies) == len(messages)
    assert got == expected, (got - expected, expected - got)
    probe.errors += len(replies)
    cache.assert_intact()


def test_clients_that_vanish_before_their_replies(cache):
    rng = random.Random(11)
    deadline = time.monotonic() + TIMEOUT
    for round_ in range(20):
        probe = Probe(cache.endpoint)
        try:
            messages, _ = _flood(rng, 200)
            for message in messages:
                probe.send(message, deadline)
            if round_ % 5 == 0:
                probe.send(oversized_set(REQUEST_LIMIT + 1, 1), deadline)
        finally:
            probe.close()  # with replies still on their way
    survivor = cache.probe()
    survivor.expect(request(1, "FROB"), UNKNOWN_OP, 1)
    cache.assert_intact(exact=False)


# --------------------------------------------------------------------------- below ZeroMQ

ZMTP_GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32)


def zmtp_ready(socket_type: bytes = b"DEALER") -> bytes:
    body = b"\x05READY\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return bytes([0x04, len(body)]) + body


def zmtp_frame(data: bytes) -> bytes:
    if len(data) < 256:
        return bytes([0x00, len(data)]) + data
    return b"\x02" + struct.pack(">Q", len(data)) + data


def _read_until(conn: socket.socket, wanted: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = b""
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {wanted!r} from the node within {timeout} s; saw {seen[-200:]!r}")
        conn.settimeout(left)
        data = conn.recv(65536)
        assert data, f"the node closed the connection; saw {seen[-200:]!r}"
        seen += data


def zmtp_connect(address: tuple[str, int]) -> socket.socket:
    """A hand-made ZMTP 3.0 DEALER peer, past the handshake (libzmq wants its READY out first)."""
    conn = socket.create_connection(address, timeout=TIMEOUT)
    try:
        conn.sendall(ZMTP_GREETING + zmtp_ready())
        _read_until(conn, b"\x05READY", TIMEOUT)
    except BaseException:
        conn.close()
        raise
    return conn


def _closed_by_peer(conn: socket.socket, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        conn.settimeout(left)
        try:
            if not conn.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_garbage_below_the_zeromq_layer(cache):
    url = urlsplit(cache.endpoint)
    address = (str(url.hostname), int(url.port or 0))
    rng = random.Random(3)
    probe = cache.probe()
    ping = request(9, "PING", b"zmtp is fine")
    with (
        zmtp_connect(address) as peer,
        zmtp_connect(address) as stalled_frame,
        socket.create_connection(address, timeout=TIMEOUT) as stalled_greeting,
        socket.create_connection(address, timeout=TIMEOUT) as noise,
        socket.create_connection(address, timeout=TIMEOUT) as bad_handshake,
    ):
        # The hand-made peer is served, so what follows tests the node, not the peer.
        peer.sendall(zmtp_frame(ping))
        _read_until(peer, b"\x01" + msgpack.packb([9, 0, b"zmtp is fine"]), TIMEOUT)
        # A frame header over the ceiling drops that connection before any byte of it.
        peer.sendall(b"\x02" + struct.pack(">Q", 2**62))
        assert _closed_by_peer(peer, TIMEOUT), "a 2**62-byte frame header was accepted"
        # A broken handshake is refused.
        bad_handshake.sendall(ZMTP_GREETING + b"\x04\x06\x05HELLO" + zmtp_frame(ping))
        assert _closed_by_peer(bad_handshake, TIMEOUT), "a HELLO instead of READY was accepted"
        # Peers that stall mid-greeting or mid-frame, or send noise, hold up nobody.
        stalled_greeting.sendall(ZMTP_GREETING[:5])
        stalled_frame.sendall(b"\x02" + struct.pack(">Q", 2**20) + b"\x01" * 1000)
        noise.sendall(rng.randbytes(4096))
        probe.expect(request(1, "FROB"), UNKNOWN_OP, 1, what="while others stall")
        with cache.node.client() as client:
            assert client.ping() == "PONG"
    cache.assert_intact(exact=False)


# --------------------------------------------------------------------------- known bugs


def _mismatches(probe: Probe, cases: list[tuple[str, bytes, int, int | None]]) -> list[str]:
    found = []
    for what, message, code, request_id in cases:
        reply = probe.call(message, what)
        if (reply.code, reply.id) != (code, request_id):
            found.append(
                f"{what}: doc says {NAMES[code]} id {request_id}, node replied "
                f"{NAMES.get(reply.code, reply.code)} id {reply.id} ({reply.result!r:.60})"
            )
    return found


def test_maps_with_non_string_keys_get_the_op_error_with_the_id(cache):
    """Doc: an unknown SET option name is BAD_ARGS, a non-string key BAD_KEY, with the id."""
    probe = cache.probe()
    cases = [
        ("SET option named 1", request(1, "SET", K0, EVIL, {1: True}), BAD_ARGS, 1),
        ("SET option named nil", request(2, "SET", K0, EVIL, {None: True}), BAD_ARGS, 2),
        ("SET option named true", request(3, "SET", K0, EVIL, {True: 5}), BAD_ARGS, 3),
        ("SET option named 1.5", request(4, "SET", K0, EVIL, {1.5: True}), BAD_ARGS, 4),
        ("SET option named [1]", request(5, "SET", K0, EVIL, raw_map(([1], True))), BAD_ARGS, 5),
        ("GET key {1: 2}", request(6, "GET", {1: 2}), BAD_KEY, 6),
        ("SET value {1: 2}", request(7, "SET", K0, {1: 2}), BAD_ARGS, 7),
        ("PING message {nil: 1}", request(8, "PING", {None: 1}), BAD_ARGS, 8),
    ]
    found = _mismatches(probe, cases)
    cache.assert_intact()
    if found:
        pytest.fail(
            "BUG in mesh/core/wire.py decode_request (or the doc): msgpack's default "
            "strict_map_key=True rejects valid msgpack maps with non-string keys while "
            "decoding, so they get MALFORMED with a nil id instead of the op's error:\n  "
            + "\n  ".join(found)
        )


def test_set_options_with_repeated_names_are_rejected(cache):
    """Doc, SET errors: "A map of more than 3 entries: BAD_ARGS"."""
    probe = cache.probe()
    xx = ("xx", True)
    four = raw_map(xx, xx, xx, xx)
    four_ttl = raw_map(("ttl_ms", 5), xx, ("ttl_ms", 5), xx)
    many = raw_map(*[xx] * 1000)
    cases = [
        ("4 entries, xx 4 times", request(1, "SET", MISSING, EVIL, four), BAD_ARGS, 1),
        ("4 entries, ttl_ms and xx twice", request(2, "SET", MISSING, EVIL, four_ttl), BAD_ARGS, 2),
        ("1000 entries, xx each time", request(3, "SET", MISSING, EVIL, many), BAD_ARGS, 3),
    ]
    found = _mismatches(probe, cases)  # xx on a missing key: nothing is written either way
    cache.assert_intact()
    if found:
        pytest.fail(
            "BUG in mesh/core/wire.py _v_set: the 3-entry limit is checked on the decoded dict, "
            "after repeated names collapsed, so a wire map of more entries is executed:\n  "
            + "\n  ".join(found)
        )
