"""The key-space ops the Redis front needs: EXISTS, DBSIZE, SCAN, KEYS, FLUSHALL,
GETDEL, SETX (SET with Redis's GET, KEEPTTL and absolute deadlines) and GETEX.

Pure logic over a :class:`mesh.core.commands.CommandExecutor`'s store; writes go
through its ``_write`` so they are logged and replicated like any other
(FLUSHALL is one tombstone per live key, so every node ends empty of the
keys written before it, whatever order the tombstones arrive in).

SCAN's cursor is a position in a fixed order of keys: by a 56-bit hash of the
name, then the name.  The cursor is the last hash returned, so a key present
for the whole iteration is returned exactly once (keys added or deleted during
it may or may not be), as Redis promises; each call costs a pass over the
keys (O(n log count)), fine for the occasional listing it is meant for.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.core.commands import CommandExecutor

#: SCAN's cursor space: hashes are 1..2**56 - 1 (0 starts and ends).
CURSOR_BITS = 56


def key_hash(key: str) -> int:
    """The SCAN order of ``key``: a stable 56-bit hash, never 0."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=7).digest()
    return int.from_bytes(digest, "big") or 1


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Redis's glob (``*``, ``?``, ``[abc]``, ``[^a]``, ``[a-z]``, ``\\x``) as a regex."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j, klass = i + 1, []
            if j < n and pattern[j] == "^":
                klass.append("^")
                j += 1
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < n:
                    j += 1
                    klass.append(re.escape(pattern[j]))
                elif pattern[j] == "-" and klass and j + 1 < n and pattern[j + 1] != "]":
                    klass.append("-")
                else:
                    klass.append(re.escape(pattern[j]))
                j += 1
            out.append("[" + "".join(klass) + "]" if klass and klass != ["^"] else "(?!)")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _matcher(pattern: str | None) -> Callable[[str], bool]:
    if pattern is None or pattern == "*":
        return lambda key: True
    regex = glob_regex(pattern)
    return lambda key: regex.fullmatch(key) is not None


class KeyOps:
    """The key-space ops of one executor (registered in its op table)."""

    def __init__(self, executor: CommandExecutor) -> None:
        self.x = executor

    def ops(self) -> dict[str, Callable[..., Any]]:
        """Op name -> handler, for :class:`mesh.core.commands.CommandExecutor`."""
        return {
            "EXISTS": self.exists,
            "DBSIZE": self.dbsize,
            "SCAN": self.scan,
            "KEYS": self.keys,
            "FLUSHALL": self.flushall,
            "GETDEL": self.getdel,
            "SETX": self.setx,
            "GETEX": self.getex,
        }

    def _names(self) -> list[str]:
        # The store's live map (expired keys not yet collected included).
        return self.x.store.live_keys()

    def _live(self, key: str) -> Any:
        return self.x.store.get(key, record_stats=False)

    def exists(self, keys: list[str]) -> int:
        """How many of ``keys`` exist (a key named twice counts twice)."""
        return sum(1 for key in keys if self._live(key) is not None)

    def dbsize(self) -> int:
        """Live keys (expired keys not yet collected included, as Redis's DBSIZE)."""
        return len(self.x.store)

    def scan(self, cursor: int, pattern: str | None, count: int) -> list:
        """``[next cursor, keys]``: up to ``count`` keys after ``cursor`` that match."""
        after = [(h, k) for k in self._names() if (h := key_hash(k)) > cursor]
        page = heapq.nsmallest(count, after)
        if len(page) == len(after):
            following = 0
        else:
            last = page[-1][0]
            page += [item for item in after if item[0] == last and item not in page]
            following = last
        match = _matcher(pattern)
        return [following, [k for _, k in page if match(k) and self._live(k) is not None]]

    def keys(self, pattern: str) -> list[str]:
        """Every live key matching the glob ``pattern``."""
        match = _matcher(pattern)
        return [k for k in self._names() if match(k) and self._live(k) is not None]

    def flushall(self) -> bool:
        """Delete every live key (one replicated tombstone each)."""
        for key in self._names():
            if self._live(key) is not None:
                self.x._write(key, None, 0)
        return True

    def getdel(self, key: str) -> bytes | None:
        """The value of ``key``, which is deleted; nil when missing."""
        entry = self._live(key)
        if entry is None:
            return None
        self.x._write(key, None, 0)
        return entry.value

    def _deadline(self, ttl_ms: int, at_ms: int) -> int:
        return self.x._now_ms() + ttl_ms if ttl_ms else at_ms

    def setx(
        self, key: str, value: bytes, ttl_ms: int, at_ms: int, nx: bool, xx: bool, keepttl: bool
    ) -> list:
        """SET with Redis's options: ``[stored, old value | nil]``.

        The deadline is ``ttl_ms`` from now, or the absolute ``at_ms`` (one
        already past deletes the key), or the key's own with ``keepttl``.
        """
        entry = self.x.store.get(key, record_stats=False)
        old = None if entry is None else entry.value
        if (nx and entry is not None) or (xx and entry is None):
            return [False, old]
        deadline = entry.deadline if keepttl and entry is not None else 0
        if ttl_ms or at_ms:
            deadline = self._deadline(ttl_ms, at_ms)
        if deadline and deadline <= self.x._now_ms():
            if entry is not None:
                self.x._write(key, None, 0)
        else:
            self.x._write(key, value, deadline)
        return [True, old]

    def getex(self, key: str, ttl_ms: int, at_ms: int, persist: bool) -> bytes | None:
        """The value of ``key``, its deadline changed as asked (none asked: a GET)."""
        entry = self.x.store.get(key)
        if entry is None:
            return None
        if ttl_ms or at_ms:
            deadline = self._deadline(ttl_ms, at_ms)
            if deadline <= self.x._now_ms():
                self.x._write(key, None, 0)
            else:
                self.x._rewrite(key, entry.value, deadline)
        elif persist and entry.deadline:
            self.x._rewrite(key, entry.value, 0)
        return entry.value
