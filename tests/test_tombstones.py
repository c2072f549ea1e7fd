"""Unit tests for mesh.core.tombstones: the stable frontier and the tombstone queue."""

from __future__ import annotations

from collections.abc import Callable

from mesh.core.clock import HybridClock, pack
from mesh.core.mutation import Mutation
from mesh.core.peerview import DEFAULT_MAX_OFFSET_MS
from mesh.core.replication import Replica
from mesh.core.store import Store
from mesh.core.tombstones import StableFrontier
from tests.simmodel import SimLog

T0 = 1_700_000_000_000


def test_a_lone_node_makes_its_vv_stable_one_round_later() -> None:
    stable = StableFrontier()
    assert stable.advance({"a/1": 5}, [], []) == {}
    assert stable.advance({"a/1": 7}, [], []) == {"a/1": 5}
    assert stable.advance({"a/1": 7}, [], []) == {"a/1": 7}


def test_the_frontier_is_what_every_member_logged() -> None:
    stable = StableFrontier()
    vv = {"a/1": 10, "b/1": 4}
    logged = [{"a/1": 8, "b/1": 4}, {"a/1": 9, "b/1": 2}]
    stable.advance(vv, logged, logged)
    assert stable.advance(vv, logged, logged) == {"a/1": 8, "b/1": 2}


def test_a_member_never_heard_keeps_every_tombstone() -> None:
    stable = StableFrontier()
    vv = {"a/1": 10}
    for _ in range(3):
        assert stable.advance(vv, [{"a/1": 10}, {}], [{"a/1": 10}, {}]) == {}


def test_the_frontier_waits_until_this_node_has_what_the_members_had() -> None:
    """Writes older than a tombstone may still be on their way from a member
    that made them before it saw the tombstone: its vv counts them."""
    stable = StableFrontier()
    vv = {"o/1": 1}
    peers = [{"o/1": 1, "x/1": 3}]
    stable.advance(vv, peers, peers)
    assert stable.advance(vv, peers, peers) == {}  # x/1's 3 entries are not here yet
    vv["x/1"] = 3
    assert stable.advance(vv, peers, peers) == {"o/1": 1}


def test_a_late_older_set_cannot_revive_a_key_deleted_before_the_frontier() -> None:
    store = Store(now_ms=lambda: T0)
    stable = StableFrontier()
    vv = {"o/1": 1}
    store.apply(Mutation("o/1", 1, pack(T0 + 10, 0), "k", None, 0))  # DEL k
    # x made an older SET of k before it saw the DEL; its heartbeat says so
    peer = {"o/1": 1, "x/1": 1}
    for _ in range(3):
        assert store.collect_stable(stable.advance(vv, [peer], [peer]), vv) == 0
    assert store.apply(Mutation("x/1", 1, pack(T0 + 5, 0), "k", b"old", 0)) is False
    vv["x/1"] = 1
    assert store.collect_stable(stable.advance(vv, [peer], [peer]), vv) == 1
    assert store.stats()["tombstones"] == 0 and "k" not in store


def replica_with_a_tombstone(
    settle_ms: int, wall: Callable[[], int] = lambda: T0 + 2000
) -> tuple[Replica, StableFrontier]:
    """Node x, one peer p, a DEL of k (stamped T0 + 10) everyone logged: collectable but
    for the settle rule (and the clock-offset horizon, until ``wall`` passes it)."""
    store = Store(now_ms=lambda: T0)
    x = Replica("x", "x/1", store, SimLog(), HybridClock(wall), peers=["p"], settle_ms=settle_ms)
    x.commit_local([Mutation("x/1", 1, pack(T0 + 10, 0), "k", None, 0)])
    store.apply(Mutation("x/1", 1, pack(T0 + 10, 0), "k", None, 0))
    return x, StableFrontier()


def test_nothing_is_collected_until_every_member_is_heard_settle_ms_after_a_new_origin() -> None:
    """A PUB of an incarnation gone may still be on its way (seed 3100014889): after a
    member is first heard under an origin, every member must be heard again
    ``settle_ms`` later before a tombstone goes."""
    x, stable = replica_with_a_tombstone(settle_ms=1000)
    vv = {"x/1": 1}
    x.on_heartbeat("p", "p/1", "ready", vv, 0)
    for now in (10, 500, 999):
        x.on_heartbeat("p", "p/1", "ready", vv, now)
        assert stable.collect(x) == 0
    x.on_heartbeat("p", "p/2", "ready", vv, 1000)  # p came back as a new incarnation
    for now in (1500, 1999):
        x.on_heartbeat("p", "p/2", "ready", vv, now)
        assert stable.collect(x) == 0
    x.on_heartbeat("p", "p/2", "ready", vv, 2000)
    stable.collect(x)  # the frontier taken: stable at the next round
    assert stable.collect(x) == 1 and "k" not in x.store


def test_a_tombstone_within_the_clock_offset_of_now_is_kept() -> None:
    """A member whose clock is behind (up to the offset the clock guard lets through)
    stamps a new write below a DEL it follows: while the tombstone is held everywhere
    the DEL wins alike, but collected on some nodes only, those take the write and the
    others refuse it for good (seeds 6500051333, 6500070039, 6600034061)."""
    wall = [T0]
    x, stable = replica_with_a_tombstone(settle_ms=0, wall=lambda: wall[0])
    vv = {"x/1": 1}
    for now in (0, 10, 20):
        x.on_heartbeat("p", "p/1", "ready", vv, now)
        assert stable.collect(x) == 0  # stamped T0 + 10: within 1000 ms of the wall
    wall[0] = T0 + 10 + DEFAULT_MAX_OFFSET_MS
    assert stable.collect(x) == 0 and x.store.stats()["tombstones"] == 1  # not below yet
    wall[0] = T0 + 11 + DEFAULT_MAX_OFFSET_MS
    x.on_heartbeat("p", "p/1", "ready", vv, 30)
    assert stable.collect(x) == 1 and x.store.stats()["tombstones"] == 0
