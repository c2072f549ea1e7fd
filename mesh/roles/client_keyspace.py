"""The client methods of the key-space ops (EXISTS, DBSIZE, SCAN, KEYS, FLUSHALL,
GETDEL), mixed into :class:`mesh.roles.client.CommandMethods`; ``scan_iter`` into the
synchronous :class:`mesh.roles.client.Client` only (it loops over calls).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

#: Keys asked for per SCAN call by ``scan_iter``, unless told.
SCAN_COUNT = 1000


def _pattern(match: str | None) -> Any:
    return None if match is None else match.encode("utf-8")


class KeyspaceMethods:
    """EXISTS, DBSIZE, SCAN, KEYS, FLUSHALL and GETDEL, as client methods."""

    _call: Callable[..., Any]

    def exists(self, *keys: str) -> Any:
        """How many of ``keys`` exist (a key named twice counts twice)."""
        return self._call("EXISTS", *keys)

    def dbsize(self) -> Any:
        """The number of live keys on the node."""
        return self._call("DBSIZE")

    def scan(self, cursor: int = 0, match: str | None = None, count: int = 10) -> Any:
        """One SCAN page: ``[next_cursor, keys]``; start at 0, done when 0 comes back."""
        return self._call("SCAN", cursor, _pattern(match), count)

    def keys(self, pattern: str = "*") -> Any:
        """Every key matching the Redis glob ``pattern`` (for small key spaces)."""
        return self._call("KEYS", pattern.encode("utf-8"))

    def flushall(self, w: int | str | None = None) -> Any:
        """Delete every key (replicated to every node); True."""
        return self._call("FLUSHALL", *([] if w is None else [{"w": w}]))

    def getdel(self, key: str, w: int | str | None = None) -> Any:
        """The value of ``key`` (or None), and the key deleted."""
        return self._call("GETDEL", key, *([] if w is None else [{"w": w}]))


class ScanIterMethod:
    """``scan_iter`` for a client whose calls return their results."""

    scan: Callable[..., Any]

    def scan_iter(self, match: str | None = None, count: int = SCAN_COUNT) -> Iterator[str]:
        """Every key matching ``match`` (all when None), one SCAN page at a time.

        A key that exists for the whole iteration is yielded exactly once.
        """
        cursor = 0
        while True:
            cursor, keys = self.scan(cursor, match, count)
            yield from keys
            if cursor == 0:
                return
