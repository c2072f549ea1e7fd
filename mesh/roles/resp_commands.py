"""The RESP data commands: each turned into node requests and its reply encoded.

A command becomes a :data:`Plan`: the wire requests (op, args) it needs and a
function turning their replies into the RESP reply.  The server runs the
requests of every command of a pipeline in one go, in order, and answers in
order.  Argument errors are found here, before anything is sent, with
Redis's own error texts (:class:`mesh.roles.resp_codec.RespError`).

INCR, DECR, INCRBY and DECRBY go to the ``INCRBY`` op (a counter that loses
no increment, see docs/resp.md); SET with options, GETEX and GETDEL to the
key-space ops of :mod:`mesh.core.keyspace`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.core import wire
from mesh.core.clock import wall_ms
from mesh.core.wire import MAX_TTL_MS
from mesh.roles.resp_codec import (
    INT64_MIN,
    NIL,
    OK,
    SYNTAX,
    RespError,
    array,
    bulk,
    bulks,
    integer,
    simple,
    text,
    to_int,
    wire_error,
)

Reply = tuple[int, Any]
Requests = list[tuple[str, tuple]]
Plan = tuple[Requests, Callable[[list[Reply]], bytes]]
#: The key SET with ``w`` for WAIT: a 1 ms TTL, so it is gone at once.
WAIT_KEY = "pycache:wait"


def key(arg: bytes) -> str:
    """A key argument; PyCache keys are UTF-8 (a RespError otherwise)."""
    try:
        return arg.decode("utf-8")
    except UnicodeDecodeError:
        raise RespError("ERR invalid key: PyCache keys are UTF-8 text") from None


def _one(op: str, args: tuple, convert: Callable[[Any], bytes]) -> Plan:
    def finish(replies: list[Reply]) -> bytes:
        code, result = replies[0]
        return convert(result) if code == wire.OK else wire_error(code, result)

    return [(op, args)], finish


def _ok(result: Any) -> bytes:
    return OK


def _int(result: Any) -> bytes:
    return integer(int(result))


def _set_ttl(arg: bytes, name: str, unit: int) -> int:
    n = to_int(arg)
    if n <= 0 or n * unit > MAX_TTL_MS:
        raise RespError(f"ERR invalid expire time in '{name}' command")
    return n * unit


# ------------------------------------------------------------------ strings


def get(args: list[bytes]) -> Plan:
    """GET key."""
    return _one("GET", (key(args[0]),), bulk)


def _set_options(args: list[bytes]) -> tuple[dict[str, Any], bool, tuple[bytes | None, bytes]]:
    """SET's options as Redis reads them: ``(options, GET?, (EX|PX|EXAT|PXAT, its
    number unread))``.  An option may repeat (the last number wins); NX with XX, or
    two kinds of expiry, is a syntax error, found before any number is read."""
    options: dict[str, Any] = {}
    want_get, kind, raw = False, None, b""
    i = 2
    while i < len(args):
        word = args[i].upper()
        if word == b"NX" and "xx" not in options:
            options["nx"] = True
        elif word == b"XX" and "nx" not in options:
            options["xx"] = True
        elif word == b"GET":
            want_get = True
        elif word == b"KEEPTTL" and kind is None:
            options["keepttl"] = True
        elif (
            word in (b"EX", b"PX", b"EXAT", b"PXAT")
            and "keepttl" not in options
            and kind in (None, word)
            and i + 1 < len(args)
        ):
            kind, raw = word, args[i + 1]
            i += 1
        else:
            raise RespError(SYNTAX)
        i += 1
    return options, want_get, (kind, raw)


def set_(args: list[bytes]) -> Plan:
    """SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ts|KEEPTTL]."""
    k, value = key(args[0]), args[1]
    if len(args) == 2:
        return _one("SET", (k, value), _ok)
    options, want_get, (kind, raw) = _set_options(args)
    if kind is not None:
        n = to_int(raw)
        unit = 1000 if kind in (b"EX", b"EXAT") else 1
        if n <= 0 or n * unit > (2**62 if kind.endswith(b"AT") else MAX_TTL_MS):
            raise RespError("ERR invalid expire time in 'set' command")
        options["at_ms" if kind.endswith(b"AT") else "ttl_ms"] = n * unit

    def convert(result: Any) -> bytes:
        stored, old = result
        if want_get:
            return bulk(old)
        return OK if stored else NIL

    return _one("SETX", (k, value, options), convert)


def setnx(args: list[bytes]) -> Plan:
    """SETNX key value."""
    return _one("SET", (key(args[0]), args[1], {"nx": True}), _int)


def setex(args: list[bytes], name: str = "setex", unit: int = 1000) -> Plan:
    """SETEX key seconds value."""
    ttl = _set_ttl(args[1], name, unit)
    return _one("SET", (key(args[0]), args[2], {"ttl_ms": ttl}), _ok)


def psetex(args: list[bytes]) -> Plan:
    """PSETEX key ms value."""
    return setex(args, "psetex", 1)


def getdel(args: list[bytes]) -> Plan:
    """GETDEL key."""
    return _one("GETDEL", (key(args[0]),), bulk)


def getex(args: list[bytes]) -> Plan:
    """GETEX key [EX s|PX ms|EXAT ts|PXAT ts|PERSIST]."""
    options: dict[str, Any] = {}
    rest = [a.upper() for a in args[1:]]
    if rest == [b"PERSIST"]:
        options["persist"] = True
    elif len(rest) == 2 and rest[0] in (b"EX", b"PX", b"EXAT", b"PXAT"):
        unit = 1000 if rest[0] in (b"EX", b"EXAT") else 1
        n = to_int(args[2])
        if n <= 0 or n * unit > (2**62 if rest[0].endswith(b"AT") else MAX_TTL_MS):
            raise RespError("ERR invalid expire time in 'getex' command")
        options["at_ms" if rest[0].endswith(b"AT") else "ttl_ms"] = n * unit
    elif rest:
        raise RespError(SYNTAX)
    return _one("GETEX", (key(args[0]), options), bulk)


def mget(args: list[bytes]) -> Plan:
    """MGET key [key ...]."""
    return _one("MGET", tuple(key(a) for a in args), bulks)


def mset(args: list[bytes]) -> Plan:
    """MSET key value [key value ...]."""
    if len(args) % 2:
        raise RespError("ERR wrong number of arguments for 'mset' command")
    pairs = [x for i in range(0, len(args), 2) for x in (key(args[i]), args[i + 1])]
    return _one("MSET", tuple(pairs), _ok)


def _incr(k: bytes, delta: int) -> Plan:
    return _one("INCRBY", (key(k), delta), _int)


def incr(args: list[bytes]) -> Plan:
    """INCR key."""
    return _incr(args[0], 1)


def decr(args: list[bytes]) -> Plan:
    """DECR key."""
    return _incr(args[0], -1)


def incrby(args: list[bytes]) -> Plan:
    """INCRBY key increment."""
    return _incr(args[0], to_int(args[1]))


def decrby(args: list[bytes]) -> Plan:
    """DECRBY key decrement."""
    n = to_int(args[1])
    if n == INT64_MIN:
        raise RespError("ERR decrement would overflow")
    return _incr(args[0], -n)


# ------------------------------------------------------------------ keys


def delete(args: list[bytes]) -> Plan:
    """DEL / UNLINK key [key ...]."""
    return _one("DEL", tuple(key(a) for a in args), _int)


def exists(args: list[bytes]) -> Plan:
    """EXISTS key [key ...]."""
    return _one("EXISTS", tuple(key(a) for a in args), _int)


def _expire_family(name: str, unit: int, absolute: bool) -> Callable[[list[bytes]], Plan]:
    def build(args: list[bytes]) -> Plan:
        if len(args) > 2:
            word = args[2].upper()
            if word in (b"NX", b"XX", b"GT", b"LT"):
                raise RespError(f"ERR {text(word)} is not supported by PyCache (see docs/resp.md)")
            raise RespError(f"ERR Unsupported option {text(args[2])}")
        k = key(args[0])
        n = to_int(args[1])
        if not -(2**62) <= n * unit <= 2**62:
            raise RespError(f"ERR invalid expire time in '{name}' command")
        ms = n * unit - wall_ms() if absolute else n * unit
        if ms <= 0:
            return _one("DEL", (k,), _int)
        if ms > MAX_TTL_MS:
            raise RespError(f"ERR invalid expire time in '{name}' command")
        return _one("EXPIRE", (k, ms), _int)

    return build


def ttl(args: list[bytes]) -> Plan:
    """TTL key: seconds left, rounded as Redis does."""
    return _one("TTL", (key(args[0]),), lambda ms: integer(ms if ms < 0 else (ms + 500) // 1000))


def pttl(args: list[bytes]) -> Plan:
    """PTTL key."""
    return _one("TTL", (key(args[0]),), _int)


def persist(args: list[bytes]) -> Plan:
    """PERSIST key."""
    return _one("PERSIST", (key(args[0]),), _int)


def type_(args: list[bytes]) -> Plan:
    """TYPE key: ``string`` or ``none``."""
    return _one("EXISTS", (key(args[0]),), lambda n: simple("string" if n else "none"))


def dbsize(args: list[bytes]) -> Plan:
    """DBSIZE."""
    return _one("DBSIZE", (), _int)


def keys(args: list[bytes]) -> Plan:
    """KEYS pattern."""
    return _one("KEYS", (args[0],), bulks)


def scan(args: list[bytes]) -> Plan:
    """SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]."""
    cursor = to_int(args[0], "ERR invalid cursor")
    if not 0 <= cursor < 2**56:
        cursor = 2**56 - 1  # past every key: the iteration ends
    pattern: bytes | None = None
    count, kind = 10, b"string"
    i = 1
    while i < len(args):
        word = args[i].upper()
        if i + 1 >= len(args):
            raise RespError(SYNTAX)
        if word == b"MATCH":
            pattern = args[i + 1]
        elif word == b"COUNT":
            count = to_int(args[i + 1])
            if count < 1:
                raise RespError(SYNTAX)
        elif word == b"TYPE":
            kind = args[i + 1].lower()
        else:
            raise RespError(SYNTAX)
        i += 2

    def convert(result: Any) -> bytes:
        following, found = result
        return array([bulk(str(following)), bulks(found if kind == b"string" else [])])

    return _one("SCAN", (cursor, pattern, min(count, wire.MAX_SCAN_COUNT)), convert)


def flushall(args: list[bytes]) -> Plan:
    """FLUSHALL / FLUSHDB [ASYNC|SYNC]: replicated, done before the reply."""
    if len(args) > 1 or (args and args[0].upper() not in (b"ASYNC", b"SYNC")):
        raise RespError(SYNTAX)
    return _one("FLUSHALL", (), _ok)


def wait(args: list[bytes]) -> Plan:
    """WAIT numreplicas timeout: a marker write acknowledged by numreplicas + 1 nodes.

    Writes from one node reach the others in order, so once the marker is on
    ``n`` nodes, so is every earlier write of this connection.
    """
    replicas = to_int(args[0])
    timeout = to_int(args[1], "ERR timeout is not an integer or out of range")
    if timeout < 0:
        raise RespError("ERR timeout is negative")
    if replicas <= 0:
        return [], lambda replies: integer(0)
    w = min(replicas + 1, 64)

    def finish(replies: list[Reply]) -> bytes:
        code, result = replies[0]
        if code == wire.OK:
            return integer(w - 1)
        if code == wire.E_NOT_ACKNOWLEDGED and str(result).startswith("logged on "):
            return integer(max(int(str(result).split()[2]) - 1, 0))
        return wire_error(code, result)

    return [("SET", (WAIT_KEY, b"", {"ttl_ms": 1, "w": w}))], finish


#: name -> (Redis arity: exact count with the name, or -minimum; builder).
COMMANDS: dict[bytes, tuple[int, Callable[[list[bytes]], Plan]]] = {
    b"GET": (2, get),
    b"SET": (-3, set_),
    b"SETNX": (3, setnx),
    b"SETEX": (4, setex),
    b"PSETEX": (4, psetex),
    b"GETDEL": (2, getdel),
    b"GETEX": (-2, getex),
    b"MGET": (-2, mget),
    b"MSET": (-3, mset),
    b"INCR": (2, incr),
    b"DECR": (2, decr),
    b"INCRBY": (3, incrby),
    b"DECRBY": (3, decrby),
    b"DEL": (-2, delete),
    b"UNLINK": (-2, delete),
    b"EXISTS": (-2, exists),
    b"EXPIRE": (-3, _expire_family("expire", 1000, False)),
    b"PEXPIRE": (-3, _expire_family("pexpire", 1, False)),
    b"EXPIREAT": (-3, _expire_family("expireat", 1000, True)),
    b"PEXPIREAT": (-3, _expire_family("pexpireat", 1, True)),
    b"TTL": (2, ttl),
    b"PTTL": (2, pttl),
    b"PERSIST": (2, persist),
    b"TYPE": (2, type_),
    b"DBSIZE": (1, dbsize),
    b"KEYS": (2, keys),
    b"SCAN": (-2, scan),
    b"FLUSHALL": (-1, flushall),
    b"FLUSHDB": (-1, flushall),
    b"WAIT": (3, wait),
}
