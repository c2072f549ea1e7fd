"""Snapshot entries in blocks (mesh.storage.snapblocks): round trip, size, older layouts, damage."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mesh.core.mutation import Mutation
from mesh.core.store import Store
from mesh.storage import snapblocks, snapshot
from mesh.storage.log import Log, LogCorruptError

NOW = 1_800_000_000_000


def entries(count: int, seed: int = 7) -> list[Mutation]:
    """A mix: several origins, seqs 0 and not, tombstones, deadlines, counters,
    hlcs up and down, a value larger than a block."""
    rng = random.Random(seed)
    origins = [f"n{i}/{rng.randrange(10**6)}" for i in range(5)]
    out, hlc = [], NOW << 16
    for i in range(count):
        hlc += rng.choice((1, 2, 1 << 16, -(1 << 20)))
        value: bytes | tuple | None = rng.randbytes(rng.randrange(0, 300))
        if i % 11 == 0:
            value = None
        elif i % 13 == 0:
            value = (hlc - 5, origins[0], 0, 40, (("a/1", 2, -3), ("b/1", 1, 7)))
        deadline = NOW + i if i % 7 == 0 else 0
        seq = 0 if i % 3 else i
        out.append(Mutation(rng.choice(origins), seq, hlc, f"key:{i}", value, deadline))
    out.append(Mutation(origins[1], 0, 1, "huge", b"h" * (snapblocks.BLOCK_BYTES * 3), 0))
    out.append(Mutation(origins[2], 9, (1 << 63) - 1, "last", b"", 0))
    return out


def test_round_trip_over_many_blocks(tmp_path: Path) -> None:
    state = entries(3 * snapblocks.BLOCK_ENTRIES + 5)
    with Log(tmp_path) as log:
        path = log.write_snapshot(iter(state), {"vv": {"a/1": 3}})
        assert path.read_bytes()[4:8] == b"\x00\x02\x00\x01"  # version 2, flag BLOCKS
        found = snapshot.check(path)
        assert found is not None and found.blocks and found.count == len(state)
        meta, loaded = log.load_snapshot()  # type: ignore[misc]
        assert meta == {"vv": {"a/1": 3}, "offset": 0}
        assert list(loaded) == state


def test_a_store_round_trips_and_an_entry_takes_about_120_bytes(tmp_path: Path) -> None:
    rng = random.Random(1)
    store = Store(now_ms=lambda: NOW)
    hlc = NOW << 16
    keys = 20_000
    for i in range(keys):
        hlc += 1
        value = rng.randbytes(100)
        store.apply(Mutation("node-1/a1b2c3d4e5f60718", i + 1, hlc, f"key:{i:08d}", value, 0))
    with Log(tmp_path) as log:
        path = log.write_snapshot(store.entries(), {})
        meta, loaded = log.load_snapshot()  # type: ignore[misc]
        rebuilt = Store(now_ms=lambda: NOW)
        rebuilt.apply_many(loaded)
    assert rebuilt.digest() == store.digest() and len(rebuilt) == keys
    # key 12 + value 100 bytes: 125 with msgpack's headers, 150 in the record layout
    assert path.stat().st_size / keys < 125


@pytest.mark.parametrize("version", [1, 2])
def test_one_record_per_entry_layouts_still_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    state = entries(100)
    monkeypatch.setattr(snapshot, "FORMAT_VERSION", 1)  # one framed record per entry
    with Log(tmp_path) as log:
        path = log.write_snapshot(iter(state), {})
    monkeypatch.undo()
    data = bytearray(path.read_bytes())
    assert data[4:8] == b"\x00\x01\x00\x00"
    data[4:6] = version.to_bytes(2, "big")  # version 2 before blocks: the same layout
    path.write_bytes(bytes(data))  # the header is outside the body CRC
    with Log(tmp_path) as log:
        found = log.load_snapshot()
        assert found is not None and list(found[1]) == state


@pytest.mark.parametrize(
    "header",
    [b"\x00\x02\x00\x02", b"\x00\x01\x00\x01", b"\x00\x03\x00\x01", b"\x00\x02\x00\x00"],
)
def test_bad_flags_or_versions_are_ignored(tmp_path: Path, header: bytes) -> None:
    # the last: BLOCKS cleared; the body CRC covers the header, else the
    # blocks would be read as one record per entry
    with Log(tmp_path) as log:
        path = log.write_snapshot(iter(entries(10)), {})
        data = bytearray(path.read_bytes())
        data[4:8] = header
        path.write_bytes(bytes(data))
        assert snapshot.check(path) is None and log.load_snapshot() is None


def test_a_block_changed_after_validation_raises(tmp_path: Path) -> None:
    state = entries(2 * snapblocks.BLOCK_ENTRIES)
    with Log(tmp_path) as log:
        path = log.write_snapshot(iter(state), {})
        found = snapshot.check(path)
        assert found is not None
        first = int.from_bytes(path.read_bytes()[found.start : found.start + 4], "big")
        second = found.start + 8 + first
        data = bytearray(path.read_bytes())
        data[second + 20] ^= 0xFF
        path.write_bytes(bytes(data))
        read = found.entries()
        with pytest.raises(LogCorruptError, match="CRC mismatch") as info:
            for _ in read:
                pass
        assert (info.value.path, info.value.position) == (path, second)
        assert snapshot.check(path) is None  # and at the next start it is ignored


def test_undecodable_block_with_a_good_crc_raises() -> None:
    (good, count), *_ = snapblocks.encode(entries(3)[:3])
    assert count == 3 and snapblocks.decode(good[8:]) == entries(3)[:3]
    bad_index = b"\x92\x91\xa1a\x95\x05\x00\xa1k\xc0\x00"
    for payload in (bad_index, b"\x92\x90\x93\x00", good[8:-1], good[8:] + b"\x00", b"\xc1", b""):
        with pytest.raises((ValueError, TypeError, IndexError)):
            snapblocks.decode(payload)
