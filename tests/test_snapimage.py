"""The snapshot after a full sync is written from the image received when the store was empty."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mesh.core import peerwire, snapimage
from mesh.core.catchup import Batch
from mesh.core.mutation import PackedRecords
from mesh.core.replication import Replica
from mesh.core.store import Store
from mesh.storage import snapblocks, snapshot
from mesh.storage.log import Log, LogCorruptError
from mesh.storage.records import DECODE_ERRORS
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


def wire_full_sync(x: Replica, s: Replica, lose: int = -1) -> tuple[object, list]:
    """``x``'s full sync from ``s`` with each chunk through the wire, as a node receives
    it (its entries' bytes kept, except for chunk ``lose``); what to snapshot, drained."""
    [(_, fetch)] = x.poll(0)
    for t in range(1, 50):
        frame = peerwire.encode_batch(s.serve("x", fetch, t))
        kind, batch = peerwire.parse_reply(peerwire.decode(frame, 1 << 30))
        assert kind == peerwire.BATCH and batch.snapshot
        if t != lose and snapimage.store_takes_image(x):
            batch = dataclasses.replace(batch, packed=peerwire.packed_batch_entries(frame))
        image = snapimage.last_chunk_image(x, "s", batch)
        packed = snapimage.packed_image(x, "s", batch, image)
        nxt = x.prefetch("s", batch)
        done = x.on_batch("s", batch, t)
        if x.take_snapshot_due():
            return snapimage.snapshot_entries(packed or image, done), done
        fetch = nxt or x.peers["s"].next_fetch
    raise AssertionError("no full sync")


def test_the_chunks_bytes_make_the_snapshot_and_load_back_the_same(tmp_path: Path) -> None:
    s = serving(10)
    x = replica("x", ["s"])
    written, drained = wire_full_sync(x, s)
    assert not drained and isinstance(written, PackedRecords)
    assert written.total == 10 and len(written.chunks) == 3  # 4 entries a chunk
    with Log(tmp_path / "log") as log:
        path = log.write_snapshot(written, {"vv": x.vv})
        assert path.read_bytes()[4:8] == b"\x00\x02\x00\x02"  # version 2, RECORD_BLOCKS
        found = snapshot.check(path)
        assert found is not None and found.record_blocks and found.count == 10
        meta, loaded = log.load_snapshot()  # type: ignore[misc]
        entries = list(loaded)
    again = Store(now_ms=lambda: T0, seed=0)
    again.apply_many(entries)
    assert meta["vv"] == x.vv
    assert len(entries) == 10  # one a tombstone: k1's DEL travels in the image
    assert again.digest() == x.store.digest() and len(again) == len(x.store) == 9


def test_a_chunk_without_its_bytes_writes_the_snapshot_from_the_entries() -> None:
    for lose in (1, 2, 3):
        written, _ = wire_full_sync(replica("x", ["s"]), serving(10), lose=lose)
        assert isinstance(written, list) and len(written) == 10, lose


def test_a_snapshot_started_over_keeps_only_the_new_chunks_bytes() -> None:
    s = serving(10)
    x = replica("x", ["s"])
    [(_, fetch)] = x.poll(0)
    first = s.serve("x", fetch, 1)
    frame = peerwire.encode_batch(first)
    x.on_batch("s", dataclasses.replace(first, packed=peerwire.packed_batch_entries(frame)), 1)
    assert len(x.peers["s"].packed) == 1
    x.peers["s"].fetching = fetch  # the same first chunk again: a snapshot started over
    x.on_batch("s", first, 2)
    assert x.peers["s"].packed == [(4, None)]


def test_the_entries_bytes_of_a_batch_frame_are_its_packed_entries() -> None:
    entries = [("o/1", 0, 5, "k", b"v" * 300, 0), ("o/1", 0, 6, "q", None, 7)]
    for request_id in (1, 300, 1 << 40):
        batch = Batch(request_id, entries, {"o/1": 1 << 33}, True, True, 9, 2)
        frame = peerwire.encode_batch(batch)
        assert peerwire.packed_batch_entries(frame) == peerwire.pack_entries(entries)


def test_a_changed_record_block_raises_and_a_bad_one_does_not_decode(tmp_path: Path) -> None:
    chunk = peerwire.pack_entries([("o/1", 0, 5, "k", b"v", 0), ("o/1", 0, 6, "q", None, 0)])
    with Log(tmp_path) as log:
        path = log.write_snapshot(PackedRecords([chunk, chunk], 4), {})
        found = snapshot.check(path)
        assert found is not None and found.count == 4
        assert [m[3] for m in found.entries()] == ["k", "q", "k", "q"]
        data = bytearray(path.read_bytes())
        data[found.start + 12] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(LogCorruptError, match="CRC mismatch"):
            list(found.entries())
        assert snapshot.check(path) is None
    for payload in (b"\x91\x93\x00\x00\x00", b"\x90\x00", b"\x05", chunk[:-1]):
        with pytest.raises((ValueError, TypeError, *DECODE_ERRORS)):
            snapblocks.decode_records(payload)
