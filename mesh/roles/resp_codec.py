"""RESP2 replies, Redis's error texts, and the argument parsing every command shares.

Replies are encoded straight to bytes: ``+OK``, ``-ERR ...``, ``:1``, ``$3 foo``,
``*2 ...``, ``$-1`` (nil).  A :class:`RespError` carries a whole error line
(``ERR ...``, ``WRONGTYPE ...``, ``NOAUTH ...``); the node's wire errors map
to Redis's nearest ones in :func:`wire_error`.
"""

from __future__ import annotations

import re
from typing import Any

from mesh.core import wire

OK = b"+OK\r\n"
NIL = b"$-1\r\n"
NIL_ARRAY = b"*-1\r\n"
EMPTY_ARRAY = b"*0\r\n"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_INTEGER = re.compile(rb"-?[1-9][0-9]*|0")
SYNTAX = "ERR syntax error"
NOT_INTEGER = "ERR value is not an integer or out of range"
NOAUTH = "NOAUTH Authentication required."
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


class RespError(Exception):
    """A command's error reply: the whole line after ``-`` (``ERR syntax error``)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


def error(line: str) -> bytes:
    """``-line``: an error reply (CR and LF in it become spaces)."""
    return b"-" + line.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


def simple(text: str) -> bytes:
    """``+text``: a status reply."""
    return b"+" + text.encode() + b"\r\n"


def integer(n: int) -> bytes:
    """``:n``."""
    return b":%d\r\n" % n


def bulk(value: bytes | str | None) -> bytes:
    """``$len value``, or nil for None."""
    if value is None:
        return NIL
    if isinstance(value, str):
        value = value.encode("utf-8")
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items: list[bytes]) -> bytes:
    """``*n`` followed by already-encoded items."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def bulks(values: list[Any]) -> bytes:
    """An array of bulk strings (None items are nil)."""
    return array([bulk(v) for v in values])


def encode(value: Any) -> bytes:
    """Any result as RESP2: bool/int as integers, str/bytes as bulk, list/dict as arrays."""
    if value is None:
        return NIL
    if isinstance(value, bool | int):
        return integer(int(value))
    if isinstance(value, bytes | str):
        return bulk(value)
    if isinstance(value, dict):
        return array([encode(x) for pair in value.items() for x in pair])
    if isinstance(value, list | tuple):
        return array([encode(x) for x in value])
    return bulk(str(value))


def text(arg: bytes) -> str:
    """An argument as text (undecodable bytes replaced)."""
    return arg.decode("utf-8", "replace")


def to_int(arg: bytes, message: str = NOT_INTEGER) -> int:
    """A base-10 int64 argument, as Redis parses it; RespError otherwise."""
    if len(arg) > 20 or not _INTEGER.fullmatch(arg):
        raise RespError(message)
    n = int(arg)
    if not INT64_MIN <= n <= INT64_MAX:
        raise RespError(message)
    return n


def wrong_arity(name: str) -> str:
    """Redis's error line for a wrong number of arguments."""
    return f"ERR wrong number of arguments for '{name.lower()}' command"


def unknown_command(name: bytes, args: list[bytes]) -> str:
    """Redis's error line for an unknown command."""
    shown = "".join(f"'{text(a)[:128]}' " for a in args[:20])
    return f"ERR unknown command '{text(name)[:128]}', with args beginning with: {shown}"


#: Redis's nearest error for each of the node's wire errors.
_PREFIX = {
    wire.E_NOT_READY: "LOADING",
    wire.E_NOT_ACKNOWLEDGED: "NOREPLICAS",
    wire.E_NO_SPACE: "MISCONF",
}


def wire_error(code: int, reason: Any) -> bytes:
    """The RESP error reply for a wire error reply."""
    name = wire.ERROR_NAMES.get(code, "")
    if name == "NOT_INTEGER":  # the INCRBY op's: not an int64, or the result would overflow
        overflow = "overflow" in str(reason).lower()
        return error("ERR increment or decrement would overflow" if overflow else NOT_INTEGER)
    return error(f"{_PREFIX.get(code, 'ERR')} {name.lower().replace('_', ' ')}: {reason}")
