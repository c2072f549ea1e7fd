"""Unit tests for mesh.core.store: last-writer-wins, TTL, LRU, tombstones, digest."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.clock import pack
from mesh.core.errors import ConfigError
from mesh.core.mutation import Mutation
from mesh.core.store import (
    ENTRY_OVERHEAD,
    SETTLE_MS,
    TOMBSTONE_OVERHEAD,
    TOMBSTONE_SHARE,
    Entry,
    Store,
)

T0 = 1_700_000_000_000  # "now" in ms for most tests


class FakeNow:
    """A wall clock the test moves by hand."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def mut(
    key: str,
    value: bytes | None,
    ms: int = T0,
    origin: str = "a",
    deadline: int = 0,
    logical: int = 0,
) -> Mutation:
    return Mutation(origin, 1, pack(ms, logical), key, value, deadline)


def make(**kwargs) -> tuple[Store, FakeNow]:
    now = FakeNow()
    return Store(now_ms=now, seed=1, **kwargs), now


def value_of(store: Store, key: str) -> bytes | None:
    entry = store.get(key, record_stats=False)
    return None if entry is None else entry.value


def live_bytes(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD


def tomb_bytes(key: str) -> int:
    return len(key) + TOMBSTONE_OVERHEAD


def expected_bytes(store: Store) -> int:
    """``bytes`` recomputed from what the store holds (due keys still count as live)."""
    held = (store._entry(key, raw) for key, raw in dict.items(store._live))
    live = sum(live_bytes(key, entry.value) for key, entry in zip(store._live, held, strict=True))
    return live + sum(tomb_bytes(key) for key in store._tombs)


# -- basics and last-writer-wins ---------------------------------------------


def test_set_then_get_returns_the_entry() -> None:
    store, _ = make()
    assert store.apply(mut("k", b"v", deadline=T0 + 10_000)) is True
    entry = store.get("k")
    assert isinstance(entry, Entry)
    assert (entry.value, entry.hlc, entry.origin, entry.deadline) == (
        b"v",
        pack(T0, 0),
        "a",
        T0 + 10_000,
    )
    assert entry.version() == mut("k", b"v").version()
    assert len(store) == 1 and "k" in store and "x" not in store
    assert store.get("x") is None


def test_older_write_after_newer_is_ignored() -> None:
    store, _ = make()
    assert store.apply(mut("k", b"new", T0 + 1))
    assert store.apply(mut("k", b"old", T0)) is False
    assert value_of(store, "k") == b"new"


def test_duplicate_is_harmless() -> None:
    store, _ = make()
    m = mut("k", b"v")
    assert store.apply(m) is True
    before = (set(store.entries()), store.digest(), store.stats())
    assert store.apply(m) is False
    assert (set(store.entries()), store.digest(), store.stats()) == before


def test_equal_hlc_origin_breaks_the_tie_in_either_order() -> None:
    for order in ((0, 1), (1, 0)):
        store, _ = make()
        writes = [mut("k", b"from-a", origin="a"), mut("k", b"from-b", origin="b")]
        for i in order:
            store.apply(writes[i])
        assert value_of(store, "k") == b"from-b"


def test_delete_tombstone_blocks_an_older_set() -> None:
    store, _ = make()
    store.apply(mut("k", b"v", T0))
    assert store.apply(mut("k", None, T0 + 2))
    assert store.get("k") is None and "k" not in store
    assert store.apply(mut("k", b"late", T0 + 1)) is False
    assert store.get("k") is None
    assert store.stats()["tombstones"] == 1
    assert store.apply(mut("k", b"newer", T0 + 3))
    assert value_of(store, "k") == b"newer"
    assert store.stats()["tombstones"] == 0


def test_delete_of_an_unknown_key_still_blocks_older_sets() -> None:
    store, _ = make()
    assert store.apply(mut("k", None, T0 + 5)) is True
    assert store.apply(mut("k", b"old", T0)) is False
    assert store.get("k") is None
    assert len(store) == 0


def test_overwrite_replaces_value_and_deadline() -> None:
    store, _ = make()
    store.apply(mut("k", b"one", T0, deadline=T0 + 50))
    store.apply(mut("k", b"two", T0 + 1))
    assert store.ttl_ms("k") == -1
    assert value_of(store, "k") == b"two"
    assert store.stats()["bytes"] == live_bytes("k", b"two")


# -- TTL ---------------------------------------------------------------------


def test_get_expires_lazily_and_leaves_the_version_behind() -> None:
    store, now = make()
    store.apply(mut("k", b"v", T0, deadline=T0 + 1_000))
    assert store.get("k") is not None
    now.ms = T0 + 1_000
    assert "k" not in store
    assert store.get("k") is None
    stats = store.stats()
    assert (stats["keys"], stats["tombstones"], stats["expired"]) == (0, 1, 1)
    assert (stats["hits"], stats["misses"]) == (1, 1)
    # an older write arriving late cannot bring the key back ...
    assert store.apply(mut("k", b"late", T0 - 1)) is False
    assert store.get("k") is None
    # ... but a newer one can
    assert store.apply(mut("k", b"again", T0 + 1))
    assert value_of(store, "k") == b"again"


def test_ttl_ms_follows_redis_pttl() -> None:
    store, now = make()
    store.apply(mut("forever", b"v"))
    store.apply(mut("brief", b"v", deadline=T0 + 1_500))
    store.apply(mut("gone", None))
    assert store.ttl_ms("missing") == -2
    assert store.ttl_ms("gone") == -2
    assert store.ttl_ms("forever") == -1
    assert store.ttl_ms("brief") == 1_500
    now.ms += 1_499
    assert store.ttl_ms("brief") == 1
    now.ms += 1
    assert store.ttl_ms("brief") == -2
    assert store.stats()["hits"] == 0  # ttl_ms does not count as a read


def test_write_with_a_past_deadline_is_stored_as_an_expired_tombstone() -> None:
    store, _ = make()
    assert store.apply(mut("k", b"v", T0, deadline=T0 - 1)) is True
    assert store.get("k") is None
    stats = store.stats()
    assert (stats["keys"], stats["tombstones"], stats["expired"]) == (0, 1, 1)
    assert store.apply(mut("k", b"older", T0 - 5)) is False
    assert store.apply(mut("k", b"newer", T0 + 5)) is True


def test_sweep_expires_without_reads() -> None:
    store, now = make()
    for i in range(100):
        store.apply(mut(f"k{i}", b"v", deadline=T0 + 10))
    store.apply(mut("keep", b"v"))
    assert store.sweep() == 0
    now.ms = T0 + 10
    assert store.sweep() == 100  # every sample is due, so rounds go on
    assert len(store) == 1
    stats = store.stats()
    assert (stats["expired"], stats["tombstones"], stats["hits"], stats["misses"]) == (
        100,
        100,
        0,
        0,
    )


def test_sweep_rounds_are_bounded() -> None:
    store, now = make()
    for i in range(1_000):
        store.apply(mut(f"k{i}", b"v", deadline=T0 + 10))
    now.ms = T0 + 10
    assert store.sweep(samples=20, max_rounds=3) == 60
    assert len(store) == 940


def test_sweep_stops_when_few_sampled_keys_are_due_but_gets_them_all_eventually() -> None:
    store, now = make()
    for i in range(100):
        store.apply(mut(f"due{i}", b"v", deadline=T0 + 10))
        store.apply(mut(f"later{i}", b"v", deadline=T0 + 10_000))
    now.ms = T0 + 10
    for _ in range(300):
        store.sweep()
    assert len(store) == 100
    assert all(f"later{i}" in store for i in range(100))
    assert store.stats()["expired"] == 100


def test_sweep_rejects_bad_arguments() -> None:
    store, _ = make()
    for kwargs in ({"samples": 0}, {"max_rounds": 0}, {"gc_scan": -1}, {"hash_budget": -1}):
        with pytest.raises(ValueError):
            store.sweep(**kwargs)


# -- LRU eviction ------------------------------------------------------------


def test_max_keys_evicts_the_least_recently_used() -> None:
    store, _ = make(max_keys=3)
    for i, key in enumerate("abc"):
        store.apply(mut(key, b"v", T0 + i))
    assert store.get("a") is not None  # a becomes the most recently used
    store.apply(mut("d", b"v", T0 + 3))
    assert [k for k in "abcd" if k in store] == ["a", "c", "d"]
    stats = store.stats()
    assert (stats["keys"], stats["tombstones"], stats["evicted"]) == (3, 1, 1)
    assert store.get("b") is None  # a read of an evicted key is a miss
    assert store.stats()["misses"] == 1


def test_overwrite_refreshes_recency_and_record_stats_false_does_not() -> None:
    store, _ = make(max_keys=2)
    store.apply(mut("a", b"v", T0))
    store.apply(mut("b", b"v", T0 + 1))
    store.apply(mut("a", b"v2", T0 + 2))  # a is now the most recent
    assert store.get("b", record_stats=False) is not None  # does not refresh b
    store.apply(mut("c", b"v", T0 + 3))
    assert "b" not in store and "a" in store and "c" in store


def test_eviction_does_not_let_an_older_write_resurrect() -> None:
    store, _ = make(max_keys=1)
    store.apply(mut("a", b"v", T0 + 5))
    store.apply(mut("b", b"v", T0 + 6))
    assert "a" not in store
    assert store.apply(mut("a", b"stale", T0 + 1)) is False
    assert "a" not in store and "b" in store
    assert store.apply(mut("a", b"fresh", T0 + 7)) is True
    assert value_of(store, "a") == b"fresh" and "b" not in store
    assert store.stats()["evicted"] == 2


def test_max_memory_bounds_live_data_and_tombstones_have_their_own_budget() -> None:
    value = b"x" * 1_000
    size = live_bytes("a", value)
    store, _ = make(max_memory=3 * size)
    for i, key in enumerate("abc"):
        store.apply(mut(key, value, T0 + i))
    assert store.stats()["bytes"] == 3 * size and store.stats()["evicted"] == 0
    store.get("a")
    store.apply(mut("d", value, T0 + 3))
    # b's tombstone does not count against the live data's limit
    assert [k for k in "abcd" if k in store] == ["a", "c", "d"]
    stats = store.stats()
    assert stats["evicted"] == 1 and stats["tombstones"] == 1
    assert stats["bytes"] == 3 * size + tomb_bytes("b") == expected_bytes(store)
    assert stats["tombstone_bytes"] == tomb_bytes("b") <= 3 * size // TOMBSTONE_SHARE
    store.apply(mut("e", value, T0 + 4))  # evicts c
    store.apply(mut("f", value, T0 + 5))  # evicts a: over the budget, the oldest are dropped
    stats = store.stats()  # down to 15/16 of the budget, so that not every write trims
    assert (stats["tombstones"], stats["tombstones_dropped"]) == (1, 2)
    assert stats["tombstone_bytes"] == tomb_bytes("a")
    assert store.apply(mut("b", b"late", T0)) is True  # b's version is forgotten


def test_a_value_over_max_memory_evicts_everything_and_terminates() -> None:
    store, _ = make(max_memory=2_000)
    store.apply(mut("a", b"v", T0))
    assert store.apply(mut("big", b"x" * 5_000, T0 + 1)) is True
    assert len(store) == 0
    assert store.stats()["evicted"] == 2


# -- tombstone collection ----------------------------------------------------


def test_tombstones_are_collected_after_the_horizon() -> None:
    store, now = make(tombstone_horizon_ms=1_000)
    store.apply(mut("old", b"v", T0))
    store.apply(mut("old", None, T0 + 1))
    store.apply(mut("young", None, T0 + 600))
    now.ms = T0 + 1_001
    store.sweep()
    assert store.stats()["tombstones"] == 2  # T0 + 1 is not yet older than now - 1000
    now.ms = T0 + 1_002
    store.sweep()
    stats = store.stats()
    assert (stats["tombstones"], stats["collected"]) == (1, 1)
    assert stats["bytes"] == tomb_bytes("young")
    now.ms = T0 + 10_000
    store.sweep()
    assert store.stats()["tombstones"] == 0 and store.stats()["bytes"] == 0
    # past the horizon the version is forgotten: that is what the horizon means
    assert store.apply(mut("old", b"v", T0))


def test_tombstone_collection_is_bounded_and_reaches_every_tombstone() -> None:
    store, now = make(tombstone_horizon_ms=1_000)
    store.apply(mut("young", None, T0 + 5_000))  # inserted first, blocks nothing
    for i in range(100):
        store.apply(mut(f"k{i}", None, T0))
    now.ms = T0 + 2_000
    store.sweep(gc_scan=10)
    assert store.stats()["collected"] == 9  # the young one was scanned and kept
    for _ in range(20):
        store.sweep(gc_scan=10)
    assert store.stats()["tombstones"] == 1
    assert store.apply(mut("young", b"v", T0 + 4_000)) is False


# -- stats, digest, entries ----------------------------------------------------


def test_stats_counters_and_bytes() -> None:
    store, _ = make(max_keys=10, max_memory=10**6)
    store.apply(mut("a", b"12345"))
    store.apply(mut("b", None))
    store.get("a")
    store.get("a")
    store.get("zzz")
    store.get("a", record_stats=False)
    assert store.stats() == {
        "keys": 1,
        "tombstones": 1,
        "bytes": live_bytes("a", b"12345") + tomb_bytes("b"),
        "tombstone_bytes": tomb_bytes("b"),
        "tombstones_dropped": 0,
        "hits": 2,
        "misses": 1,
        "expired": 0,
        "evicted": 0,
        "collected": 0,
        "max_keys": 10,
        "max_memory": 10**6,
    }


def test_digest_is_order_independent_and_tracks_live_data() -> None:
    writes = [
        mut("a", b"1", T0),
        mut("b", b"2", T0 + 1, deadline=T0 + 60_000),
        mut("a", b"3", T0 + 2, origin="z"),
        mut("c", None, T0 + 3),
    ]
    one, _ = make()
    two, _ = make()
    for m in writes:
        one.apply(m)
    for m in reversed(writes):
        two.apply(m)
    assert one.digest() == two.digest()
    empty, _ = make()
    assert empty.digest() == "0" * 16
    three, _ = make()
    three.apply(writes[2])
    three.apply(writes[1])
    assert three.digest() == one.digest()  # tombstones are not live data
    three.apply(mut("b", b"2", T0 + 1, origin="b"))  # same value, other version
    assert three.digest() != one.digest()


def test_digest_is_kept_up_to_date_by_sweep_and_changes() -> None:
    store, now = make()
    for i in range(50):
        store.apply(mut(f"k{i}", b"v"))
    store.sweep(hash_budget=10)
    store.sweep(hash_budget=1_000)
    full = store.digest()
    store.apply(mut("k0", b"other", T0 + 1))
    changed = store.digest()
    assert changed != full
    store.apply(mut("k0", None, T0 + 2))
    rebuilt, _ = make()
    for i in range(1, 50):
        rebuilt.apply(mut(f"k{i}", b"v"))
    assert store.digest() == rebuilt.digest()


def test_hashing_in_slices_gives_the_digest_hashing_at_once() -> None:
    store, _ = make()
    for i in range(100):
        store.apply(mut(f"k{i}", b"v"))
    assert store.unhashed() == 100
    store.hash_some(30)
    assert store.unhashed() == 70
    while store.unhashed():
        store.hash_some(30)
    at_once, _ = make()
    for i in range(100):
        at_once.apply(mut(f"k{i}", b"v"))
    assert store.digest() == at_once.digest()


def test_sweep_hashes_an_entry_once_it_has_gone_unwritten_for_a_while() -> None:
    store, now = make()
    store.apply(mut("k", b"v"))
    for _ in range(SETTLE_MS // 100):
        store.sweep()
        now.ms += 100
    assert store.unhashed() == 1  # noted, then turned over: not hashed yet
    store.sweep()
    assert store.unhashed() == 0
    at_once, _ = make()
    at_once.apply(mut("k", b"v"))
    assert store.digest() == at_once.digest()


def test_sweep_leaves_a_key_written_again_meanwhile_for_a_later_turn() -> None:
    store, now = make()
    store.apply(mut("hot", b"1"))
    store.apply(mut("cold", b"1"))
    store.sweep()  # the two keys are turned over
    now.ms += SETTLE_MS - 10
    store.apply(mut("hot", b"2", now.ms))
    now.ms += 10
    store.sweep()
    assert store._live[b"cold"][-1] & 1  # folded
    assert not store._live[b"hot"][-1] & 1  # written 10 ms ago: left for later
    assert store.unhashed() >= 1
    for _ in range(2 * SETTLE_MS // 100 + 1):
        now.ms += 100
        store.sweep()
    assert store.unhashed() == 0
    at_once, _ = make()
    at_once.apply(mut("cold", b"1"))
    at_once.apply(mut("hot", b"2", T0 + SETTLE_MS - 10))
    assert store.digest() == at_once.digest()


def test_sweep_hashes_an_entry_stamped_far_ahead_of_its_clock_at_once() -> None:
    store, now = make()
    store.apply(mut("ahead", b"v", T0 + 3_600_000))  # a clock set back by an hour since
    store.sweep()  # turned over
    now.ms += SETTLE_MS
    store.sweep()
    assert store.unhashed() == 0


def test_digest_expires_due_keys_first() -> None:
    store, now = make()
    store.apply(mut("a", b"v"))
    store.apply(mut("b", b"v", deadline=T0 + 10))
    only_a, _ = make()
    only_a.apply(mut("a", b"v"))
    assert store.digest() != only_a.digest()
    now.ms = T0 + 10
    assert store.digest() == only_a.digest()


def test_digest_expires_every_due_key_however_it_was_written_last() -> None:
    store, now = make()
    rng = random.Random(3)
    last: dict[str, Mutation] = {}
    for i in range(3_000):  # deletes, writes without a deadline, deadlines moved
        key, kind = f"k{rng.randrange(500)}", rng.random()
        value = None if kind < 0.1 else b"v%d" % i
        deadline = 0 if kind < 0.3 else T0 + 5_000 + rng.randrange(20_000)
        last[key] = mut(key, value, T0 + i, deadline=deadline)
        store.apply(last[key])
    for step in range(0, 30_000, 2_500):
        now.ms = T0 + 5_000 + step
        if step % 5_000:
            store.sweep()  # sampled expiry and lazy reads take some keys first
            store.get("k1")
        expected, expected_now = make()
        expected_now.ms = now.ms
        for m in last.values():
            if m.value is not None and (not m.deadline or m.deadline > now.ms):
                expected.apply(m)
        assert store.digest() == expected.digest()
        assert len(store) == len(expected)


def test_rewriting_keys_with_far_deadlines_keeps_the_deadline_buckets_bounded() -> None:
    store, _ = make()
    for i in range(50_000):  # each write lands in another bucket now and then
        store.apply(mut(f"k{i % 10}", b"v", T0 + i, deadline=T0 + 86_400_000 + i))
    assert sum(map(len, store._due.values())) <= 2 * 4096 + 2 * 10


def test_many_overwrites_keep_the_pending_hash_list_bounded() -> None:
    store, _ = make()
    for i in range(20_000):
        store.apply(mut(f"k{i % 10}", str(i).encode(), T0 + i))
        if i % 7 == 0:
            store.sweep(hash_budget=3)  # some entries folded, then overwritten
    assert len(store._dirty) <= 2 * len(store) + 4096
    rebuilt, _ = make()
    for m in store.entries():
        rebuilt.apply(m)
    assert store.digest() == rebuilt.digest()


def test_entries_round_trip_rebuilds_the_same_store() -> None:
    store, now = make()
    store.apply(mut("a", b"1", T0, deadline=T0 + 500))
    store.apply(mut("b", b"2", T0 + 1, origin="z"))
    store.apply(mut("c", None, T0 + 2))
    store.apply(mut("d", b"4", T0 + 3, deadline=T0 + 100))
    now.ms = T0 + 100  # d is due but not yet collected
    got = set(store.entries())
    assert got == {
        Mutation("a", 0, pack(T0, 0), "a", b"1", T0 + 500),
        Mutation("z", 0, pack(T0 + 1, 0), "b", b"2", 0),
        Mutation("a", 0, pack(T0 + 2, 0), "c", None, 0),
        Mutation("a", 0, pack(T0 + 3, 0), "d", None, 0),
    }
    rebuilt = Store(now_ms=now)
    for m in got:
        rebuilt.apply(m)
    assert set(rebuilt.entries()) == got
    assert rebuilt.digest() == store.digest()
    assert len(rebuilt) == len(store) == 2
    assert rebuilt.stats()["bytes"] == store.stats()["bytes"]


def test_entries_is_a_snapshot_taken_when_called() -> None:
    store, _ = make()
    store.apply(mut("a", b"1"))
    store.apply(mut("b", b"2"))
    snapshot = store.entries()
    store.apply(mut("a", b"changed", T0 + 1))
    store.apply(mut("c", b"3", T0 + 1))
    store.apply(mut("b", None, T0 + 1))
    assert {(m.key, m.value) for m in snapshot} == {("a", b"1"), ("b", b"2")}


# -- constructor -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_keys": -1},
        {"max_keys": "10"},
        {"max_keys": 1.5},
        {"max_keys": True},
        {"max_memory": -1},
        {"max_memory": None},
        {"tombstone_horizon_ms": -1},
        {"tombstone_horizon_ms": 1e6},
        {"now_ms": 5},
    ],
)
def test_bad_constructor_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError) as info:
        Store(**kwargs)
    assert isinstance(info.value, ConfigError)


# -- properties ----------------------------------------------------------------

KEYS = "abc"
ORIGINS = "xyz"

MUTATIONS = st.lists(
    st.builds(
        lambda key, value, ms, logical, origin, deadline: Mutation(
            origin, 1, pack(T0 + ms, logical), key, value, deadline
        ),
        key=st.sampled_from(KEYS),
        value=st.one_of(st.none(), st.binary(max_size=4)),
        ms=st.integers(-2, 2),
        logical=st.integers(0, 2),
        origin=st.sampled_from(ORIGINS),
        deadline=st.sampled_from([0, 0, T0 - 1, T0, T0 + 1_000]),
    ),
    max_size=30,
    # one origin never stamps two different writes of a key with the same hlc
    unique_by=lambda m: (m.key, m.hlc, m.origin),
)


@given(st.data(), MUTATIONS)
@settings(max_examples=300)
def test_property_any_order_gives_the_same_state(data: st.DataObject, muts: list) -> None:
    first, _ = make()
    for m in muts:
        first.apply(m)
    shuffled = data.draw(st.permutations(muts))
    second, _ = make()
    for m in shuffled:
        second.apply(m)
    assert set(first.entries()) == set(second.entries())
    assert first.digest() == second.digest()
    assert len(first) == len(second)
    assert first.stats()["bytes"] == second.stats()["bytes"] == expected_bytes(first)
    # duplicates change nothing
    before = set(first.entries())
    assert not any(first.apply(m) for m in shuffled)
    assert set(first.entries()) == before


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("apply"), MUTATIONS.map(lambda ms: ms[:1]).filter(bool)),
        st.tuples(st.just("get"), st.sampled_from(KEYS)),
        st.tuples(st.just("tick"), st.integers(0, 1_500)),
        st.tuples(st.just("sweep"), st.integers(1, 5)),
        st.tuples(st.just("digest"), st.just(None)),
    ),
    max_size=40,
)


@given(OPS)
@settings(max_examples=300)
def test_property_matches_a_last_writer_wins_model(ops: list[tuple]) -> None:
    """Without eviction or tombstone collection the store is a LWW register per key."""
    store, now = make()
    winner: dict[str, Mutation] = {}
    for op, arg in ops:
        if op == "apply":
            m = arg[0]
            held = winner.get(m.key)
            newer = held is None or m.version() > held.version()
            assert store.apply(m) is newer
            if newer:
                winner[m.key] = m
        elif op == "get":
            store.get(arg)
        elif op == "tick":
            now.ms += arg
        elif op == "sweep":
            store.sweep(samples=arg)
        else:
            store.digest()
        for key in KEYS:
            w = winner.get(key)
            visible = w is not None and w.value is not None and not 0 < w.deadline <= now.ms
            assert (key in store) is visible
            assert value_of(store, key) == (w.value if visible else None)  # type: ignore[union-attr]
        assert store.stats()["bytes"] == expected_bytes(store)
        with_deadline = {k for k, raw in store._live.items() if store._entry(k, raw).deadline}
        assert with_deadline == set(store._expires) <= set(store._ttl_keys)


@given(OPS, st.integers(1, 3), st.integers(0, 2_000))
@settings(max_examples=200)
def test_property_limits_hold_after_every_write(
    ops: list[tuple], max_keys: int, max_memory: int
) -> None:
    store, now = make(max_keys=max_keys, max_memory=max_memory)
    for op, arg in ops:
        if op == "apply":
            store.apply(arg[0])
            assert len(store) <= max_keys
            stats = store.stats()
            live = stats["bytes"] - stats["tombstone_bytes"]
            assert not max_memory or live <= max_memory or len(store) == 0
            assert not max_memory or stats["tombstone_bytes"] <= max_memory // TOMBSTONE_SHARE
        elif op == "get":
            store.get(arg)
        elif op == "tick":
            now.ms += arg
        elif op == "sweep":
            store.sweep(samples=arg)
        assert store.stats()["bytes"] == expected_bytes(store)


_MUTATIONS = st.lists(
    st.builds(
        mut,
        key=st.sampled_from(["a", "b", "c", "d"]),
        value=st.one_of(st.none(), st.binary(max_size=8)),
        ms=st.integers(T0 - 5, T0 + 5),
        origin=st.sampled_from(["a", "b"]),
        deadline=st.sampled_from([0, T0 - 1, T0 + 1_000]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(mutations=_MUTATIONS, max_keys=st.sampled_from([0, 2]))
def test_apply_many_is_apply_in_order(mutations: list[Mutation], max_keys: int) -> None:
    one, _ = make(max_keys=max_keys)
    many, _ = make(max_keys=max_keys)
    changed = sum(one.apply(m) for m in mutations)
    assert many.apply_many(mutations) == changed
    assert many.digest() == one.digest() and many.stats() == one.stats()
    for key in "abcd":
        assert many.get(key) == one.get(key)


# -- memory limit: tombstones never crowd out live data (issue 13, point 2) ---------


KIB = 1024


def test_many_sets_under_max_memory_keep_live_data_and_the_last_set() -> None:
    """Evicted keys' tombstones used to count against the limit and were never
    evicted: live keys fell to 0 and every later SET vanished at once."""
    limit = 2 * KIB * KIB
    store, _ = make(max_memory=limit)
    value = b"v" * KIB
    for i in range(10_000):
        key = f"key:{i:08d}"
        store.apply(Mutation("o/1", i + 1, pack(T0, i), key, value, 0))
        assert value_of(store, key) == value, f"SET {i} is not readable right after"
    stats = store.stats()
    # the live data fills most of the limit, whatever the tombstones hold
    assert len(store) >= limit * 3 // 4 // live_bytes("key:00000000", value)
    assert stats["bytes"] <= limit + limit // 8  # tombstones have their own budget


def test_set_then_delete_pairs_leave_room_for_fresh_sets() -> None:
    """DEL tombstones used to fill max_memory: no fresh SET was readable."""
    limit = 512 * KIB
    store, _ = make(max_memory=limit)
    value = b"v" * KIB
    seq = 0
    for i in range(4_000):
        for v in (value, None):
            seq += 1
            store.apply(Mutation("o/1", seq, pack(T0, seq), f"pair:{i}", v, 0))
    fresh = []
    for i in range(20):
        seq += 1
        store.apply(Mutation("o/1", seq, pack(T0, seq), f"fresh:{i}", value, 0))
        fresh.append(f"fresh:{i}")
    assert [k for k in fresh if value_of(store, k) == value] == fresh
    assert store.stats()["tombstones"] <= limit // 8 // tomb_bytes("pair:0")


def test_tombstones_at_or_below_the_stable_frontier_are_collected() -> None:
    store, _ = make()
    store.apply(Mutation("o/1", 1, pack(T0, 0), "a", b"v", 0))
    store.apply(Mutation("o/1", 2, pack(T0 + 1, 0), "a", None, 0))  # DEL a: (o/1, 2)
    store.apply(Mutation("o/1", 3, pack(T0 + 2, 0), "b", None, 0))  # DEL b: (o/1, 3)
    store.apply(Mutation("p/1", 1, pack(T0 + 3, 0), "c", None, 0))  # DEL c: (p/1, 1)
    vv = {"o/1": 3, "p/1": 1}
    assert store.collect_stable({"o/1": 1}, vv) == 0
    assert store.collect_stable({"o/1": 2}, vv) == 1
    assert store.stats()["tombstones"] == 2 and store.stats()["collected"] == 1
    # b is re-set before it is stable: its live value is never dropped
    store.apply(Mutation("p/1", 2, pack(T0 + 4, 0), "b", b"back", 0))
    assert store.collect_stable({"o/1": 3, "p/1": 1}, vv) == 1  # c only
    assert value_of(store, "b") == b"back"
    assert store.stats()["tombstones"] == 0 and store.stats()["bytes"] == expected_bytes(store)


def test_a_newer_tombstone_is_not_collected_by_an_older_ones_turn() -> None:
    store, _ = make()
    store.apply(Mutation("o/1", 1, pack(T0, 0), "k", None, 0))
    store.apply(Mutation("p/1", 1, pack(T0 + 1, 0), "k", None, 0))  # newer DEL, other origin
    assert store.collect_stable({"o/1": 1}, {"o/1": 1, "p/1": 1}) == 0
    assert store.apply(Mutation("q/1", 1, pack(T0, 0), "k", b"old", 0)) is False
    assert store.collect_stable({"o/1": 1, "p/1": 1}, {"o/1": 1, "p/1": 1}) == 1
    assert store.stats()["tombstones"] == 0


def test_tombstones_without_a_seq_wait_for_the_vv_they_were_seen_under() -> None:
    """Snapshot and full-sync entries (seq 0), evictions and expiries: their
    entry's seq is unknown, so the vv at the next collection stands for it."""
    store, now = make(max_keys=1)
    store.apply(Mutation("o/1", 0, pack(T0, 0), "snap", None, 0))  # from a snapshot
    store.apply(Mutation("o/1", 4, pack(T0 + 1, 0), "a", b"v", 0))
    store.apply(Mutation("o/1", 5, pack(T0 + 2, 0), "b", b"v", 0))  # evicts a
    assert store.stats()["tombstones"] == 2
    assert store.collect_stable({"o/1": 4}, {"o/1": 5}) == 0  # both now wait for seq 5
    assert store.collect_stable({"o/1": 5}, {"o/1": 9}) == 2
    assert (
        store.apply(Mutation("o/1", 0, pack(T0, 0), "a", b"stale", 0)) is True
    )  # a miss, as Memcached


def test_tombstone_queue_stays_bounded_without_collection() -> None:
    store, _ = make()
    for i in range(20_000):
        store.apply(Mutation("o/1", 2 * i + 1, pack(T0, 2 * i), "k", None, 0))
        store.apply(Mutation("o/1", 2 * i + 2, pack(T0, 2 * i + 1), "k", b"v", 0))
    assert len(store._tq) <= 2 * store.stats()["tombstones"] + 8192


def test_non_ascii_keys_round_trip_through_every_view() -> None:
    store, now = make(max_keys=2)
    store.apply(mut("ключ", b"v", deadline=T0 + 10))
    store.apply(mut("键", b"w"))
    assert value_of(store, "ключ") == b"v" and store.ttl_ms("键") == -1 and "键" in store
    assert sorted(store.live_keys()) == sorted(["ключ", "键"])
    assert {m.key for m in store.entries()} == {"ключ", "键"}
    now.ms = T0 + 10
    store.sweep(samples=5)
    assert store.tombstone("ключ") is not None and "ключ" not in store
    store.apply(mut("ключ2", b"x"))
    store.apply(mut("ключ3", b"y"))  # evicts 键, the least recently used
    assert store.tombstone("键") is not None and store.version("键") == (pack(T0, 0), "a")
    assert store.stats()["bytes"] == expected_bytes(store)


def test_drop_unlisted_takes_only_keys_written_wholly_by_covered_origins() -> None:
    """A full sync's image lacks a key it deleted and collected (seed 4100011199)."""

    def counter(key: str, slot: str) -> Mutation:
        return Mutation("a", 0, pack(T0, 9), key, (pack(T0, 1), "a", 0, 5, ((slot, 1, 2),)), 0)

    writes = [
        mut("small", b"v"),
        mut("big", b"x" * 2000, deadline=T0 + 60_000),
        mut("listed", b"l"),
        mut("other", b"o", origin="b"),
        counter("c-mine", "a"),
        counter("c-theirs", "b"),
    ]
    kept = [w for w in writes if w.key in ("listed", "other", "c-theirs")]
    store, _ = make(max_memory=1 << 20)
    store.apply_many(writes)
    store.digest()  # every entry folded: a dropped one must leave the digest
    assert store.drop_unlisted({"listed"}, {"a"}) == 3
    assert sorted(store.live_keys()) == ["c-theirs", "listed", "other"]
    expected, _ = make(max_memory=1 << 20)
    expected.apply_many(kept)
    assert store.digest() == expected.digest()
    assert store.stats()["bytes"] == expected_bytes(store) == expected.stats()["bytes"]
    assert store.ttl_ms("big") == -2 and store.drop_unlisted(set(), {"zzz"}) == 0
