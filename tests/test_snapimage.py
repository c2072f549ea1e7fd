"""The snapshot after a full sync is written from the image received when the store was empty."""

from __future__ import annotations

from pathlib import Path

from mesh.core import snapimage
from mesh.core.catchup import Batch
from mesh.core.replication import Replica
from mesh.core.store import Store
from mesh.storage.log import Log
from tests.test_simulation import T0, mut, replica


def full_sync(x: Replica, s: Replica) -> tuple[list | None, list]:
    """Run ``x``'s full sync from ``s``; the image of its last chunk and what that drained."""
    [(_, fetch)] = x.poll(0)
    assert fetch.full
    for t in range(1, 50):
        batch = s.serve("x", fetch, t)
        image = snapimage.last_chunk_image(x, "s", batch)
        assert image is None or not batch.more
        nxt = x.prefetch("s", batch)
        done = x.on_batch("s", batch, t)
        if x.take_snapshot_due():
            return image, done
        fetch = nxt or x.peers["s"].next_fetch
    raise AssertionError("no full sync")


def serving(n: int) -> Replica:
    s = replica("s", ["x"], fetch_entries=4)
    s.receive([mut(i, f"k{i}", b"v%d" % i) for i in range(1, n + 1)], 0)
    s.receive([mut(n + 1, "k1", None)], 0)  # a tombstone travels too
    return s


def test_the_image_is_what_the_store_holds_and_loads_back_the_same(tmp_path: Path) -> None:
    s = serving(10)
    x = replica("x", ["s"])
    image, drained = full_sync(x, s)
    entries = snapimage.snapshot_entries(image, drained)
    assert entries is not None and len(entries) == 10
    assert sorted(entries) == sorted(tuple(m) for m in x.store.entries())
    with Log(tmp_path / "log") as log:
        log.write_snapshot(entries, {"vv": x.vv})
        meta, loaded = log.load_snapshot()  # type: ignore[misc]
        again = Store(now_ms=lambda: T0, seed=0)
        again.apply_many(list(loaded))
    assert meta["vv"] == x.vv
    assert again.digest() == x.store.digest() and len(again) == len(x.store) == 9


def test_no_image_into_a_store_that_held_something() -> None:
    s = serving(10)
    x = replica("x", ["s"])
    x.store.apply_many([mut(1, "mine", b"old", origin="x/1")])
    x.vv.clear()  # holds nothing by its vv: a full sync
    image, _ = full_sync(x, s)
    assert image is None


def test_no_image_when_completing_it_drained_more() -> None:
    assert snapimage.snapshot_entries([("o/1", 0, 1, "k", b"v", 0)], [mut(2, "k", b"w")]) is None


def test_no_image_of_a_counter_or_a_chunk_not_the_last() -> None:
    x = replica("x", ["s"])
    [(_, fetch)] = x.poll(0)
    x.peers["s"].fetching = fetch
    state = (1, "o/1", 0, 0, ())  # a counter's state travels as an array
    counter = Batch(fetch.request_id, [("o/1", 0, 5, "c", state, 0)], {"o/1": 1}, False, True, 1, 1)
    assert snapimage.last_chunk_image(x, "s", counter) is None
    plain = Batch(fetch.request_id, [("o/1", 0, 5, "k", b"v", 0)], {"o/1": 1}, False, True, 1, 1)
    assert snapimage.last_chunk_image(x, "s", plain) == [("o/1", 0, 5, "k", b"v", 0)]
    more = Batch(fetch.request_id, [("o/1", 0, 5, "k", b"v", 0)], {"o/1": 1}, True, True, 1, 1)
    assert snapimage.last_chunk_image(x, "s", more) is None
