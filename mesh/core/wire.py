"""Every client message on the wire: layout, encode/decode, validation, error codes.

A request or reply is ONE ZeroMQ frame (the last frame of a multipart message;
frames before it are routing envelope, echoed back untouched)::

    +---------+------------------------------+
    | version | msgpack body                 |
    | 1 byte  | (rest of the frame)          |
    +---------+------------------------------+

    version  0x01
    request  [id: uint64, op: str, arg...]          an msgpack array
    reply    [id: uint64 | nil, code: uint, result]  an msgpack array

``code`` 0 means success and ``result`` is the op's result; any other code is
an error and ``result`` is a human-readable reason (str).  ``id`` is chosen by
the client and echoed back so that clients may pipeline; it is nil in the reply
when the request was too broken to read an id from.

Ops (keys are msgpack str, UTF-8, 1..max_key_bytes bytes; values are msgpack
bin, or str taken as its UTF-8 bytes)::

    PING [message]                  -> "PONG", or the message echoed
    GET key                         -> bin | nil
    SET key value [options]         -> true (set) | false (NX/XX not met)
        options: map, any of {"ttl_ms": uint >= 1, "nx": bool, "xx": bool, "w": W}
    DEL key [key...]                -> uint: how many live keys were deleted
    EXPIRE key ttl_ms               -> true | false (no such key)
    PERSIST key                     -> true (a TTL was removed) | false
    TTL key                         -> int ms left; -1 no TTL; -2 no such key
    MGET key [key...]               -> [bin | nil, ...]
    MSET key value [key value...]   -> true
    GETMETA key                     -> [value: bin, ttl_ms: int, updated_ms: uint] | nil
    STATS                           -> map of str to int/str/map (see docs/protocol.md)
    HEALTH                          -> {"node_id": str, "state": str}  (cheap; for balancers)
    CLUSTER                         -> {"nodes": [{node_id, state, ...}, ...]}
    INCRBY key delta [options]      -> int: the new value (delta: int64; a counter, see
                                       mesh.core.counters); NOT_INTEGER error if the key holds
                                       a value that is not a base-10 int64, or on overflow

    DEL, EXPIRE, PERSIST, MSET and INCRBY take an optional trailing options map {"w": W}.
    W (write acknowledgement): a node count 1..64, "quorum" or "all"; the reply
    comes once that many nodes have logged the write, or is a NOT_ACKNOWLEDGED
    error saying how many had.

Limits are checked before decoding (the frame size) and while decoding (the
msgpack reader's own length limits), so a hostile frame costs at most one
bounded allocation.  The full description, with a request and reply shown
byte by byte, is ``docs/protocol.md``.  The frames a balancer adds around a
request or reply (deadline frames, bundles) are :mod:`mesh.core.envelope`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import msgpack

from mesh.core import bigbin, counters, wire_keyspace
from mesh.core.acks import parse_w
from mesh.core.errors import (
    BadRequest,
    DeadlinePassed,
    InternalError,
    NoSpace,
    NotInteger,
    NotReady,
    ProtocolError,
    ServerError,
    TooLarge,
    WriteNotAcknowledged,
)
from mesh.core.limits import Limits

VERSION = 1
VERSION_BYTE = bytes([VERSION])

# Reply codes.  0 is success; the rest are errors with a reason string.
OK = 0
E_MALFORMED = 1  # not a version byte + msgpack array, or a bad id
E_VERSION = 2  # unknown version byte
E_UNKNOWN_OP = 3  # op name not in the table above
E_BAD_ARGS = 4  # wrong number, type or range of arguments
E_BAD_KEY = 5  # empty, too long or not UTF-8
E_TOO_LARGE = 6  # value, frame or item count over its limit
E_NOT_READY = 8  # the node cannot serve yet
E_NOT_ACKNOWLEDGED = 9  # requested write acknowledgement not met
E_DEADLINE = 10  # a balancer's deadline passed before the node ran the request
E_NO_SPACE = 11  # the node's disk is full: the write was not applied
E_INTERNAL = 99  # a server bug; the request may or may not have been applied

ERROR_NAMES = {
    E_MALFORMED: "MALFORMED",
    E_VERSION: "VERSION",
    E_UNKNOWN_OP: "UNKNOWN_OP",
    E_BAD_ARGS: "BAD_ARGS",
    E_BAD_KEY: "BAD_KEY",
    E_TOO_LARGE: "TOO_LARGE",
    E_NOT_READY: "NOT_READY",
    E_NOT_ACKNOWLEDGED: "NOT_ACKNOWLEDGED",
    E_DEADLINE: "DEADLINE",
    E_NO_SPACE: "NO_SPACE",
    E_INTERNAL: "INTERNAL",
}

_EXCEPTIONS: dict[int, type[ServerError]] = {
    E_MALFORMED: BadRequest,
    E_VERSION: BadRequest,
    E_UNKNOWN_OP: BadRequest,
    E_BAD_ARGS: BadRequest,
    E_BAD_KEY: BadRequest,
    E_TOO_LARGE: TooLarge,
    E_NOT_READY: NotReady,
    E_NOT_ACKNOWLEDGED: WriteNotAcknowledged,
    E_DEADLINE: DeadlinePassed,
    E_NO_SPACE: NoSpace,
    E_INTERNAL: InternalError,
}

MAX_ID = 2**64 - 1
#: Largest TTL accepted, in ms (about 4,400 years): keeps deadlines in int64.
MAX_TTL_MS = 2**47
WRITE_OPS = frozenset({"SET", "DEL", "EXPIRE", "PERSIST", "MSET"})
SET_OPTIONS = frozenset({"ttl_ms", "nx", "xx", "w"})
#: Write ops (SET aside) whose last argument may be an options map, with the
#: fewest arguments they take before it: a map in a key's place stays a key.
_MIN_ARGS = {"DEL": 1, "EXPIRE": 2, "PERSIST": 1, "MSET": 2}
#: Ops whose validator reads ``w`` from its own options map (the last item of args).
_W_IN_ARGS = frozenset({"SET", "SETX", "GETEX"})

_packer = msgpack.Packer(use_bin_type=True)


class Request:
    """A decoded, validated request: ``id``, ``op`` and op-specific ``args``.

    ``args`` after validation:
        PING (message: bytes | None); GET/PERSIST/TTL (key,); SET (key, value,
        ttl_ms: int, nx: bool, xx: bool); DEL/MGET (keys: list[str],);
        EXPIRE (key, ttl_ms); MSET (pairs: list[tuple[str, bytes]],); STATS ().
    ``w`` is the write acknowledgement asked for (None: the node's default),
    an int node count or ``"quorum"`` / ``"all"``.
    """

    __slots__ = ("id", "op", "args", "w")

    def __init__(self, request_id: int, op: str, args: tuple, w: int | str | None = None) -> None:
        self.id = request_id
        self.op = op
        self.args = args
        self.w = w

    def __repr__(self) -> str:
        return f"Request(id={self.id}, op={self.op}, args={self.args!r})"


# --------------------------------------------------------------------------- encoding


def encode_request(request_id: int, op: str, *args: Any) -> bytes:
    """Encode a request frame; raises ProtocolError for values msgpack cannot carry.

    A SET of a large value joins it between the msgpack of the fields around
    it (:mod:`mesh.core.bigbin`): the same bytes, one copy instead of three."""
    try:
        if len(args) > 1 and type(value := args[1]) is bytes and len(value) >= bigbin.BIG_VALUE:
            head, _, tail = bigbin.parts((request_id, op, args[0]), value, args[2:])
            return b"".join((VERSION_BYTE, head, value, tail))
        return VERSION_BYTE + _packer.pack([request_id, op, *args])
    except (OverflowError, TypeError, ValueError) as exc:
        raise ProtocolError(E_BAD_ARGS, f"cannot encode {op}: {exc}", request_id) from exc


def encode_reply(request_id: int | None, result: Any) -> bytes:
    """Encode a success reply frame."""
    return VERSION_BYTE + _packer.pack([request_id, OK, result])


def encode_error(request_id: int | None, code: int, reason: str) -> bytes:
    """Encode an error reply frame."""
    return VERSION_BYTE + _packer.pack([request_id, code, reason])


def decode_reply(frame: bytes) -> tuple[int | None, int, Any]:
    """Decode a reply frame into ``(id, code, result)``; raises ProtocolError."""
    if len(frame) < 2 or frame[0] != VERSION:
        raise ProtocolError(E_VERSION, "reply has no version 1 byte")
    try:
        body = msgpack.unpackb(frame[1:], raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(E_MALFORMED, f"undecodable reply: {exc}") from exc
    if not isinstance(body, list) or len(body) != 3 or not isinstance(body[1], int):
        raise ProtocolError(E_MALFORMED, "reply is not [id, code, result]")
    return body[0], body[1], body[2]


def error_for(code: int, reason: str) -> ServerError:
    """The typed exception for an error reply."""
    return _EXCEPTIONS.get(code, ServerError)(code, reason)


# --------------------------------------------------------------------------- decoding


def decode_request(frame: bytes, limits: Limits) -> Request:
    """Decode and validate one request frame.

    Raises ProtocolError (with the request id when it could be read) for every
    problem; never any other exception.
    """
    size, request_bytes = len(frame), limits.request_bytes
    if size > request_bytes:
        raise ProtocolError(
            E_TOO_LARGE, f"request of {size} bytes is over {request_bytes}", peek_id(frame)
        )
    if not frame:
        raise ProtocolError(E_MALFORMED, "empty frame")
    if frame[0] != VERSION:
        raise ProtocolError(E_VERSION, f"unsupported version {frame[0]}, this node speaks 1")
    try:
        body = msgpack.unpackb(
            memoryview(frame)[1:],
            raw=True,
            max_bin_len=request_bytes,
            max_str_len=request_bytes,
            # Every element takes at least one byte, so the frame's length bounds
            # any allocation; item counts are checked per op, with the request id.
            max_array_len=len(frame),
            max_map_len=len(frame) // 2,
            max_ext_len=0,
            ext_hook=_reject_extension,
            # Maps stay lists of pairs, so repeated or non-string names are seen
            # by the op's checks (and reported with the request id).
            strict_map_key=False,
            object_pairs_hook=_Pairs,
        )
    except Exception as exc:  # msgpack raises ValueError, TypeError, StackError, ...
        raise ProtocolError(E_MALFORMED, f"undecodable msgpack: {exc}") from exc
    request = _decode_common(body, limits)
    return request if request is not None else _decode_any(body, limits)


def _decode_common(body: Any, limits: Limits) -> Request | None:
    """The two requests most traffic is, well-formed: ``[id, "GET", key]`` and
    ``[id, "SET", key, value]``, checked inline; None for anything else, which
    :func:`_decode_any` then validates in full (and reports, when wrong).
    """
    if type(body) is not list or not 3 <= len(body) <= 4:
        return None
    request_id, op, key = body[0], body[1], body[2]
    if (
        type(request_id) is not int
        or not 0 <= request_id <= MAX_ID
        or type(key) is not bytes
        or not 0 < len(key) <= limits.max_key_bytes
    ):
        return None
    try:
        name = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(body) == 3:
        return Request(request_id, "GET", (name,)) if op == b"GET" else None
    value = body[3]
    if op != b"SET" or type(value) is not bytes or len(value) > limits.max_value_bytes:
        return None
    return Request(request_id, "SET", (name, value, 0, False, False))


def _decode_any(body: Any, limits: Limits) -> Request:
    if not isinstance(body, list) or len(body) < 2:
        raise ProtocolError(E_MALFORMED, "a request is an array [id, op, arg...]")
    request_id, op = body[0], body[1]
    if type(request_id) is not int or not 0 <= request_id <= MAX_ID:
        raise ProtocolError(E_MALFORMED, "request id must be an unsigned 64-bit integer")
    if not isinstance(op, bytes):
        raise ProtocolError(E_BAD_ARGS, "op must be a string", request_id)
    op_name = op.decode("ascii", "replace").upper()
    validator = _VALIDATORS.get(op_name)
    if validator is None:
        raise ProtocolError(E_UNKNOWN_OP, f"unknown op {op_name[:32]!r}", request_id)
    rest, w = body[2:], None
    try:
        if len(rest) > _MIN_ARGS.get(op_name, len(rest)) and isinstance(rest[-1], _Pairs):
            w = _write_options(rest.pop())
        args = validator(rest, limits)
        if op_name in _W_IN_ARGS:  # SET and the key-space ops SETX, GETEX
            args, w = args[:-1], args[-1]
    except ProtocolError as exc:
        exc.request_id = request_id
        raise
    return Request(request_id, op_name, args, w)


class _Pairs(list):
    """A decoded msgpack map, kept as its list of ``(name, value)`` pairs."""


def _reject_extension(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the protocol")


def peek_id(frame: bytes) -> int | None:
    """The request id of a frame too large to decode whole, read from its first bytes."""
    try:
        unpacker = msgpack.Unpacker(max_buffer_size=64)
        unpacker.feed(frame[1:17])
        if unpacker.read_array_header() < 2:
            return None
        request_id = unpacker.unpack()
    except Exception:  # any malformed prefix simply has no readable id
        return None
    return request_id if type(request_id) is int and 0 <= request_id <= MAX_ID else None


def _fail(code: int, reason: str) -> ProtocolError:
    return ProtocolError(code, reason)


def _arity(args: list, low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise _fail(E_BAD_ARGS, f"usage: {usage}")


def _key(raw: Any, limits: Limits) -> str:
    if not isinstance(raw, bytes):
        raise _fail(E_BAD_KEY, "key must be a string")
    if not 1 <= len(raw) <= limits.max_key_bytes:
        raise _fail(E_BAD_KEY, f"key must be 1..{limits.max_key_bytes} bytes, not {len(raw)}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(E_BAD_KEY, "key is not valid UTF-8") from exc


def _value(raw: Any, limits: Limits) -> bytes:
    if not isinstance(raw, bytes):
        raise _fail(E_BAD_ARGS, "value must be bytes or a string")
    if len(raw) > limits.max_value_bytes:
        raise _fail(E_TOO_LARGE, f"value of {len(raw)} bytes is over {limits.max_value_bytes}")
    return raw


def _ttl(raw: Any) -> int:
    if type(raw) is not int or not 1 <= raw <= MAX_TTL_MS:
        raise _fail(E_BAD_ARGS, f"ttl_ms must be an integer in 1..{MAX_TTL_MS}")
    return raw


def _keys(raw: list, limits: Limits, usage: str) -> list[str]:
    if not raw:
        raise _fail(E_BAD_ARGS, f"usage: {usage}")
    if len(raw) > limits.max_items:
        raise _fail(E_TOO_LARGE, f"{len(raw)} keys is over the limit of {limits.max_items}")
    return [_key(k, limits) for k in raw]


def _v_ping(args: list, limits: Limits) -> tuple:
    _arity(args, 0, 1, "PING [message]")
    return (_value(args[0], limits),) if args else (None,)


def _v_key(usage: str) -> Callable[[list, Limits], tuple]:
    def validate(args: list, limits: Limits) -> tuple:
        _arity(args, 1, 1, usage)
        return (_key(args[0], limits),)

    return validate


def _v_set(args: list, limits: Limits) -> tuple:
    _arity(args, 2, 3, "SET key value [{ttl_ms, nx, xx, w}]")
    key, value = _key(args[0], limits), _value(args[1], limits)
    ttl_ms, nx, xx, w = 0, False, False, None
    if len(args) == 3 and args[2] is not None:
        options = args[2]
        if not isinstance(options, _Pairs) or len(options) > len(SET_OPTIONS):
            raise _fail(E_BAD_ARGS, "SET options must be a map of ttl_ms, nx, xx, w")
        if len({name for name, _ in options if isinstance(name, bytes)}) != len(options):
            raise _fail(E_BAD_ARGS, "SET option names must be distinct strings")
        for name, option in options:
            if name == b"ttl_ms":
                ttl_ms = _ttl(option) if option is not None else 0
            elif name in (b"nx", b"xx"):
                if not isinstance(option, bool):
                    raise _fail(E_BAD_ARGS, f"SET option {name.decode()} must be a boolean")
                nx, xx = (option, xx) if name == b"nx" else (nx, option)
            elif name == b"w":
                w = _w(option)
            else:
                shown = name.decode("utf-8", "replace")[:32] if isinstance(name, bytes) else name
                raise _fail(E_BAD_ARGS, f"unknown SET option {shown!r}")
        if nx and xx:
            raise _fail(E_BAD_ARGS, "SET options nx and xx exclude each other")
    return (key, value, ttl_ms, nx, xx, w)


def _w(raw: Any) -> int | str:
    try:
        return parse_w(raw)
    except ValueError as exc:
        raise _fail(E_BAD_ARGS, str(exc)) from None


def _write_options(options: _Pairs) -> int | str | None:
    """The trailing options map of DEL, EXPIRE, PERSIST and MSET: only ``w``."""
    if len(options) != 1 or options[0][0] != b"w":
        raise _fail(E_BAD_ARGS, "the only option of this op is w")
    return _w(options[0][1])


def _v_keys(usage: str) -> Callable[[list, Limits], tuple]:
    def validate(args: list, limits: Limits) -> tuple:
        return (_keys(args, limits, usage),)

    return validate


def _v_expire(args: list, limits: Limits) -> tuple:
    _arity(args, 2, 2, "EXPIRE key ttl_ms")
    return (_key(args[0], limits), _ttl(args[1]))


def _v_mset(args: list, limits: Limits) -> tuple:
    if not args or len(args) % 2:
        raise _fail(E_BAD_ARGS, "usage: MSET key value [key value ...]")
    if len(args) // 2 > limits.max_items:
        raise _fail(E_TOO_LARGE, f"{len(args) // 2} pairs is over the limit of {limits.max_items}")
    pairs = [(_key(args[i], limits), _value(args[i + 1], limits)) for i in range(0, len(args), 2)]
    return (pairs,)


def _v_none(usage: str) -> Callable[[list, Limits], tuple]:
    def validate(args: list, limits: Limits) -> tuple:
        _arity(args, 0, 0, usage)
        return ()

    return validate


_VALIDATORS: dict[str, Callable[[list, Limits], tuple]] = {
    "PING": _v_ping,
    "GET": _v_key("GET key"),
    "SET": _v_set,
    "DEL": _v_keys("DEL key [key ...]"),
    "EXPIRE": _v_expire,
    "PERSIST": _v_key("PERSIST key"),
    "TTL": _v_key("TTL key"),
    "MGET": _v_keys("MGET key [key ...]"),
    "MSET": _v_mset,
    "GETMETA": _v_key("GETMETA key"),
    "STATS": _v_none("STATS"),
    "HEALTH": _v_none("HEALTH"),
    "CLUSTER": _v_none("CLUSTER"),
}

# The key-space ops of the RESP front (EXISTS, DBSIZE, SCAN, KEYS, FLUSHALL, GETDEL,
# SETX, GETEX): mesh.core.wire_keyspace validates them with this module's helpers.
_VALIDATORS.update(wire_keyspace.validators(sys.modules[__name__]))
_MIN_ARGS.update(wire_keyspace.KEYSPACE_MIN_ARGS)
MAX_SCAN_COUNT = wire_keyspace.MAX_SCAN_COUNT
WRITE_OPS = WRITE_OPS | wire_keyspace.KEYSPACE_WRITE_OPS

#: Every op this protocol version knows.
OPS = frozenset(_VALIDATORS)


# ----------------------------------------------------------------- counters (issue 18)

E_NOT_INTEGER = counters.E_NOT_INTEGER  # INCRBY on a value not a base-10 int64, or overflow
ERROR_NAMES[E_NOT_INTEGER] = "NOT_INTEGER"
_EXCEPTIONS[E_NOT_INTEGER] = NotInteger
WRITE_OPS = WRITE_OPS | {"INCRBY"}
_MIN_ARGS["INCRBY"] = 2


def _v_incrby(args: list, limits: Limits) -> tuple:
    _arity(args, 2, 2, "INCRBY key delta [{w}]")
    delta = args[1]
    if type(delta) is not int or not counters.INT64_MIN <= delta <= counters.INT64_MAX:
        raise _fail(E_BAD_ARGS, "INCRBY delta must be a 64-bit signed integer")
    return (_key(args[0], limits), delta)


_VALIDATORS["INCRBY"] = _v_incrby
OPS = frozenset(_VALIDATORS)
