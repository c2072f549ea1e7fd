"""Unit tests for mesh.core.commands: what each op does to the store and the
mutations it queues, with a fake wall clock; no sockets, no processes.

Requests are built as the node builds them: a real frame from
:func:`mesh.core.wire.encode_request`, read back by
:func:`mesh.core.wire.decode_request`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core import wire
from mesh.core.clock import HybridClock, pack
from mesh.core.commands import CommandExecutor
from mesh.core.errors import ProtocolError
from mesh.core.limits import Limits
from mesh.core.mutation import Mutation
from mesh.core.store import Store
from mesh.core.wire import Request, decode_request, encode_request

T0 = 1_700_000_000_000  # "now" in ms for most tests
ORIGIN = "n1/1"
LIMITS = Limits()


class FakeNow:
    """A wall clock the test moves by hand."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@dataclass
class Rig:
    """An executor with its store, clock and wall clock, all on one fake time."""

    now: FakeNow
    store: Store
    clock: HybridClock
    executor: CommandExecutor
    stats_calls: list[str] = field(default_factory=list)

    def run(self, op: str, *args: Any) -> Any:
        """Encode, decode and execute one request, as the node does."""
        return self.executor.execute(request(op, *args))

    def written(self) -> list[Mutation]:
        """The mutations queued since the last call."""
        return self.executor.take_pending()


def make(last_seq: int = 0, ms: int = T0) -> Rig:
    """A rig whose STATS, HEALTH and CLUSTER report which one was called."""
    now = FakeNow(ms)
    store = Store(now_ms=now, seed=1)
    clock = HybridClock(wall=now)
    calls: list[str] = []

    def reporter(name: str) -> Any:
        def report() -> dict:
            calls.append(name)
            return {"from": name}

        return report

    executor = CommandExecutor(
        store,
        clock,
        ORIGIN,
        last_seq,
        now,
        reporter("stats"),
        reporter("health"),
        reporter("cluster"),
    )
    return Rig(now, store, clock, executor, calls)


def request(op: str, *args: Any) -> Request:
    """A request read from a real frame."""
    return decode_request(encode_request(7, op, *args), LIMITS)


def set_options(ttl_ms: int | None = None, nx: bool = False, xx: bool = False) -> tuple:
    """SET's trailing options map, or nothing when no option is set."""
    options: dict[str, Any] = {}
    if ttl_ms:
        options["ttl_ms"] = ttl_ms
    if nx:
        options["nx"] = True
    if xx:
        options["xx"] = True
    return (options,) if options else ()


def value_of(rig: Rig, key: str) -> bytes | None:
    entry = rig.store.get(key, record_stats=False)
    return None if entry is None else entry.value


# -- reads ---------------------------------------------------------------------


def test_ping_answers_pong_or_echoes_the_message() -> None:
    rig = make()
    assert rig.run("PING") == "PONG"
    assert rig.run("PING", b"hello") == b"hello"
    assert rig.written() == []


def test_get_of_a_missing_key_is_none_and_counts_a_miss() -> None:
    rig = make()
    assert rig.run("GET", "k") is None
    assert rig.store.stats()["misses"] == 1


def test_get_returns_what_set_stored_and_counts_a_hit() -> None:
    rig = make()
    rig.run("SET", "k", b"v")
    assert rig.run("GET", "k") == b"v"
    assert rig.store.stats()["hits"] == 1


def test_mget_answers_in_order_with_none_for_missing_and_expired_keys() -> None:
    rig = make()
    rig.run("MSET", "a", b"1", "b", b"2")
    rig.run("SET", "short", b"x", {"ttl_ms": 10})
    rig.now.ms += 10
    assert rig.run("MGET", "b", "missing", "a", "short") == [b"2", None, b"1", None]


def test_ttl_is_minus_2_for_no_key_minus_1_for_no_ttl_else_the_ms_left() -> None:
    rig = make()
    rig.run("SET", "plain", b"v")
    rig.run("SET", "timed", b"v", {"ttl_ms": 1000})
    rig.now.ms += 400
    assert rig.run("TTL", "missing") == -2
    assert rig.run("TTL", "plain") == -1
    assert rig.run("TTL", "timed") == 600


def test_getmeta_gives_value_ttl_and_the_physical_time_of_the_last_write() -> None:
    rig = make()
    assert rig.run("GETMETA", "missing") is None
    rig.run("SET", "plain", b"v")
    assert rig.run("GETMETA", "plain") == [b"v", -1, T0]
    rig.now.ms += 5
    rig.run("SET", "timed", b"w", {"ttl_ms": 1000})
    rig.now.ms += 300
    assert rig.run("GETMETA", "timed") == [b"w", 700, T0 + 5]


def test_reads_queue_no_mutation_and_leave_seq_alone() -> None:
    rig = make(last_seq=41)
    rig.run("SET", "k", b"v")
    rig.written()
    for op, args in [("GET", ("k",)), ("MGET", ("k", "x")), ("TTL", ("k",)), ("GETMETA", ("k",))]:
        rig.run(op, *args)
    rig.run("STATS")
    assert rig.written() == []
    assert rig.executor.seq == 42


def test_stats_health_and_cluster_call_the_injected_reports() -> None:
    rig = make()
    assert rig.run("STATS") == {"from": "stats"}
    assert rig.run("HEALTH") == {"from": "health"}
    assert rig.run("CLUSTER") == {"from": "cluster"}
    assert rig.stats_calls == ["stats", "health", "cluster"]


def test_health_and_cluster_fall_back_to_stats_when_not_given() -> None:
    now = FakeNow()
    store = Store(now_ms=now)
    executor = CommandExecutor(store, HybridClock(wall=now), ORIGIN, 0, now, lambda: {"s": 1})
    assert executor.execute(request("HEALTH")) == {"s": 1}
    assert executor.execute(request("CLUSTER")) == {"s": 1}


# -- SET -------------------------------------------------------------------------


def test_set_applies_and_queues_one_full_state_mutation() -> None:
    rig = make()
    assert rig.run("SET", "k", b"v") is True
    assert value_of(rig, "k") == b"v"
    assert rig.written() == [Mutation(ORIGIN, 1, pack(T0, 0), "k", b"v", 0)]


def test_set_with_ttl_sets_an_absolute_deadline_and_the_key_expires_at_it() -> None:
    rig = make()
    assert rig.run("SET", "k", b"v", {"ttl_ms": 250}) is True
    (mutation,) = rig.written()
    assert mutation.deadline == T0 + 250
    rig.now.ms += 249
    assert rig.run("GET", "k") == b"v"
    rig.now.ms += 1
    assert rig.run("GET", "k") is None
    assert rig.run("TTL", "k") == -2


def test_set_without_ttl_removes_an_earlier_ttl() -> None:
    rig = make()
    rig.run("SET", "k", b"old", {"ttl_ms": 100})
    rig.run("SET", "k", b"new")
    rig.now.ms += 1000
    assert rig.run("GET", "k") == b"new"
    assert rig.run("TTL", "k") == -1


def test_set_nx_writes_only_a_missing_key() -> None:
    rig = make()
    assert rig.run("SET", "k", b"1", {"nx": True}) is True
    rig.written()
    assert rig.run("SET", "k", b"2", {"nx": True}) is False
    assert value_of(rig, "k") == b"1"
    assert rig.written() == []
    assert rig.executor.seq == 1


def test_set_xx_writes_only_an_existing_key() -> None:
    rig = make()
    assert rig.run("SET", "k", b"1", {"xx": True}) is False
    assert value_of(rig, "k") is None and rig.written() == []
    rig.run("SET", "k", b"1")
    assert rig.run("SET", "k", b"2", {"xx": True}) is True
    assert value_of(rig, "k") == b"2"


def test_set_nx_and_xx_count_an_expired_key_as_missing() -> None:
    rig = make()
    rig.run("SET", "k", b"old", {"ttl_ms": 10})
    rig.now.ms += 10
    assert rig.run("SET", "k", b"x", {"xx": True}) is False
    assert rig.run("SET", "k", b"new", {"nx": True}) is True
    assert value_of(rig, "k") == b"new"


def test_nx_and_xx_checks_do_not_count_as_reads() -> None:
    rig = make()
    rig.run("SET", "k", b"1", {"nx": True})
    rig.run("SET", "k", b"2", {"xx": True})
    stats = rig.store.stats()
    assert (stats["hits"], stats["misses"]) == (0, 0)


def test_set_with_nx_and_xx_together_never_reaches_the_executor() -> None:
    with pytest.raises(ProtocolError) as caught:
        request("SET", "k", b"v", {"nx": True, "xx": True})
    assert caught.value.code == wire.E_BAD_ARGS


# -- DEL, EXPIRE, PERSIST, MSET ---------------------------------------------------


def test_del_counts_and_tombstones_only_live_keys() -> None:
    rig = make()
    rig.run("MSET", "a", b"1", "b", b"2")
    rig.run("SET", "gone", b"x", {"ttl_ms": 5})
    rig.written()
    rig.now.ms += 5
    assert rig.run("DEL", "a", "missing", "gone", "b") == 2
    assert [(m.key, m.value, m.deadline) for m in rig.written()] == [
        ("a", None, 0),
        ("b", None, 0),
    ]
    assert len(rig.store) == 0


def test_del_of_the_same_key_twice_counts_it_once() -> None:
    rig = make()
    rig.run("SET", "k", b"v")
    rig.written()
    assert rig.run("DEL", "k", "k") == 1
    assert len(rig.written()) == 1


def test_expire_rewrites_the_value_with_a_new_deadline() -> None:
    rig = make()
    rig.run("SET", "k", b"v")
    rig.written()
    rig.now.ms += 50
    assert rig.run("EXPIRE", "k", 100) is True
    (mutation,) = rig.written()
    assert (mutation.key, mutation.value, mutation.deadline) == ("k", b"v", T0 + 150)
    rig.now.ms += 100
    assert rig.run("GET", "k") is None


def test_expire_of_a_missing_or_expired_key_is_false_and_writes_nothing() -> None:
    rig = make()
    assert rig.run("EXPIRE", "missing", 100) is False
    rig.run("SET", "k", b"v", {"ttl_ms": 10})
    rig.written()
    rig.now.ms += 10
    assert rig.run("EXPIRE", "k", 100) is False
    assert rig.written() == []


def test_persist_removes_a_ttl_by_writing_deadline_zero() -> None:
    rig = make()
    rig.run("SET", "k", b"v", {"ttl_ms": 100})
    rig.written()
    assert rig.run("PERSIST", "k") is True
    (mutation,) = rig.written()
    assert (mutation.value, mutation.deadline) == (b"v", 0)
    rig.now.ms += 1000
    assert rig.run("TTL", "k") == -1


def test_persist_without_a_ttl_or_key_is_false_and_writes_nothing() -> None:
    rig = make()
    assert rig.run("PERSIST", "missing") is False
    rig.run("SET", "k", b"v")
    rig.written()
    assert rig.run("PERSIST", "k") is False
    assert rig.written() == []


def test_mset_writes_each_pair_in_order_and_the_last_of_a_repeated_key_wins() -> None:
    rig = make()
    rig.run("SET", "a", b"old", {"ttl_ms": 100})
    rig.written()
    assert rig.run("MSET", "a", b"1", "b", b"2", "a", b"3") is True
    written = rig.written()
    assert [(m.seq, m.key, m.value, m.deadline) for m in written] == [
        (2, "a", b"1", 0),
        (3, "b", b"2", 0),
        (4, "a", b"3", 0),
    ]
    assert rig.run("MGET", "a", "b") == [b"3", b"2"]
    assert rig.run("TTL", "a") == -1


# -- seq, HLC and the pending queue ---------------------------------------------


def test_seq_continues_from_last_seq_one_per_mutation() -> None:
    rig = make(last_seq=100)
    rig.run("SET", "a", b"1")
    rig.run("MSET", "b", b"2", "c", b"3")
    rig.run("DEL", "a", "b")
    assert [m.seq for m in rig.written()] == [101, 102, 103, 104, 105]
    assert rig.executor.seq == 105


def test_every_mutation_carries_the_origin() -> None:
    rig = make()
    rig.run("MSET", "a", b"1", "b", b"2")
    rig.run("DEL", "a")
    assert {m.origin for m in rig.written()} == {ORIGIN}
    assert rig.store.get("b") is not None and rig.store.get("b").origin == ORIGIN  # type: ignore[union-attr]


def test_hlc_follows_the_wall_clock_and_stays_strictly_increasing() -> None:
    rig = make()
    rig.run("MSET", "a", b"1", "b", b"2")  # two writes in one millisecond
    rig.now.ms += 10
    rig.run("SET", "c", b"3")
    rig.now.ms -= 1000  # the wall clock steps back
    rig.run("SET", "d", b"4")
    hlcs = [m.hlc for m in rig.written()]
    assert hlcs == [pack(T0, 0), pack(T0, 1), pack(T0 + 10, 0), pack(T0 + 10, 1)]


def test_a_write_wins_over_a_newer_looking_entry_once_the_clock_has_seen_it() -> None:
    rig = make()
    remote = Mutation("n2/1", 9, pack(T0 + 60_000, 0), "k", b"remote", 0)
    rig.store.apply(remote)
    rig.clock.observe(remote.hlc)  # as the node's replica does for every entry it applies
    assert rig.run("SET", "k", b"local") is True
    (mutation,) = rig.written()
    assert mutation.version() > remote.version()
    assert value_of(rig, "k") == b"local"


def test_a_write_is_seen_by_later_requests_before_it_is_taken() -> None:
    rig = make()
    rig.run("SET", "k", b"v")
    assert rig.run("SET", "k", b"w", {"nx": True}) is False
    assert rig.run("GET", "k") == b"v"
    assert len(rig.executor.pending) == 1


def test_take_pending_hands_over_once() -> None:
    rig = make()
    rig.run("SET", "k", b"v")
    assert len(rig.executor.take_pending()) == 1
    assert rig.executor.take_pending() == []
    assert rig.executor.pending == []


# -- which requests it takes ------------------------------------------------------

ONE_OF_EACH: dict[str, tuple] = {
    "PING": (),
    "GET": ("k",),
    "SET": ("k", b"v"),
    "DEL": ("k",),
    "EXPIRE": ("k", 10),
    "PERSIST": ("k",),
    "TTL": ("k",),
    "MGET": ("k",),
    "MSET": ("k", b"v"),
    "GETMETA": ("k",),
    "STATS": (),
    "HEALTH": (),
    "CLUSTER": (),
    # key-space ops (RESP front): tests/test_keyspace.py
    "EXISTS": ("k",),
    "DBSIZE": (),
    "SCAN": (0,),
    "KEYS": (b"*",),
    "FLUSHALL": (),
    "GETDEL": ("k",),
    "SETX": ("k", b"v"),
    "GETEX": ("k",),
}
ONE_OF_EACH["INCRBY"] = ("n", 2)  # counters (issue 18)


def test_every_op_of_the_protocol_runs() -> None:
    assert set(ONE_OF_EACH) == wire.OPS
    rig = make()
    for op, args in ONE_OF_EACH.items():
        rig.run(op, *args)


def test_write_options_reach_the_node_not_the_executor() -> None:
    """``w`` is the node's business: the executor's result is the same with or without it."""
    rig = make()
    req = request("SET", "k", b"v", {"w": "quorum"})
    assert req.w == "quorum"
    assert rig.executor.execute(req) is True
    assert rig.run("DEL", "k", {"w": 2}) == 1


def test_an_op_the_protocol_lacks_is_refused_by_the_decoder() -> None:
    with pytest.raises(ProtocolError) as caught:
        request("FROB", "k")
    assert caught.value.code == wire.E_UNKNOWN_OP


def test_an_unknown_op_handed_in_directly_raises() -> None:
    """The node answers any exception from execute with an INTERNAL error."""
    with pytest.raises(KeyError):
        make().executor.execute(Request(1, "FROB", ("k",)))


# -- properties ----------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.binary(max_size=3)
TTLS = st.integers(1, 50)
STEPS = st.one_of(
    st.tuples(st.just("SET"), KEYS, VALUES, st.none() | TTLS, st.sampled_from(["", "nx", "xx"])),
    st.tuples(st.just("DEL"), st.lists(KEYS, min_size=1, max_size=3)),
    st.tuples(st.just("EXPIRE"), KEYS, TTLS),
    st.tuples(st.just("PERSIST"), KEYS),
    st.tuples(st.just("MSET"), st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=3)),
    st.tuples(st.just("GET"), KEYS),
    st.tuples(st.just("TTL"), KEYS),
    st.tuples(st.just("WAIT"), st.integers(0, 60)),
)


class Model:
    """What the ops promise, as a plain dict of key -> (value, deadline)."""

    def __init__(self) -> None:
        self.now = T0
        self.data: dict[str, tuple[bytes, int]] = {}

    def live(self, key: str) -> tuple[bytes, int] | None:
        entry = self.data.get(key)
        return None if entry is None or 0 < entry[1] <= self.now else entry

    def step(self, step: tuple) -> tuple[Any, int]:
        """The result of ``step`` and how many mutations it makes."""
        op = step[0]
        if op == "SET":
            _, key, value, ttl, flag = step
            exists = self.live(key) is not None
            if (flag == "nx" and exists) or (flag == "xx" and not exists):
                return False, 0
            self.data[key] = (value, self.now + ttl if ttl else 0)
            return True, 1
        if op == "DEL":
            deleted = 0
            for key in step[1]:
                if self.live(key) is not None:
                    del self.data[key]
                    deleted += 1
            return deleted, deleted
        if op in ("EXPIRE", "PERSIST"):
            entry = self.live(step[1])
            if entry is None or (op == "PERSIST" and not entry[1]):
                return False, 0
            self.data[step[1]] = (entry[0], self.now + step[2] if op == "EXPIRE" else 0)
            return True, 1
        if op == "MSET":
            for key, value in step[1]:
                self.data[key] = (value, 0)
            return True, len(step[1])
        if op == "GET":
            entry = self.live(step[1])
            return (None if entry is None else entry[0]), 0
        if op == "TTL":
            entry = self.live(step[1])
            if entry is None:
                return -2, 0
            return (entry[1] - self.now if entry[1] else -1), 0
        self.now += step[1]  # WAIT
        return None, 0


def run_step(rig: Rig, step: tuple) -> Any:
    """Send ``step`` to the executor the way a client would."""
    op = step[0]
    if op == "SET":
        _, key, value, ttl, flag = step
        return rig.run("SET", key, value, *set_options(ttl, flag == "nx", flag == "xx"))
    if op == "DEL":
        return rig.run("DEL", *step[1])
    if op == "MSET":
        return rig.run("MSET", *[item for pair in step[1] for item in pair])
    if op == "WAIT":
        rig.now.ms += step[1]
        return None
    return rig.run(*step)


@settings(max_examples=200, deadline=None)
@given(st.lists(STEPS, max_size=40), st.integers(0, 1000))
def test_any_sequence_of_ops_behaves_as_the_model(steps: list[tuple], last_seq: int) -> None:
    rig, model = make(last_seq=last_seq), Model()
    written: list[Mutation] = []
    for step in steps:
        result = run_step(rig, step)
        expected, mutations = model.step(step)
        assert result == expected, step
        new = rig.written()
        assert len(new) == mutations, step
        written += new
    assert rig.run("MGET", "a", "b", "c") == [model.step(("GET", k))[0] for k in "abc"]
    assert [m.seq for m in written] == list(range(last_seq + 1, last_seq + 1 + len(written)))
    assert all(a.hlc < b.hlc for a, b in zip(written, written[1:], strict=False))


@settings(max_examples=100, deadline=None)
@given(st.lists(STEPS, max_size=30), st.randoms(use_true_random=False))
def test_the_mutations_rebuild_the_same_store_in_any_order(
    steps: list[tuple], rnd: random.Random
) -> None:
    """Full-state mutations: a peer applying them in any order ends with the same data."""
    rig = make()
    for step in steps:
        run_step(rig, step)
    written = rig.written()
    rnd.shuffle(written)
    replica = Store(now_ms=rig.now, seed=2)
    replica.apply_many(written)
    assert replica.digest() == rig.store.digest()
