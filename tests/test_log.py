"""Tests of mesh.storage.log (segments, recovery, index, fsync, compaction) and its snapshots."""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from crc32c import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mesh.storage.log
from mesh.core.errors import ConfigError
from mesh.core.mutation import Mutation, encode_records
from mesh.core.store import Store
from mesh.storage.datadir import open_identity
from mesh.storage.log import Log, LogCorruptError
from mesh.storage.replay import recover as replay_recover
from mesh.storage.salvage import note_damage, read_damage, rotate_if_damaged
from tests.log_writer_child import big_record, record

REPO = Path(__file__).resolve().parents[1]


class SmallMarkLog(Log):
    """A log with an index mark every few records, so that tests exercise marks."""

    _mark_bytes = 100


def segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "log").glob("*.log"))


def flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def fill(log: Log, count: int, batch: int = 1) -> list[Mutation]:
    """Append ``record(i)`` for the next ``count`` offsets, ``batch`` at a time."""
    start = log.next_offset
    records = [record(i) for i in range(start, start + count)]
    for i in range(0, count, batch):
        log.append(records[i : i + batch])
        log.flush()
    return records


def expect_read_from(records: list[Mutation], log: Log) -> None:
    """``read_from`` equals a filter of ``records`` for every origin and many seqs."""
    for origin in {m.origin for m in records}:
        seqs = sorted({m.seq for m in records if m.origin == origin})
        for seq in [0, *seqs[:: max(1, len(seqs) // 8)], seqs[-1], seqs[-1] + 1]:
            want = [m for m in records if m.origin == origin and m.seq >= seq]
            assert list(log.read_from(origin, seq)) == want, (origin, seq)
            in_order = [m.seq for m in records if m.origin == origin] == seqs
            for last in (seq, seq + 2, seqs[-1]) if in_order else ():  # as a node logs them
                for max_bytes in (1, 300, 1 << 30):
                    expect_read_range(records, log, origin, seq, last, max_bytes)
    assert list(log.read_from("nobody/0", 0)) == []
    assert log.read_range("nobody/0", 0, 10, 1 << 20) == ([], 0)


def expect_read_range(
    records: list[Mutation], log: Log, origin: str, first: int, last: int, max_bytes: int
) -> None:
    """``read_range``: the origin's records in ``first..last`` until ``max_bytes`` is reached."""
    want, size = [], 0
    for m in records:
        if m.origin == origin and first <= m.seq <= last and size < max_bytes:
            want.append(m)
            size += len(msgpack.packb(m))
    assert log.read_range(origin, first, last, max_bytes) == (want, size), (first, last)


# ---------------------------------------------------------------- round trip

mutations = st.builds(
    Mutation,
    origin=st.sampled_from(["a/1", "b/2", "ünï/☃", "long-" + "x" * 40]),
    seq=st.integers(0, 2**63 - 1),
    hlc=st.integers(0, 2**63 - 1),
    key=st.text(max_size=12),
    value=st.none() | st.binary(max_size=40),
    deadline=st.integers(0, 2**63 - 1),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(mutations, max_size=30),
    cuts=st.lists(st.integers(1, 6), max_size=30),
    segment_bytes=st.sampled_from([64, 180, 600, 1 << 20]),
)
def test_round_trip(records: list[Mutation], cuts: list[int], segment_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with SmallMarkLog(tmp, segment_bytes=segment_bytes, fsync="never") as log:
            done = 0
            for cut in [*cuts, len(records)]:
                batch = records[done : done + cut]
                last = log.append(batch)
                assert last == done + len(batch) - 1
                done += len(batch)
            assert log.next_offset == len(records)
            assert list(log.replay()) == records
            expect_read_from(records, log)
        with SmallMarkLog(tmp, segment_bytes=segment_bytes) as log:
            assert log.next_offset == len(records)
            assert list(log.replay()) == records
            for start in range(0, len(records) + 1, 3):
                assert list(log.replay(start)) == records[start:]
            expect_read_from(records, log)
            origins = {m.origin for m in records}
            assert log.max_seqs() == {
                o: max(m.seq for m in records if m.origin == o) for o in origins
            }
            assert log.max_hlc == max((m.hlc for m in records), default=0)
            extra = Mutation("a/1", 1, 1, "k", b"v")
            assert log.append([extra]) == len(records)
            assert list(log.replay(len(records))) == [extra]


def test_replay_mid_segment_uses_marks(tmp_path: Path) -> None:
    with SmallMarkLog(tmp_path) as log:
        records = fill(log, 200, batch=3)
        assert len(log._segments[0].marks) > 10
        for start in (0, 1, 50, 99, 150, 199, 200):
            assert list(log.replay(start)) == records[start:]


def test_replay_bounds(tmp_path: Path) -> None:
    with Log(tmp_path) as log:
        fill(log, 5)
        with pytest.raises(ValueError):
            log.replay(6)
        with pytest.raises(ValueError):
            log.replay(-1)
        with pytest.raises(TypeError):
            log.replay("1")  # type: ignore[arg-type]
        assert log.append([]) == 4


def test_batch_is_one_write_per_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = Log(tmp_path, segment_bytes=400)
    fill(log, 1)
    writes: list[int] = []
    real_write, real_pwrite = os.write, os.pwrite

    def counting(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    def counting_at(fd: int, data: bytes, pos: int) -> int:
        if bytes(data).strip(b"\0"):  # zero-filling ahead is not a write of records
            writes.append(len(data))
        return real_pwrite(fd, data, pos)

    monkeypatch.setattr(os, "write", counting)
    monkeypatch.setattr(os, "pwrite", counting_at)
    log.append([record(1), record(2)])
    assert len(writes) == 1
    writes.clear()
    log.append([record(i) for i in range(3, 30)])  # spans several segments
    rolled = len(segments(tmp_path)) - 1
    assert rolled >= 2
    headers = [n for n in writes if n == 16]  # one header per new segment
    assert len(headers) == rolled and len(writes) == 2 * rolled + 1
    monkeypatch.undo()
    log.close()
    with Log(tmp_path, segment_bytes=400) as log:
        assert list(log.replay()) == [record(i) for i in range(30)]


def test_preallocated_tail_is_cut_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A crash leaves the zero-filled tail after the records: recovery cuts it, warns of nothing."""
    live, copy = tmp_path / "live", tmp_path / "copy"
    log = Log(live)
    records = fill(log, 5)
    path = segments(live)[0]
    data = path.read_bytes()
    assert len(data) > 1000 and data.endswith(bytes(1000))  # written ahead with zeros
    (copy / "log").mkdir(parents=True)
    (copy / "log" / path.name).write_bytes(data)  # the file as a kill -9 leaves it
    log.close()
    assert path.stat().st_size < 1000  # a clean close cuts the tail too
    with caplog.at_level("INFO"), Log(copy) as recovered:
        assert list(recovered.replay()) == records
        records += fill(recovered, 2)
    assert "truncating" not in caplog.text
    with Log(copy) as again:
        assert list(again.replay()) == records


def test_torn_record_before_the_zero_tail_is_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = Log(tmp_path)
    records = fill(log, 3)
    path = segments(tmp_path)[0]
    data = bytearray(path.read_bytes())
    end = data.index(bytes(64), 16)  # the records end where the zeros start
    data[end : end + 8] = (50).to_bytes(4, "big") + (123).to_bytes(4, "big")  # a header, no payload
    log.close()
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING"), Log(tmp_path) as recovered:
        assert list(recovered.replay()) == records
    assert "truncating" in caplog.text


def test_large_batch_is_written_in_one_pwritev_without_zeros_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of large values goes by pwritev, a short one is completed, a failed one
    is rolled back, and no zeros are written ahead of it (small batches get them again)."""
    big = [Mutation("big/1", i + 1, 5 + i, f"k{i}", bytes([i + 1]) * 400_000, 0) for i in range(3)]
    real_pwritev, calls = os.pwritev, []

    def short_then_full(fd: int, buffers: list[bytes], pos: int) -> int:
        calls.append(len(buffers))
        if len(calls) == 2:
            raise OSError(errno.EIO, "injected")
        return real_pwritev(fd, buffers[:3] if len(calls) == 1 else buffers, pos)

    monkeypatch.setattr(os, "pwritev", short_then_full)
    log = Log(tmp_path)
    log.append(big[:2])
    log.flush()
    path = segments(tmp_path)[0]
    written = 16 + sum(8 + len(r) for r in encode_records(big[:2]))
    assert calls == [4] and path.stat().st_size == written  # completed; no zero tail
    with pytest.raises(OSError, match="injected"):
        log.append(big[2:])
    assert path.stat().st_size == written and log.next_offset == 2  # rolled back
    log.append(big[2:])
    records = fill(log, 3)  # small batches after it: zero-filled ahead again
    assert path.read_bytes().endswith(bytes(4096))
    log.close()
    with Log(tmp_path) as again:
        assert list(again.replay()) == big + records


def test_failed_write_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Log(tmp_path) as first:
        fill(first, 3)
    size = segments(tmp_path)[0].stat().st_size
    log = Log(tmp_path)
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: bytes, pos: int) -> int:
        if not bytes(data).strip(b"\0"):
            return real_pwrite(fd, data, pos)  # zero-filling ahead works
        real_pwrite(fd, bytes(data[: len(data) // 2]), pos)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_full)
    with pytest.raises(OSError):
        log.append([record(3), record(4)])
    monkeypatch.undo()
    assert segments(tmp_path)[0].stat().st_size == size
    assert log.next_offset == 3
    log.append([record(3)])
    log.close()
    with Log(tmp_path) as log:
        assert list(log.replay()) == [record(i) for i in range(4)]


def test_write_back_runs_beside_appends_and_leaves_the_fsync_to_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write-back thread syncs on a file description of its own, closes it, and
    never counts as the log's fsync; it outlives a roll of the segment."""
    open_fds = set(os.listdir("/proc/self/fd"))
    synced: list[int] = []
    real = mesh.storage.log._fdatasync
    monkeypatch.setattr(mesh.storage.log, "_fdatasync", lambda fd: (synced.append(fd), real(fd)))
    log = Log(tmp_path, segment_bytes=4096)
    log.write_back()  # nothing appended: nothing to do
    assert log._writing_back is None
    for i in range(0, 200, 20):
        log.append([record(j) for j in range(i, i + 20)])  # rolls segments as it goes
        log.write_back()
        log._writing_back.join(5)
    assert len(synced) == 10 and log._unsynced  # written back, but only flush() says synced
    log.flush()
    assert synced[-1] == log._fd and not log._unsynced
    log.close()
    log.write_back()  # closed: nothing to do
    assert set(os.listdir("/proc/self/fd")) == open_fds
    with Log(tmp_path) as again:
        assert list(again.replay()) == [record(i) for i in range(200)]


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = Log(tmp_path)
    log.close()
    log.close()
    with pytest.raises(ValueError):
        log.append([record(0)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fsync": "sometimes"},
        {"fsync_interval_ms": 0},
        {"fsync_interval_ms": 1.5},
        {"fsync_interval_ms": True},
        {"segment_bytes": 10},
        {"segment_bytes": "64"},
        {"retention_bytes": -1},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        Log(tmp_path, **kwargs)
    assert isinstance(info.value, ValueError)


# ------------------------------------------------------------------ recovery


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_last_record(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    """Every cut or flipped byte in the last record loses that record only."""
    records = [record(i) for i in range(5)]
    with Log(tmp_path / "orig") as log:
        log.append(records[:4])
        (segment,) = segments(tmp_path / "orig")
        start = segment.stat().st_size
        log.append(records[4:])
    original = segment.read_bytes()
    index = segment.with_suffix(".idx").read_bytes()
    for position in range(start, len(original)):
        folder = tmp_path / f"{damage}{position}"
        (folder / "log").mkdir(parents=True)
        damaged = bytearray(original)
        if damage == "truncate":
            del damaged[position:]
        else:
            damaged[position] ^= 0xFF
        (folder / "log" / segment.name).write_bytes(bytes(damaged))
        (folder / "log" / segment.with_suffix(".idx").name).write_bytes(index)
        caplog.clear()
        with Log(folder) as log:
            assert log.next_offset == 4, position
            assert list(log.replay()) == records[:4]
            assert (folder / "log" / segment.name).stat().st_size == start
            log.append(records[4:])
        if position > start or damage == "flip":
            assert "truncating" in caplog.text
        with Log(folder) as log:
            assert list(log.replay()) == records


def test_zero_filled_tail(tmp_path: Path) -> None:
    with Log(tmp_path) as log:
        records = fill(log, 10)
    with open(segments(tmp_path)[0], "ab") as f:
        f.write(bytes(4096))
    with Log(tmp_path) as log:
        assert list(log.replay()) == records


@pytest.mark.parametrize("cut", [0, 1, 7, 15, 16])
def test_torn_header_of_new_last_segment(tmp_path: Path, cut: int) -> None:
    with Log(tmp_path, segment_bytes=300) as log:
        records = fill(log, 20)
        end = log.next_offset
    torn = tmp_path / "log" / f"{end:020d}.log"
    header = segments(tmp_path)[0].read_bytes()[:8] + end.to_bytes(8, "big")
    torn.write_bytes(header[:cut] if cut < 16 else bytes(16))
    with Log(tmp_path, segment_bytes=300) as log:
        assert list(log.replay()) == records
        assert log.next_offset == end
        records += fill(log, 5)
    with Log(tmp_path, segment_bytes=300) as log:
        assert list(log.replay()) == records


def test_fresh_log_with_torn_header(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / f"{0:020d}.log").write_bytes(b"PCL")
    with Log(tmp_path) as log:
        assert log.next_offset == 0
        records = fill(log, 3)
    with Log(tmp_path) as log:
        assert list(log.replay()) == records


def test_sealed_segment_corruption(tmp_path: Path) -> None:
    """A bad record in a sealed segment: found on read (raised) when its index is
    intact; on open when not, and the segment is then moved aside."""
    with Log(tmp_path, segment_bytes=300) as log:
        records = fill(log, 30)
    first, second = segments(tmp_path)[:2]
    flip(first, 16 + 8 + 2)  # inside the first record's payload
    with Log(tmp_path, segment_bytes=300) as log:  # its index is intact: found on read
        with pytest.raises(LogCorruptError) as info:
            list(log.replay())
        assert info.value.path == first and info.value.position == 16
        assert str(first) in str(info.value)
        with pytest.raises(LogCorruptError):
            list(log.read_from(record(0).origin, 0))
    first.with_suffix(".idx").unlink()
    with Log(tmp_path, segment_bytes=300) as log:  # no index: found on open, moved aside
        assert log.first_offset() == int(second.stem)
        assert list(log.replay(log.first_offset())) == records[int(second.stem) :]
    assert not first.exists()
    assert (tmp_path / "log" / f"{first.stem}-{second.stem}.corrupt").exists()
    assert read_damage(tmp_path / "log") is not None
    with Log(tmp_path, segment_bytes=300) as log:  # the hole it left is accepted
        assert log.first_offset() == int(second.stem)


def test_sealed_segment_truncated_or_missing(tmp_path: Path) -> None:
    with Log(tmp_path, segment_bytes=300) as log:
        fill(log, 30)
    paths = segments(tmp_path)
    os.truncate(paths[1], paths[1].stat().st_size - 3)  # torn: moved aside on open
    Log(tmp_path, segment_bytes=300).close()
    assert (tmp_path / "log" / f"{paths[1].stem}-{paths[2].stem}.corrupt").exists()
    paths[2].unlink()  # missing, not moved aside: refused
    with pytest.raises(LogCorruptError, match=paths[3].name):
        Log(tmp_path, segment_bytes=300)


def test_corrupt_record_mid_segment_keeps_every_record_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any flipped byte of a record amid the active segment loses that record
    only: every complete record after it is kept, and the damage is marked."""
    records = [record(i) for i in range(40)]
    with Log(tmp_path / "orig") as log:
        log.append(records[:20])
        (segment,) = segments(tmp_path / "orig")
        start = segment.stat().st_size
        log.append(records[20:21])
        end = segment.stat().st_size
        log.append(records[21:])
    original = segment.read_bytes()
    for position in range(start, end):
        folder = tmp_path / f"flip{position}"
        (folder / "log").mkdir(parents=True)
        damaged = bytearray(original)
        damaged[position] ^= 0xFF
        (folder / "log" / segment.name).write_bytes(bytes(damaged))
        caplog.clear()
        with Log(folder) as log:
            assert list(log.replay()) == records[:20] + records[21:], position
            assert log.next_offset == 39
            log.append(records[20:21])
        assert "39 valid records after them kept" not in caplog.text
        assert "19 valid records after them kept" in caplog.text, position
        assert read_damage(folder / "log") is not None
        with Log(folder) as log:  # clean now
            assert list(log.replay()) == records[:20] + records[21:] + records[20:21]


def test_several_corrupt_stretches_and_a_zero_tail(tmp_path: Path) -> None:
    records = [record(i) for i in range(60)]
    with Log(tmp_path) as log:
        ends = []
        for m in records:
            log.append([m])
            ends.append(log.bytes_from(0))
    path = segments(tmp_path)[0]
    data = bytearray(path.read_bytes())
    for k in (10, 11, 30, 45):  # records 10, 11, 30 and 45 (starting at ends[k - 1])
        data[ends[k - 1] + 5 : ends[k - 1] + 30] = os.urandom(25)
    path.write_bytes(bytes(data) + bytes(5000))
    lost = {10, 11, 30, 45}
    with Log(tmp_path) as log:
        assert list(log.replay()) == [m for i, m in enumerate(records) if i not in lost]


def test_replay_of_a_damaged_log_fetches_the_holes(tmp_path: Path) -> None:
    """The vv after damage is each origin's contiguous run of seqs, and a new
    incarnation is drawn once; the mark goes once a start finds no hole."""
    records = [record(i) for i in range(30)]  # origins node-0..2, seqs 1..10 each
    with Log(tmp_path) as log:
        for m in records:
            log.append([m])
        size_before_13 = log.bytes_from(0) - sum(len(r) + 8 for r in encode_records(records[13:]))
    flip(segments(tmp_path)[0], size_before_13 + 12)  # record 13: node-1, seq 5
    with Log(tmp_path) as log:
        store = Store()
        found = replay_recover(log, store)
        assert found.vv == {"node-0/inc": 10, "node-1/inc": 4, "node-2/inc": 10}
        assert found.applied == 29
        origin = open_identity(tmp_path, "n1")
        new = rotate_if_damaged(tmp_path, "n1", origin)
        assert new != origin and rotate_if_damaged(tmp_path, "n1", new) == new
        log.append([record(13)])  # fetched from a peer
        log.append(records[16::3])  # node-1's 6..10 again
    with Log(tmp_path) as log:
        found = replay_recover(log, Store())
        assert found.vv == {"node-0/inc": 10, "node-1/inc": 10, "node-2/inc": 10}
    assert read_damage(tmp_path / "log") is None


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    with SmallMarkLog(tmp_path, segment_bytes=500) as log:
        records = fill(log, 60, batch=4)
        seqs, hlc = log.max_seqs(), log.max_hlc
    for path in segments(tmp_path):
        index = path.with_suffix(".idx")
        if damage == "delete":
            index.unlink()
        else:
            flip(index, index.stat().st_size - 1)
    with SmallMarkLog(tmp_path, segment_bytes=500) as log:
        assert (log.max_seqs(), log.max_hlc) == (seqs, hlc)
        assert list(log.replay()) == records
        expect_read_from(records, log)
    assert all(p.with_suffix(".idx").exists() for p in segments(tmp_path))


def test_read_from_skips_what_the_index_rules_out(tmp_path: Path) -> None:
    with Log(tmp_path, segment_bytes=300) as log:
        records = fill(log, 60)
    flip(segments(tmp_path)[0], 16 + 8 + 2)  # read_from must not go there
    origin = records[-1].origin
    with Log(tmp_path, segment_bytes=300) as log:
        want = [m for m in records if m.origin == origin and m.seq >= records[-10].seq]
        assert list(log.read_from(origin, records[-10].seq)) == want


@pytest.mark.parametrize(
    ("kind", "segment_bytes", "acks"), [("small", 16384, 400), ("big", 1 << 20, 100)]
)
def test_kill9_loses_no_acknowledged_write(
    tmp_path: Path, kind: str, segment_bytes: int, acks: int
) -> None:
    """SIGKILL a writer under fsync=always mid-stream: every acked record survives
    (``big``: batches with 300 KB values, written by pwritev with no zeros ahead)."""
    argv = [sys.executable, "-m", "tests.log_writer_child", str(tmp_path), str(segment_bytes)]
    argv += [kind]
    make = big_record if kind == "big" else record
    acked: list[int] = []
    with subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            pending = b""
            deadline = time.monotonic() + 60
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                while len(acked) < acks:
                    left = deadline - time.monotonic()
                    if left <= 0 or proc.poll() is not None:
                        pytest.fail(
                            f"writer gave {len(acked)} acks (exit {proc.returncode}): "
                            f"{proc.stderr.read().decode() if proc.poll() is not None else ''}"
                        )
                    if selector.select(left):
                        chunk = os.read(proc.stdout.fileno(), 65536)
                        *lines, pending = (pending + chunk).split(b"\n")
                        acked += [int(line) for line in lines]
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            *lines, _torn = (pending + proc.stdout.read()).split(b"\n")
            acked += [int(line) for line in lines]
            assert proc.stderr.read() == b""
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert acked == sorted(acked)
    with Log(tmp_path, segment_bytes=segment_bytes) as log:
        assert log.next_offset > acked[-1]
        assert len(segments(tmp_path)) > 2
        for offset, mutation in enumerate(log.replay()):
            assert mutation == make(offset)


# ------------------------------------------------------------ fsync policies


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[float]]:
    """Count data fsyncs and drive the log's clock by hand: ``(calls, [now])``."""
    calls: list[int] = []
    now = [1000.0]
    monkeypatch.setattr(mesh.storage.log, "_fdatasync", calls.append)
    monkeypatch.setattr(mesh.storage.log, "_now", lambda: now[0])
    return calls, now


def test_fsync_always(tmp_path: Path, fsyncs: tuple[list[int], list[float]]) -> None:
    calls, _now = fsyncs
    log = Log(tmp_path)
    log.append([record(0)])
    assert calls == []  # append never fsyncs
    log.flush()
    assert len(calls) == 1
    log.flush()
    log.tick()
    assert len(calls) == 1  # nothing new to sync
    log.append([record(1)])
    log.append([record(2)])
    log.flush()
    assert len(calls) == 2  # one fsync per flush, however many appends
    log.close()
    assert len(calls) == 2


def test_fsync_interval(tmp_path: Path, fsyncs: tuple[list[int], list[float]]) -> None:
    calls, now = fsyncs
    log = Log(tmp_path, fsync="interval", fsync_interval_ms=100)
    log.append([record(0)])
    log.flush()
    now[0] += 0.05
    log.flush()
    assert calls == []  # 50 ms since the last fsync
    now[0] += 0.06
    log.flush()
    assert len(calls) == 1  # 110 ms
    log.append([record(1)])
    log.flush()
    assert len(calls) == 1
    log.tick()
    assert len(calls) == 2  # the timer syncs what is pending
    log.tick()
    assert len(calls) == 2
    log.append([record(2)])
    log.close()
    assert len(calls) == 3


def test_fsync_never(tmp_path: Path, fsyncs: tuple[list[int], list[float]]) -> None:
    calls, now = fsyncs
    log = Log(tmp_path, fsync="never")
    log.append([record(0)])
    now[0] += 10
    log.flush()
    log.tick()
    assert calls == []
    log.sync()
    assert len(calls) == 1
    log.sync()
    assert len(calls) == 1
    log.close()


def test_failed_fsync_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    log = Log(tmp_path)
    log.append([record(0)])
    monkeypatch.setattr(mesh.storage.log, "_fdatasync", failing)
    with pytest.raises(OSError, match="Input/output"):
        log.flush()
    monkeypatch.undo()
    with pytest.raises(OSError, match="earlier fsync"):
        log.flush()
    with pytest.raises(OSError, match="earlier fsync"):
        log.append([record(1)])
    with pytest.raises(OSError, match="earlier fsync"):
        log.close()
    with Log(tmp_path) as log:  # reopening recovers what the OS kept
        assert list(log.replay()) == [record(0)]


# ------------------------------------------------------- snapshots, compaction


def test_snapshot_round_trip(tmp_path: Path) -> None:
    with Log(tmp_path) as log:
        assert log.load_snapshot() is None
        fill(log, 10)
        state = [record(i) for i in range(100, 150)]
        path = log.write_snapshot(iter(state), {"vv": {"a/1": 3}, "max_hlc": 7})
        assert path == tmp_path / "snapshots" / f"{10:020d}.snap"
        found = log.load_snapshot()
        assert found is not None
        meta, entries = found
        assert meta == {"vv": {"a/1": 3}, "max_hlc": 7, "offset": 10}
        assert list(entries) == state
        with pytest.raises(ValueError, match="offset"):
            log.write_snapshot([], {"offset": 3})
    with Log(tmp_path) as log:
        found = log.load_snapshot()
        assert found is not None and list(found[1]) == state


def test_snapshot_of_nothing(tmp_path: Path) -> None:
    with Log(tmp_path) as log:
        log.write_snapshot([], {})
        found = log.load_snapshot()
        assert found is not None
        assert found[0] == {"offset": 0} and list(found[1]) == []


def test_failed_snapshot_leaves_nothing(tmp_path: Path) -> None:
    def broken():
        yield record(0)
        raise RuntimeError("store went away")

    with Log(tmp_path) as log:
        with pytest.raises(RuntimeError):
            log.write_snapshot(broken(), {})
        assert list((tmp_path / "snapshots").iterdir()) == []
        assert log.load_snapshot() is None


@pytest.mark.parametrize("damage", ["trailer", "body", "cut", "meta"])
def test_bad_snapshot_is_ignored(tmp_path: Path, damage: str) -> None:
    with Log(tmp_path) as log:
        fill(log, 3)
        log.write_snapshot([record(0)], {"n": 1})
        fill(log, 3)
        newest = log.write_snapshot([record(1), record(2)], {"n": 2})
        size = newest.stat().st_size
        if damage == "trailer":
            flip(newest, size - 1)
        elif damage == "body":
            flip(newest, size // 2 + 10)
        elif damage == "cut":
            os.truncate(newest, size - 23)
        else:
            flip(newest, 8 + 8 + 1)
        found = log.load_snapshot()
        assert found is not None
        assert found[0] == {"n": 1, "offset": 3}
        assert list(found[1]) == [record(0)]


def test_compact(tmp_path: Path) -> None:
    old = [Mutation("old/1", i + 1, 50 + i, f"o{i}", b"x") for i in range(10)]
    with SmallMarkLog(tmp_path, segment_bytes=300) as log:
        log.append(old[:5])
        log.append(old[5:])
        records = old + fill(log, 20, batch=2)
        assert log.compact() == []  # no snapshot yet
        first_snapshot = log.write_snapshot([], {})
        records += fill(log, 30, batch=2)
        log.write_snapshot([], {})
        covered = log.next_offset
        records += fill(log, 30, batch=3)
        seqs, hlc = log.max_seqs(), log.max_hlc
        assert seqs["old/1"] == 10
    for retention in (10**9, 2000, 0):
        with SmallMarkLog(tmp_path, segment_bytes=300, retention_bytes=retention) as log:
            paths = segments(tmp_path)
            sizes = [p.stat().st_size for p in paths]
            ends = [int(p.stem) for p in paths[1:]] + [log.next_offset]
            expected, total = [], sum(sizes)
            for path, size, end in zip(paths[:-1], sizes[:-1], ends, strict=True):
                if end > covered or total - size < retention:
                    break
                expected.append(path)
                total -= size
            snaps = [first_snapshot] if first_snapshot.exists() else []
            assert log.compact() == expected + snaps
            assert segments(tmp_path) == paths[len(expected) :]
            assert not any(p.with_suffix(".idx").exists() for p in expected)
            assert not first_snapshot.exists()
            if retention == 10**9:
                assert expected == []
            else:
                assert expected and sum(sizes[len(expected) :]) >= retention
            kept = records[log.first_offset() :]
            assert list(log.replay(log.first_offset())) == kept
            if log.first_offset():
                with pytest.raises(ValueError, match="outside"):
                    log.replay(0)
            expect_read_from(kept, log)
            assert (log.max_seqs(), log.max_hlc) == (seqs, hlc)  # compacted origins too
    assert len(segments(tmp_path)) < len(paths)
    with Log(tmp_path, segment_bytes=300) as log:
        assert (log.max_seqs(), log.max_hlc) == (seqs, hlc)
        assert log.first_offset() > 10  # every "old/1" record is gone


def test_compact_never_deletes_the_active_segment(tmp_path: Path) -> None:
    with Log(tmp_path, segment_bytes=300, retention_bytes=0) as log:
        records = fill(log, 40)
        log.write_snapshot([], {})
        deleted = log.compact()
        assert deleted and segments(tmp_path) == [segments(tmp_path)[-1]]
        assert list(log.replay(log.first_offset())) == records[log.first_offset() :]
    with Log(tmp_path, segment_bytes=300) as log:
        assert log.next_offset == 40
        records = fill(log, 5)
        assert list(log.replay(40)) == records


def test_empty_log_starts_at_snapshot_offset(tmp_path: Path) -> None:
    with Log(tmp_path) as log:
        fill(log, 7)
        log.write_snapshot([record(0)], {})
    for path in (tmp_path / "log").iterdir():
        path.unlink()
    (tmp_path / "snapshots" / "leftover.snap.tmp").write_bytes(b"junk")
    with Log(tmp_path) as log:
        assert log.first_offset() == log.next_offset == 7
        assert list(log.replay(7)) == []
        assert log.append([record(7)]) == 7
    assert not (tmp_path / "snapshots" / "leftover.snap.tmp").exists()


def test_records_bigger_than_a_read_chunk(tmp_path: Path) -> None:
    big = [Mutation("big/1", i, i, f"k{i}", bytes([i]) * (3 << 20)) for i in range(1, 4)]
    with Log(tmp_path, segment_bytes=5 << 20) as log:
        log.append(big[:1])
        log.append(big[1:])
        assert len(segments(tmp_path)) == 3
    with Log(tmp_path, segment_bytes=5 << 20) as log:
        assert list(log.replay()) == big
        assert list(log.read_from("big/1", 2)) == big[1:]
        log.write_snapshot(iter(big), {})
        found = log.load_snapshot()
        assert found is not None and list(found[1]) == big


def reframe(path: Path, position: int, make: Callable[[int], bytes]) -> None:
    """Overwrite the payload at ``position`` with ``make(its length)`` and a valid CRC."""
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[position : position + 4], "big")
    payload = make(length)
    assert len(payload) == length
    data[position + 4 : position + 8 + length] = crc32c(payload).to_bytes(4, "big") + payload
    path.write_bytes(bytes(data))


def test_undecodable_record_with_a_good_crc(tmp_path: Path) -> None:
    with Log(tmp_path, segment_bytes=300) as log:
        records = fill(log, 30)
    first, *_, last = segments(tmp_path)
    length = int.from_bytes(first.read_bytes()[16:20], "big")
    second = 16 + 8 + length  # the sealed segment's second record
    reframe(first, second, lambda n: b"\xc1" * n)  # 0xc1: never used in msgpack
    with Log(tmp_path, segment_bytes=300) as log:
        with pytest.raises(LogCorruptError, match="undecodable") as info:
            list(log.replay())
        assert (info.value.path, info.value.position) == (first, second)
        kept = log.next_offset
    reframe(last, 16, lambda n: b"\x91" + b"\xc0" * (n - 1))  # an array, then extra data
    start = int(last.stem)
    with Log(tmp_path, segment_bytes=300) as log:  # last segment: that record lost, no other
        assert log.next_offset == kept - 1
        assert list(log.replay(start - 1)) == records[start - 1 : start] + records[start + 1 :]


def test_iterators_yield_what_was_there_when_called(tmp_path: Path) -> None:
    with Log(tmp_path, segment_bytes=300) as log:
        records = fill(log, 10)
        replay = log.replay()
        read = log.read_from(records[0].origin, 0)
        fill(log, 20)
        assert list(replay) == records
        assert list(read) == [m for m in records if m.origin == records[0].origin]


def test_abandoned_iterators_close_their_files(tmp_path: Path) -> None:
    import gc

    with Log(tmp_path, segment_bytes=300) as log:
        fill(log, 30)
        log.write_snapshot(iter(fill(log, 3)), {})
        iterators = [log.replay(), log.read_from(record(0).origin, 0), log.load_snapshot()[1]]  # type: ignore[index]
        for iterator in iterators:
            next(iterator)
        del iterators, iterator
        gc.collect()  # an unclosed file would be a ResourceWarning, an error here


def test_floor_reports_what_compaction_deleted(tmp_path):
    log = Log(tmp_path, segment_bytes=4096, retention_bytes=0)
    batch = [Mutation("a/1", seq, seq, f"k{seq}", b"x" * 100, 0) for seq in range(1, 201)]
    log.append(batch)
    assert log.floor() == {}
    log.write_snapshot([], {})
    log.compact()
    floor = log.floor()["a/1"]
    assert 0 < floor < 200
    assert [m.seq for m in log.read_from("a/1", floor + 1)] == list(range(floor + 1, 201))
    log.close()


def test_append_of_encoded_records_writes_the_same_bytes(tmp_path: Path) -> None:
    records = [record(i) for i in range(20)]
    with Log(tmp_path / "a") as plain, Log(tmp_path / "b") as given:
        plain.append(records)
        given.append(records, encode_records(records))
        with pytest.raises(ValueError):
            given.append(records[:2], encode_records(records[:1]))
    assert segments(tmp_path / "a")[0].read_bytes() == segments(tmp_path / "b")[0].read_bytes()


def test_seal_then_compact_keeps_at_most_keep_bytes(tmp_path: Path) -> None:
    with Log(tmp_path, segment_bytes=4096) as log:
        records = fill(log, 200)
        log.seal()
        log.seal()  # the new active segment holds nothing yet: no roll
        assert log.bytes_from(log.next_offset) == 16  # its header
        log.write_snapshot([], {})
        assert log.snapshot_bytes() > 0
        kept = 3000
        deleted = log.compact(keep_bytes=kept)
        assert deleted
        assert sum(p.stat().st_size for p in segments(tmp_path)) <= kept
        assert list(log.replay(log.first_offset())) == records[log.first_offset() :]
        log.compact(keep_bytes=0)
        assert len(segments(tmp_path)) == 1 and log.first_offset() == 200
        assert log.appended > 0


def test_a_snapshot_keeps_the_seqs_its_store_holds_past_a_hole(tmp_path: Path) -> None:
    """A node with a hole in its log holds the records past it in its store, not in its
    vv; a snapshot then saved that store, and the log it covers went.  Replay must hold
    them again, or they are never announced and the digests never agree (the
    simulator, seed 3700001478: a counter's increment)."""
    past = [Mutation("o/1", s, 100 + s, f"k{s}", b"v") for s in (2, 3, 4)]
    with Log(tmp_path) as log:
        log.append(past)
        note_damage(tmp_path / "log", "o/1's 1 lost")
        log.write_snapshot(past, {"vv": {}, "floor": {}, "held": {"o/1": [2, 3, 4]}})
        log.append([Mutation("p/1", 1, 200, "q", b"v")])
    with Log(tmp_path) as log:
        store = Store()
        found = replay_recover(log, store)
    assert found.held == {"o/1": {2, 3, 4}} and found.vv == {"p/1": 1}
    assert store.get("k3") is not None
    assert read_damage(tmp_path / "log") is not None  # the hole is still open


def test_held_seqs_of_the_wrong_shape_in_a_snapshot_are_ignored(tmp_path: Path) -> None:
    with Log(tmp_path) as log:
        log.append([Mutation("p/1", 1, 200, "q", b"v")])
        log.write_snapshot([], {"vv": {"p/1": 1}, "held": {"o/1": ["x"]}})
    with Log(tmp_path) as log:
        found = replay_recover(log, Store())
    assert found.held == {} and found.vv == {"p/1": 1}
