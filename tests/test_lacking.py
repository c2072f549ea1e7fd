"""Catch-up's one-pass read of the log (mesh.storage.lacking) and the snapshot chunks it serves."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import msgpack
import pytest

from mesh.core import catchup
from mesh.core.catchup import Batch, Fetch, SnapshotSessions, read_batch
from mesh.core.mutation import Mutation
from mesh.core.store import Store
from mesh.storage.lacking import read_lacking
from mesh.storage.log import Log, LogCorruptError
from tests.log_writer_child import record
from tests.test_log import SmallMarkLog, fill, flip, segments


@pytest.fixture
def log(tmp_path: Path):
    """A log of 600 records of 3 interleaved origins over several segments, small marks."""
    with SmallMarkLog(tmp_path, fsync="never", segment_bytes=4096) as log:
        yield log


def model(
    records: list[Mutation], wants: dict[str, tuple[int, int]], max_entries: int, max_bytes: int
) -> tuple[list[tuple], bool]:
    out, size = [], 0
    for m in records:
        first, last = wants.get(m.origin, (1, 0))
        if first <= m.seq <= last:
            out.append(tuple(m))
            size += len(msgpack.packb(m))
            if size >= max_bytes or len(out) >= max_entries:
                return out, True
    return out, False


def test_read_lacking_is_a_filter_of_the_log_in_log_order(log: Log, tmp_path: Path) -> None:
    records = fill(log, 600, batch=7)
    assert len(segments(tmp_path)) > 3
    origins = sorted({m.origin for m in records})
    cases = [
        {origins[0]: (1, 200)},
        {origins[0]: (1, 200), origins[1]: (1, 200), origins[2]: (1, 200)},
        {origins[0]: (150, 180), origins[2]: (3, 199)},
        {origins[1]: (199, 200), origins[2]: (1, 1)},
        {origins[1]: (201, 300)},  # past what the log holds
        {"nobody/0": (1, 10)},
    ]
    for wants in cases:
        for max_entries, max_bytes in ((10**6, 1 << 30), (17, 1 << 30), (10**6, 500), (1, 1)):
            got = read_lacking(log, wants, max_entries, max_bytes)
            assert got == model(records, wants, max_entries, max_bytes), (wants, max_entries)


def test_read_lacking_raises_on_a_corrupt_record(tmp_path: Path) -> None:
    with Log(tmp_path, fsync="never", segment_bytes=4096) as log:
        fill(log, 300, batch=5)
        first = segments(tmp_path)[0]
        flip(first, 200)
        with pytest.raises(LogCorruptError):
            read_lacking(log, {record(0).origin: (1, 100)}, 10**6, 1 << 30)


def test_read_batch_in_one_pass_answers_as_origin_by_origin(log: Log) -> None:
    fill(log, 600, batch=7)
    vv = log.max_seqs()
    reader = partial(read_lacking, log)
    for theirs in ({}, {o: 50 for o in vv}, {**vv, "node-1/inc": 10}, dict(vv)):
        for max_entries in (16384, 100):
            fetch = Fetch(7, dict(theirs))
            one = read_batch(log, fetch, vv, {}, max_entries, reader)
            each = read_batch(log, fetch, vv, {}, max_entries)
            assert not one.need_full and not each.need_full
            lacking = sum(s - theirs.get(o, 0) for o, s in vv.items())
            if max_entries >= lacking:
                assert sorted(one.entries) == sorted(each.entries)
                assert len(one.entries) == lacking and not one.more and not each.more
            else:
                assert len(one.entries) == len(each.entries) == max_entries
                assert one.more and each.more


def test_read_batch_in_one_pass_asks_for_a_snapshot_past_the_log(tmp_path: Path) -> None:
    with Log(tmp_path, fsync="never") as log:
        origin = "node-0/inc"
        log.append([Mutation(origin, s, 100 + s, f"k{s}", b"v", 0) for s in range(5, 9)])
        reader = partial(read_lacking, log)
        vv = {origin: 8}
        assert read_batch(log, Fetch(1, {origin: 2}), vv, {}, 100, reader).need_full
        assert read_batch(log, Fetch(1, {origin: 1}), vv, {origin: 4}, 100, reader).need_full
        batch = read_batch(log, Fetch(1, {origin: 4}), vv, {}, 100, reader)
        assert [e[1] for e in batch.entries] == [5, 6, 7, 8] and not batch.more


@pytest.mark.parametrize("value_bytes", [0, 100, 300_000])
def test_snapshot_chunks_are_bounded_and_add_up_to_the_store(value_bytes: int) -> None:
    store = Store(now_ms=lambda: 1_000)
    store.apply_many(
        [("a/1", s, s, f"key{s}", b"x" * value_bytes or None, 0) for s in range(1, 1001)]
    )
    sessions, ids = SnapshotSessions(), iter(range(1, 100))
    got: list[Mutation] = []
    fetch = Fetch(1, {}, True)
    while True:
        batch: Batch = sessions.serve("n2", fetch, 0, store, {"a/1": 1000}, ids.__next__, 300)
        size = sum(len(m.key) + len(m.value or b"") for m in batch.entries)
        last = batch.entries[-1]
        assert 1 <= len(batch.entries) <= 300
        assert size - len(last.key) - len(last.value or b"") < catchup.FETCH_BYTES
        got += batch.entries
        if not batch.more:
            break
        fetch = Fetch(1, {}, True, batch.session, batch.cursor)
    assert got == list(store.entries())
