"""What each client op does to the store: pure logic, no sockets, no disk.

The node decodes a request (:mod:`mesh.core.wire`), hands it to
:meth:`CommandExecutor.execute`, and gets the op's result back.  Every write is turned
into full-state :class:`~mesh.core.mutation.Mutation` objects (see that module for
why), stamped with this origin's next ``seq`` and a fresh HLC timestamp, applied
to the store at once (so later requests in the same batch see it) and queued in
:attr:`CommandExecutor.pending` for the node to log, fsync and only then acknowledge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.core.clock import HybridClock, physical_ms
from mesh.core.counters import CounterValue, increment, rebased
from mesh.core.keyspace import KeyOps
from mesh.core.mutation import Mutation
from mesh.core.store import Store
from mesh.core.wire import Request

_new = tuple.__new__


class CommandExecutor:
    """Executes validated requests for one origin (``"<node id>/<incarnation>"``)."""

    def __init__(
        self,
        store: Store,
        clock: HybridClock,
        origin: str,
        last_seq: int,
        now_ms: Callable[[], int],
        stats: Callable[[], dict],
        health: Callable[[], dict] | None = None,
        cluster: Callable[[], dict] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.origin = origin
        self.seq = last_seq
        self.pending: list[Mutation] = []
        self._now_ms = now_ms
        self._stats = stats
        self._ops: dict[str, Callable[..., Any]] = {
            "PING": self._ping,
            "GET": self._get,
            "SET": self._set,
            "DEL": self._delete,
            "EXPIRE": self._expire,
            "PERSIST": self._persist,
            "TTL": self.store.ttl_ms,
            "MGET": self._mget,
            "MSET": self._mset,
            "GETMETA": self._get_meta,
            "STATS": self._stats,
            "HEALTH": health or self._stats,
            "CLUSTER": cluster or self._stats,
        }
        self._ops["INCRBY"] = self._incrby  # counters (issue 18)
        # The key-space ops of the Redis front (EXISTS, SCAN, FLUSHALL, SETX, ...).
        self._ops.update(KeyOps(self).ops())

    def execute(self, request: Request) -> Any:
        """Run one request and return its result (writes are queued in ``pending``)."""
        return self._ops[request.op](*request.args)

    def take_pending(self) -> list[Mutation]:
        """Hand over the mutations made since the last call."""
        pending, self.pending = self.pending, []
        return pending

    def _write(self, key: str, value: bytes | tuple | None, deadline: int) -> None:
        self.seq += 1
        # tuple.__new__: a NamedTuple's own constructor is a Python function
        mutation = _new(Mutation, (self.origin, self.seq, self.clock.now(), key, value, deadline))
        self.store.apply(mutation)
        self.pending.append(mutation)

    @staticmethod
    def _ping(message: bytes | None) -> Any:
        return "PONG" if message is None else message

    def _get(self, key: str) -> bytes | None:
        return self.store.value(key)

    def _set(self, key: str, value: bytes, ttl_ms: int, nx: bool, xx: bool) -> bool:
        if nx or xx:
            exists = self.store.get(key, record_stats=False) is not None
            if (nx and exists) or (xx and not exists):
                return False
        self._write(key, value, self._now_ms() + ttl_ms if ttl_ms else 0)
        return True

    def _delete(self, keys: list[str]) -> int:
        deleted = 0
        for key in keys:
            if self.store.get(key, record_stats=False) is not None:
                self._write(key, None, 0)
                deleted += 1
        return deleted

    def _expire(self, key: str, ttl_ms: int) -> bool:
        entry = self.store.get(key, record_stats=False)
        if entry is None:
            return False
        self._rewrite(key, entry.value, self._now_ms() + ttl_ms)
        return True

    def _persist(self, key: str) -> bool:
        entry = self.store.get(key, record_stats=False)
        if entry is None or not entry.deadline:
            return False
        self._rewrite(key, entry.value, 0)
        return True

    def _get_meta(self, key: str) -> list | None:
        entry = self.store.get(key)
        if entry is None:
            return None
        ttl = entry.deadline - self._now_ms() if entry.deadline else -1
        value = entry.value
        hlc = value.top[0] if type(value) is CounterValue else entry.hlc  # a counter's newest
        return [value, max(ttl, 0) if entry.deadline else -1, physical_ms(hlc)]

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        return [self._get(key) for key in keys]

    def _mset(self, pairs: list[tuple[str, bytes]]) -> bool:
        for key, value in pairs:
            self._write(key, value, 0)
        return True

    # -- counters (issue 18) ------------------------------------------------

    def _incrby(self, key: str, delta: int) -> int:
        """INCRBY: merge-safe (:mod:`mesh.core.counters`); raises ProtocolError
        NOT_INTEGER (nothing changes) on a non-integer value or an overflow."""
        store = self.store
        entry = store.get(key, record_stats=False)
        state, value, deadline = increment(entry, store.tombstone(key), self.origin, delta)
        self._write(key, state, deadline)
        return value

    def _rewrite(self, key: str, value: bytes | None, deadline: int) -> None:
        """A new deadline for a held value; a counter stays one, rebased on this write
        (:func:`mesh.core.counters.rebased`): one base, one deadline."""
        if type(value) is not CounterValue:
            self._write(key, value, deadline)
            return
        self.seq += 1
        hlc = self.clock.now()
        state = rebased(value, hlc, self.origin)
        mutation = _new(Mutation, (self.origin, self.seq, hlc, key, state, deadline))
        self.store.apply(mutation)
        self.pending.append(mutation)
