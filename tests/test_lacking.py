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
from mesh.storage import lacking
from mesh.storage.lacking import read_lacking
from mesh.storage.log import Log, LogCorruptError
from tests.log_writer_child import record
from tests.test_log import SmallMarkLog, fill, flip, segments


@pytest.fixture
def log(tmp_path: Path):
    """A log of 600 records of 3 interleaved origins over several segments, small marks."""
    with SmallMarkLog(tmp_path, fsync="never", segment_bytes=4096) as log:
        yield log


def check_read(
    log: Log, records: list[Mutation], wants: dict, max_entries: int, max_bytes: int
) -> None:
    """``read_lacking``: each origin's wanted records, one run in seq order, within
    the bounds; all of them unless it says it stopped for the bounds."""
    raw, bounded = read_lacking(log, wants, max_entries, max_bytes)
    got = [msgpack.unpackb(p, use_list=False) for p in raw.payloads]
    span = {o: range(first, last + 1) for o, (first, last) in wants.items()}
    wanted = [tuple(m) for m in records if m.seq in span.get(m.origin, ())]
    assert set(got) <= set(wanted)
    for origin, (first, last) in raw.runs.items():
        assert [m[1] for m in got if m[0] == origin] == list(range(first, last + 1))
        assert first == wants[origin][0]
    assert [m[0] for m in got] == [o for o in raw.runs for _ in range(*_span(raw.runs[o]))]
    sizes = list(map(len, raw.payloads))
    assert len(got) <= max_entries and sum(sizes[:-1]) < max_bytes
    if bounded:
        assert got and (len(got) == max_entries or sum(sizes) >= max_bytes)
    else:
        assert sorted(got) == sorted(wanted)


def _span(run: tuple[int, int]) -> tuple[int, int]:
    return run[0], run[1] + 1


def test_read_lacking_reads_each_origins_wanted_records(
    log: Log, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = fill(log, 600, batch=7)
    assert len(segments(tmp_path)) > 3
    origins = sorted({m.origin for m in records})
    cases = [
        {origins[0]: (1, 200)},
        {origins[0]: (1, 200), origins[1]: (1, 200), origins[2]: (1, 200)},
        {origins[0]: (150, 180), origins[2]: (3, 199)},
        {origins[1]: (199, 200), origins[2]: (1, 1)},
    ]
    past = [{origins[1]: (201, 300)}, {"nobody/0": (1, 10)}]  # what the log does not hold
    decoded: list[tuple] = []
    real = lacking._decoded
    monkeypatch.setattr(lacking, "_decoded", lambda *a: decoded.append(a) or real(*a))
    bounds = ((10**6, 1 << 30), (17, 1 << 30), (10**6, 500), (1, 1), (250, 3000))
    for wants in cases:
        for max_entries, max_bytes in bounds:
            check_read(log, records, wants, max_entries, max_bytes)
    assert decoded == []  # a log without a hole is read by counting
    for wants in past:
        check_read(log, records, wants, 10**6, 1 << 30)
    assert len(decoded) == 2


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
                assert sorted(entries(one)) == sorted(each.entries)
                assert one.count() == lacking and not one.more and not each.more
            else:
                assert one.count() == len(each.entries) == max_entries
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
        assert [e[1] for e in entries(batch)] == [5, 6, 7, 8] and not batch.more


def entries(batch: Batch) -> list[tuple]:
    assert batch.raw is not None
    return [msgpack.unpackb(p, use_list=False) for p in batch.raw.payloads]


def test_read_lacking_decodes_every_record_past_a_hole(tmp_path: Path) -> None:
    """A log whose count does not match (a hole, or an origin logged from past its
    mark's seq after a full sync) is read decoding each record."""
    with Log(tmp_path, fsync="never") as log:
        a, b = "node-0/inc", "node-1/inc"
        log.append([Mutation(a, s, 100 + s, f"a{s}", b"v", 0) for s in (1, 2, 3, 5, 6)])
        log.append([Mutation(b, s, 200 + s, f"b{s}", b"v", 0) for s in range(1001, 1004)])
        raw, bounded = read_lacking(log, {a: (2, 6), b: (1001, 1003)}, 100, 1 << 20)
        got = [msgpack.unpackb(p)[:2] for p in raw.payloads]
        assert got == [[a, 2], [a, 3], [a, 5], [a, 6], [b, 1001], [b, 1002], [b, 1003]]
        assert raw.runs == {a: (2, 6), b: (1001, 1003)} and not bounded
        reader = partial(read_lacking, log)
        assert read_batch(log, Fetch(1, {a: 3, b: 1003}), {a: 6, b: 1003}, {}, 9, reader).need_full


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
