"""Validation of the key-space ops of the RESP front: EXISTS, DBSIZE, SCAN, KEYS,
FLUSHALL, GETDEL, SETX, GETEX (:mod:`mesh.core.keyspace` runs them).

Part of :mod:`mesh.core.wire`, which adds :func:`validators` to its table at
import, handing in its own helpers (this module imports nothing of it, so
either may be imported first); ``docs/protocol.md`` describes each op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.core.limits import Limits

KEYSPACE_WRITE_OPS = frozenset({"FLUSHALL", "GETDEL", "SETX", "GETEX"})
#: Fewest arguments before a trailing options map ({"w": W}), as wire's _MIN_ARGS.
KEYSPACE_MIN_ARGS = {"FLUSHALL": 0, "GETDEL": 1}
#: SETX / GETEX options: a TTL from now or an absolute deadline (wall-clock ms).
SETX_OPTIONS = frozenset({"ttl_ms", "at_ms", "nx", "xx", "keepttl", "w"})
GETEX_OPTIONS = frozenset({"ttl_ms", "at_ms", "persist", "w"})
MAX_SCAN_COUNT = 100_000


def validators(wire: Any) -> dict[str, Callable[[list, Limits], tuple]]:
    """Op name -> validator of each key-space op, built on ``wire``'s helpers."""
    E_BAD_ARGS = wire.E_BAD_ARGS
    _arity, _fail, _key, _Pairs, _ttl = wire._arity, wire._fail, wire._key, wire._Pairs, wire._ttl
    _v_key, _v_keys, _v_none, _value, _w = (
        wire._v_key,
        wire._v_keys,
        wire._v_none,
        wire._value,
        wire._w,
    )

    def _options(raw: Any, allowed: frozenset[str], op: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, _Pairs) or len(raw) > len(allowed):
            raise _fail(E_BAD_ARGS, f"{op} options must be a map of {', '.join(sorted(allowed))}")
        names = [
            name.decode("utf-8", "replace") if isinstance(name, bytes) else "" for name, _ in raw
        ]
        if len(set(names)) != len(raw) or not set(names) <= allowed:
            raise _fail(
                E_BAD_ARGS, f"{op} options must be distinct names of {', '.join(sorted(allowed))}"
            )
        found = dict(zip(names, (value for _, value in raw), strict=True))
        for name in ("nx", "xx", "keepttl", "persist"):
            if name in found and not isinstance(found[name], bool):
                raise _fail(E_BAD_ARGS, f"{op} option {name} must be a boolean")
        if "ttl_ms" in found and "at_ms" in found:
            raise _fail(E_BAD_ARGS, f"{op} options ttl_ms and at_ms exclude each other")
        if found.get("nx") and found.get("xx"):
            raise _fail(E_BAD_ARGS, f"{op} options nx and xx exclude each other")
        return found

    def _at(raw: Any) -> int:
        if type(raw) is not int or not 1 <= raw <= 2**62:
            raise _fail(E_BAD_ARGS, "at_ms must be an integer in 1..2**62")
        return raw

    def _deadline_options(found: dict[str, Any]) -> tuple[int, int]:
        ttl = found.get("ttl_ms")
        at = found.get("at_ms")
        return (_ttl(ttl) if ttl is not None else 0, _at(at) if at is not None else 0)

    def _v_setx(args: list, limits: Limits) -> tuple:
        _arity(args, 2, 3, "SETX key value [{ttl_ms | at_ms, nx, xx, keepttl, w}]")
        key, value = _key(args[0], limits), _value(args[1], limits)
        found = _options(args[2] if len(args) == 3 else None, SETX_OPTIONS, "SETX")
        w = _w(found["w"]) if found.get("w") is not None else None
        flags = (bool(found.get("nx")), bool(found.get("xx")), bool(found.get("keepttl")))
        return (key, value, *_deadline_options(found), *flags, w)

    def _v_getex(args: list, limits: Limits) -> tuple:
        _arity(args, 1, 2, "GETEX key [{ttl_ms | at_ms | persist, w}]")
        found = _options(args[1] if len(args) == 2 else None, GETEX_OPTIONS, "GETEX")
        w = _w(found["w"]) if found.get("w") is not None else None
        ttl_ms, at_ms = _deadline_options(found)
        if found.get("persist") and (ttl_ms or at_ms):
            raise _fail(E_BAD_ARGS, "GETEX option persist excludes ttl_ms and at_ms")
        return (_key(args[0], limits), ttl_ms, at_ms, bool(found.get("persist")), w)

    def _pattern(raw: Any, limits: Limits) -> str:
        if not isinstance(raw, bytes) or len(raw) > limits.max_key_bytes * 4:
            raise _fail(E_BAD_ARGS, "a pattern is a string of at most 4 x max_key_bytes bytes")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(E_BAD_ARGS, "a pattern is not valid UTF-8") from exc

    def _v_scan(args: list, limits: Limits) -> tuple:
        _arity(args, 1, 3, "SCAN cursor [pattern | nil] [count]")
        cursor = args[0]
        if type(cursor) is not int or not 0 <= cursor < 2**56:
            raise _fail(E_BAD_ARGS, "the SCAN cursor is an integer in 0..2**56-1")
        pattern = _pattern(args[1], limits) if len(args) > 1 and args[1] is not None else None
        count = args[2] if len(args) > 2 else 10
        if type(count) is not int or not 1 <= count <= MAX_SCAN_COUNT:
            raise _fail(E_BAD_ARGS, f"the SCAN count is an integer in 1..{MAX_SCAN_COUNT}")
        return (cursor, pattern, count)

    def _v_keys_pattern(args: list, limits: Limits) -> tuple:
        _arity(args, 1, 1, "KEYS pattern")
        return (_pattern(args[0], limits),)

    return {
        "EXISTS": _v_keys("EXISTS key [key ...]"),
        "DBSIZE": _v_none("DBSIZE"),
        "SCAN": _v_scan,
        "KEYS": _v_keys_pattern,
        "FLUSHALL": _v_none("FLUSHALL"),
        "GETDEL": _v_key("GETDEL key"),
        "SETX": _v_setx,
        "GETEX": _v_getex,
    }
