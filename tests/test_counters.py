"""Counters that lose no increment (issue 18, point 2): merge rules, then real nodes."""

from __future__ import annotations

import random
import threading

import msgpack
import pytest

from mesh.core import counters
from mesh.core.clock import HybridClock
from mesh.core.commands import CommandExecutor
from mesh.core.errors import NotInteger, ProtocolError
from mesh.core.mutation import Mutation
from mesh.core.peerfields import entries as check_entries
from mesh.core.store import Store
from mesh.core.wire import E_NOT_INTEGER, Request
from tests.conftest import wait_converged, wait_for

NOW = 1_700_000_000_000


class Origin:
    """One node's command executor over its own store (no network)."""

    def __init__(self, name: str, now: list[int]) -> None:
        self.store = Store(now_ms=lambda: now[0])
        clock = HybridClock(wall=lambda: now[0])
        self.cmd = CommandExecutor(self.store, clock, name, 0, lambda: now[0], dict)

    def run(self, op: str, *args):
        return self.cmd.execute(Request(1, op, args))

    def sent(self) -> list[Mutation]:
        return self.cmd.take_pending()


def _value(store: Store, key: str = "k") -> bytes | None:
    entry = store.get(key, record_stats=False)
    return None if entry is None else entry.value


def test_concurrent_increments_merge_in_any_order():
    now = [NOW]
    nodes = [Origin(f"n{i}/1", now) for i in range(3)]
    sent: list[Mutation] = []
    rng = random.Random(7)
    expected = 0
    for step in range(300):
        node = rng.choice(nodes)
        delta = rng.randint(-5, 9)
        expected += delta
        node.run("INCRBY", "k", delta)
        sent += node.sent()
        if step % 7 == 0:  # some deliveries between nodes, in a random order
            for other in nodes:
                other.store.apply_many(rng.sample(sent, k=len(sent) // 2))
        now[0] += rng.randint(0, 2)
    digests = set()
    for _ in range(5):
        store = Store(now_ms=lambda: now[0])
        batch = sent + rng.sample(sent, k=50)  # duplicates change nothing
        rng.shuffle(batch)
        store.apply_many(batch)
        assert _value(store) == b"%d" % expected
        digests.add(store.digest())
    for node in nodes:
        node.store.apply_many(sent)
        assert _value(node.store) == b"%d" % expected
        digests.add(node.store.digest())
    assert len(digests) == 1


@pytest.mark.parametrize("seed", range(150))
def test_any_order_of_counter_and_plain_writes_gives_one_state(seed):
    """INCRBY, SET, DEL and EXPIRE of a few keys on three nodes that sync now and then:
    every permutation of all their mutations, with duplicates, ends in the same state."""
    rng = random.Random(seed)
    now = [NOW]
    nodes = [Origin(f"n{i}/1", now) for i in range(3)]
    sent: list[Mutation] = []
    for _ in range(120):
        node, key = rng.choice(nodes), rng.choice("ab")
        r = rng.random()
        try:
            if r < 0.6:
                node.run("INCRBY", key, rng.randint(-3, 5))
            elif r < 0.75:
                node.run("SET", key, rng.choice([b"7", b"x", b"-2"]), 0, False, False)
            elif r < 0.9:
                node.run("DEL", [key])
            else:
                node.run("EXPIRE", key, rng.choice([5, 50_000]))
        except ProtocolError:
            pass  # NOT_INTEGER: nothing written
        sent += node.sent()
        if rng.random() < 0.2:
            other = rng.choice(nodes)
            other.store.apply_many(rng.sample(sent, k=len(sent) * 2 // 3))
        now[0] += rng.randint(0, 3)
    states = set()
    for _ in range(6):
        store = Store(now_ms=lambda: now[0])
        batch = sent + rng.sample(sent, k=len(sent) // 4)
        rng.shuffle(batch)
        store.apply_many(batch)
        states.add((store.digest(), _value(store, "a"), _value(store, "b")))
    for node in nodes:
        node.store.apply_many(sent)
        states.add((node.store.digest(), _value(node.store, "a"), _value(node.store, "b")))
    assert len(states) == 1, states


def test_set_and_del_newer_than_the_base_start_over():
    now = [NOW]
    a, b = Origin("a/1", now), Origin("b/1", now)
    a.run("SET", "k", b"10", 0, False, False)
    b.store.apply_many(a.sent())
    assert a.run("INCRBY", "k", 5) == 15  # a plain int64 becomes the base
    assert b.run("INCRBY", "k", 1) == 11
    mine, theirs = a.sent(), b.sent()
    a.store.apply_many(theirs)
    b.store.apply_many(mine)
    assert _value(a.store) == _value(b.store) == b"16"
    now[0] += 1
    assert a.run("DEL", ["k"]) == 1
    now[0] += 1
    concurrent = b.run("INCRBY", "k", 100)  # b has not seen the DEL
    assert concurrent == 116
    deleted, late = a.sent(), b.sent()
    a.store.apply_many(late)
    b.store.apply_many(deleted)
    assert _value(a.store) is None and _value(b.store) is None  # the DEL wins
    assert a.run("INCRBY", "k", 2) == 2  # a counter after the DEL starts at 0
    b.store.apply_many(a.sent())
    assert b.run("INCRBY", "k", 3) == 5
    a.store.apply_many(b.sent())
    assert _value(a.store) == b"5"
    now[0] += 1
    a.run("SET", "k", b"x", 0, False, False)
    with pytest.raises(ProtocolError) as info:
        a.run("INCRBY", "k", 1)
    assert info.value.code == E_NOT_INTEGER and not a.sent()[1:]


@pytest.mark.parametrize(
    "value", [b"abc", b"", b"01", b"-0", b" 1", b"1.5", b"9223372036854775808"]
)
def test_incr_of_a_value_that_is_not_an_int64_is_refused(value):
    node = Origin("a/1", [NOW])
    node.run("SET", "k", value, 0, False, False)
    node.sent()
    with pytest.raises(ProtocolError) as info:
        node.run("INCRBY", "k", 1)
    assert info.value.code == E_NOT_INTEGER
    assert _value(node.store) == value and not node.sent()


def test_getmeta_of_a_counter_says_when_it_was_last_incremented():
    now = [NOW]
    node = Origin("a/1", now)
    node.run("INCRBY", "k", 1)
    now[0] += 5000
    node.run("INCRBY", "k", 1)
    assert node.run("GETMETA", "k") == [b"2", -1, NOW + 5000]


def test_overflow_is_refused_and_changes_nothing():
    node = Origin("a/1", [NOW])
    assert node.run("INCRBY", "k", counters.INT64_MAX) == counters.INT64_MAX
    with pytest.raises(ProtocolError):
        node.run("INCRBY", "k", 1)
    assert node.run("INCRBY", "k", counters.INT64_MIN) == -1
    assert _value(node.store) == b"-1"


def test_expire_rebases_the_counter_and_wins_over_concurrent_increments():
    now = [NOW]
    a, b = Origin("a/1", now), Origin("b/1", now)
    a.run("INCRBY", "k", 1)
    b.store.apply_many(a.sent())
    assert b.run("INCRBY", "k", 1) == 2  # concurrent with the EXPIRE below: lost
    now[0] += 1
    assert a.run("EXPIRE", "k", 10_000)
    mine, theirs = a.sent(), b.sent()
    a.store.apply_many(theirs)
    b.store.apply_many(mine)
    assert _value(a.store) == _value(b.store) == b"1"
    assert a.store.ttl_ms("k") > 0 and a.store.digest() == b.store.digest()
    assert b.run("INCRBY", "k", 1) == 2 and b.store.ttl_ms("k") > 0  # INCR keeps the TTL
    a.store.apply_many(b.sent())
    assert _value(a.store) == b"2" and a.store.digest() == b.store.digest()
    now[0] += 20_000
    assert _value(a.store) is None
    late = Store(now_ms=lambda: now[0])  # the states arriving after the deadline: a tombstone
    late.apply_many(mine + theirs)
    assert _value(late) is None
    assert a.run("INCRBY", "k", 1) == 1  # after it expired: a new counter
    late.apply_many(a.sent())
    assert _value(late) == b"1"
    assert a.run("PERSIST", "k") is False and a.run("EXPIRE", "k", 50)
    assert a.run("PERSIST", "k") is True and a.store.ttl_ms("k") == -1


def test_snapshot_and_log_forms_rebuild_the_same_counter():
    now = [NOW]
    a, b = Origin("a/1", now), Origin("b/1", now)
    a.run("INCRBY", "k", 4)
    b.run("INCRBY", "k", 5)
    a.store.apply_many(b.sent())
    rebuilt = Store(now_ms=lambda: now[0])
    rebuilt.apply_many(a.store.entries())
    assert _value(rebuilt) == b"9" and rebuilt.digest() == a.store.digest()
    # the record form: msgpack out, decoded as the log and peers decode it
    records = [msgpack.packb(m) for m in a.sent()]
    decoded = tuple(msgpack.unpackb(r, use_list=False) for r in records)
    assert check_entries(decoded) == decoded
    assert Mutation.from_record(msgpack.unpackb(records[0])).value == decoded[0][4]
    fresh = Store(now_ms=lambda: now[0])
    fresh.apply_many(decoded)
    assert _value(fresh) == b"4"


@pytest.mark.parametrize(
    "bad",
    [
        (1, "o", 0, 0, (("s", 0, 1),)),  # ops 0
        (1, "o", 0, 0, (("b", 1, 1), ("a", 1, 1))),  # unsorted slots
        (1, "o", 0, 0, (("a", 1, 1), ("a", 2, 1))),  # a slot twice
        (1, "o", 0, 2**63, ()),  # base out of range
        (1, "o", 2, 0, ()),  # base kind not 0 or 1
        (1, "o", True, 0, ()),
        (-1, "o", 0, 0, ()),  # base hlc out of range
        (1, 2, 0, 0, ()),
        (1, "o", 0, 0),
        (1, "o", 0, 0, (), 1),
    ],
)
def test_a_malformed_counter_state_from_a_peer_is_refused(bad):
    with pytest.raises(ProtocolError):
        check_entries((("n1/1", 1, 5, "k", bad, 0),))
    with pytest.raises(ValueError):
        Mutation.from_record(["n1/1", 1, 5, "k", list(bad), 0])


# ------------------------------------------------------------------ real nodes


def test_two_threads_incr_on_two_nodes_lose_nothing(procs):
    """The acceptance line: 2 x 5,000 INCRs of one key on two nodes read 10,000 everywhere."""
    nodes = procs.cluster(3, extra=["--fsync", "interval"])  # the round trips, not the disk
    for n in nodes:
        n.wait_ready()
    errors: list[BaseException] = []

    def hammer(node) -> None:
        try:
            with node.client(timeout=10.0) as c:
                for _ in range(5000):
                    c.incr("hits")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in nodes[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    wait_converged(nodes)
    for n in nodes:
        with n.client() as c:
            assert c.get("hits") == b"10000"
            assert c.incr("hits", 0) == 10000
    with procs.balancer(nodes).client() as c:  # INCRBY is a write to the balancer too
        assert c.incr("hits") == 10001
    with nodes[0].client() as c:
        c.set("plain", "text")
        with pytest.raises(NotInteger):
            c.incr("plain")
        assert c.decr("down", 3) == -3

    def replicated() -> bool:
        with nodes[2].client() as c:
            return c.get("down") == b"-3"

    wait_for(replicated, 10, "the DECR replicated")


# ------------------------------------------------------------------ on disk


def test_counters_survive_the_log_and_snapshots_and_old_files_still_read(tmp_path, monkeypatch):
    """Format version 2 files carry counters; version 1 files (no counters) read as before."""
    from mesh.storage import log as log_module
    from mesh.storage import segment, snapshot
    from mesh.storage.log import Log

    old = tmp_path / "old"
    monkeypatch.setattr(segment, "FORMAT_VERSION", 1)  # what the previous release wrote
    monkeypatch.setattr(snapshot, "FORMAT_VERSION", 1)
    monkeypatch.setattr(log_module, "FORMAT_VERSION", 1)
    plain = [Mutation("a/1", i, NOW << 16 | i, f"k{i}", b"v", 0) for i in range(1, 4)]
    with Log(old) as log:
        log.append(plain[:2])
        log.flush()
        log.write_snapshot(iter(plain[:1]), {"vv": {"a/1": 1}})
        log.append(plain[2:])
        log.flush()
    monkeypatch.undo()
    assert {p.read_bytes()[4:6] for p in (old / "log").glob("*.log")} == {b"\x00\x01"}
    now = [NOW]
    a, b = Origin("a/1", now), Origin("b/1", now)
    a.run("INCRBY", "c", 5)
    b.run("INCRBY", "c", -2)
    with Log(old) as log:  # an old folder opens, and takes counters from now on
        assert [m.key for m in log.replay()] == ["k1", "k2", "k3"]
        log.append(a.sent() + b.sent())
        log.flush()
        store = Store(now_ms=lambda: now[0])
        store.apply_many(log.replay())
        assert _value(store, "c") == b"3" and _value(store, "k3") == b"v"
        log.write_snapshot(store.entries(), {"vv": {}})
    with Log(old) as log:
        meta, entries = log.load_snapshot()
        rebuilt = Store(now_ms=lambda: now[0])
        rebuilt.apply_many(entries)
        assert _value(rebuilt, "c") == b"3" and rebuilt.digest() == store.digest()
    snaps = sorted((old / "snapshots").glob("*.snap"))
    assert snaps[-1].read_bytes()[4:6] == b"\x00\x02"


def test_a_due_counter_leaves_the_same_tombstone_in_a_snapshot_as_when_it_expires():
    """A snapshot or full-sync image taken once a counter's deadline passed, before
    the store expired it, carried a tombstone at its newest write's version where
    its expiry leaves one at its base's: the receiver's tombstone then outranked a
    write that the sender's let through (found with TTLs on counters in the sim)."""
    now = [NOW]
    a = Origin("a/1", now)
    a.run("INCRBY", "k", 1)
    now[0] += 1
    assert a.run("EXPIRE", "k", 100)
    now[0] += 1
    a.run("INCRBY", "k", 1)  # newer than the base the EXPIRE gave it
    base = (NOW + 1, "a/1")
    now[0] += 1_000
    [imaged] = list(a.store.entries())
    assert imaged.value is None
    assert _value(a.store) is None  # expired by the read
    assert (imaged.hlc >> 16, imaged.origin) == base == (a.store.version("k")[0] >> 16, "a/1")
    rebuilt = Store(now_ms=lambda: now[0])
    rebuilt.apply_many([imaged])
    assert rebuilt.tombstone("k") == a.store.tombstone("k")
