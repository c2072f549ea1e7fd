"""Snapshot files of the store: their format, writing, validation and pruning.

A snapshot holds one mutation per key (the store's state) as of a log offset:
every log record below that offset was applied before it was taken, so a node
loads the latest snapshot and replays the log from its offset.  Snapshots are
written and chosen by :class:`mesh.storage.log.Log`; this module is their file
format.

File ``<data dir>/snapshots/<offset, 20 digits>.snap``; integers big-endian::

    header, 8 bytes:
        0   4  magic b"PCSN"
        4   2  u16 format version (2; 1 is read too)
        6   2  u16 flags: bit 0 (BLOCKS) entries in blocks, or bit 1
                 (RECORD_BLOCKS) entries in blocks of whole records; no other
                 bit is set, nor both
    records, each framed like a log record (u32 length N, u32 CRC32C of the
    payload, N bytes of payload):
        meta     msgpack map: the caller's keys plus "offset" (int)
        entries  with BLOCKS (what this version writes): blocks of entries,
                 each one framed record (mesh.storage.snapblocks: an origin
                 table, then per entry its origin's index, hlc delta, key,
                 value, deadline, and seq when not 0); without BLOCKS
                 (version 1, and version 2 files written before the flag):
                 one record per entry, msgpack of Mutation.to_record(); with
                 RECORD_BLOCKS (the snapshot that ends a full sync, written
                 from the chunks as they came: mesh.core.snapimage): blocks,
                 each one framed record whose payload is one msgpack array of
                 entries, each as Mutation.to_record()
        trailer  the last 23 bytes of the file: length 15, its CRC32C, and the
                 payload 0x92 0xcf <u64 entry count> 0xce <u32 body CRC32C>
                 (the msgpack array [count, body_crc]), where the body CRC
                 covers every byte between the header and the trailer, and
                 with a flag the header too (a flipped flag is an invalid
                 snapshot, not entries read in the wrong layout).

A snapshot is written to ``<name>.tmp``, fsynced, renamed into place and its
directory fsynced, with entries streamed in chunks, never the whole file in
memory.  A snapshot is valid when its header, trailer, body CRC and meta
record check out and its meta offset matches its name; an invalid one is
ignored (an older one, or none, is used).  Reading a valid snapshot's entries
checks each record's (or block's) CRC again and raises
:class:`~mesh.storage.records.LogCorruptError` if the file changed since.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from mesh.core.mutation import Mutation, PackedRecords, Record
from mesh.storage import snapblocks
from mesh.storage.checksum import crc32c
from mesh.storage.datadir import fsync_dir
from mesh.storage.records import FRAME, read_chunks, read_records

logger = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"PCSN"
FORMAT_VERSION = 2
"""Written in new snapshots.  2: entries may carry counter states
(mesh.core.counters), and are in blocks (flag BLOCKS); version 1 snapshots,
and version 2 ones without the flag, are read as they are."""
READ_VERSIONS = (1, 2)
#: header flag: the entries are in blocks (mesh.storage.snapblocks)
BLOCKS = 1
#: header flag: the entries are in blocks, each one array of whole records
RECORD_BLOCKS = 2

_HEADER = struct.Struct(">4sHH")

_TRAILER = struct.Struct(">BBQBI")
_TRAILER_SIZE = FRAME.size + _TRAILER.size
_BATCH = 4096  # entries encoded per write
#: ... or fewer, once their payloads reach this many bytes: with 1 MB values 4,096
#: entries joined were 4 GB in memory (a 64 MB snapshot took twice the time)
_BATCH_BYTES = 1 << 20


@dataclass(frozen=True)
class Snapshot:
    """A validated snapshot file: its meta and where its entries lie."""

    path: Path
    offset: int
    meta: dict[str, Any]
    count: int
    start: int  # file position of the first entry
    stop: int  # file position of the trailer
    blocks: bool = False  # entries in blocks (flag BLOCKS), else one record each
    record_blocks: bool = False  # entries in blocks of whole records (flag RECORD_BLOCKS)

    def entries(self) -> Iterator[Record]:
        """The snapshot's entries, streamed from disk."""
        if self.blocks:
            return snapblocks.read(self.path, self.start, self.stop)
        if self.record_blocks:
            return snapblocks.read(self.path, self.start, self.stop, snapblocks.decode_records)
        return read_records([(self.path, self.start, self.stop)])


def write(
    folder: Path,
    offset: int,
    entries: Iterable[Mutation] | PackedRecords,
    meta: dict[str, Any],
) -> Path:
    """Write the snapshot of ``offset`` into ``folder``; return its path.
    ``entries`` given as :class:`~mesh.core.mutation.PackedRecords` are written
    as they are, one block per chunk (flag RECORD_BLOCKS)."""
    if "offset" in meta:
        raise ValueError("snapshot meta must not hold the key 'offset': the snapshot adds it")
    path = folder / f"{offset:020d}.snap"
    tmp = path.with_name(path.name + ".tmp")
    version = FORMAT_VERSION
    chunks: Iterator[tuple[bytes, int]]
    if isinstance(entries, PackedRecords):
        flags, chunks = RECORD_BLOCKS, _framed(entries)
    else:  # version 1 (tests): one framed record per entry
        flags = BLOCKS if version >= 2 else 0
        chunks = snapblocks.encode(entries) if flags else _records(entries)
    frame = FRAME.pack
    try:
        with open(tmp, "wb") as f:
            header = _HEADER.pack(SNAPSHOT_MAGIC, version, flags)
            f.write(header)
            payload = msgpack.packb({**meta, "offset": offset})
            data = frame(len(payload), crc32c(payload)) + payload
            f.write(data)
            body, count = crc32c(data, crc32c(header) if flags else 0), 0
            for data, n in chunks:
                f.write(data)
                body = crc32c(data, body)
                count += n
            trailer = _TRAILER.pack(0x92, 0xCF, count, 0xCE, body)
            f.write(frame(len(trailer), crc32c(trailer)) + trailer)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(folder)
    return path


def _framed(packed: PackedRecords) -> Iterator[tuple[bytes, int]]:
    """Each chunk of ``packed`` framed as one block; the entry count comes with the
    first block (the chunks carry their arrays' lengths only in their bytes)."""
    for i, chunk in enumerate(packed.chunks):
        yield FRAME.pack(len(chunk), crc32c(chunk)) + chunk, packed.total if i == 0 else 0


def _records(entries: Iterable[Mutation]) -> Iterator[tuple[bytes, int]]:
    """Entries as one framed record each (the layout without BLOCKS), in chunks,
    each with how many entries it holds."""
    pack, frame = msgpack.Packer().pack, FRAME.pack
    parts: list[bytes] = []
    size = 0
    for m in entries:
        payload = pack(m)
        parts += (frame(len(payload), crc32c(payload)), payload)
        size += len(payload)
        if len(parts) >= 2 * _BATCH or size >= _BATCH_BYTES:
            yield b"".join(parts), len(parts) // 2
            parts.clear()
            size = 0
    if parts:
        yield b"".join(parts), len(parts) // 2


def check(path: Path) -> Snapshot | None:
    """The snapshot at ``path`` if it is valid, else None (logged as a warning)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(_HEADER.size)
            magic, version, flags = _HEADER.unpack(header)
            if magic != SNAPSHOT_MAGIC or version not in READ_VERSIONS:
                raise ValueError("bad header")
            if flags not in (0, BLOCKS, RECORD_BLOCKS) or (flags and version < 2):
                raise ValueError(f"unknown flags {flags:#x}")
            stop = size - _TRAILER_SIZE
            if stop < _HEADER.size + FRAME.size:
                raise ValueError("too short")
            f.seek(stop)
            length, crc = FRAME.unpack(f.read(FRAME.size))
            trailer = f.read(_TRAILER.size)
            if length != _TRAILER.size or crc32c(trailer) != crc:
                raise ValueError("bad trailer")
            a, b, count, c, body_crc = _TRAILER.unpack(trailer)
            if (a, b, c) != (0x92, 0xCF, 0xCE):
                raise ValueError("bad trailer")
            body = crc32c(header) if flags else 0
            for data in read_chunks(path, _HEADER.size, stop):
                body = crc32c(data, body)
            if body != body_crc:
                raise ValueError("body CRC mismatch")
            f.seek(_HEADER.size)
            length, crc = FRAME.unpack(f.read(FRAME.size))
            payload = f.read(length)
            if crc32c(payload) != crc:
                raise ValueError("bad meta record")
            meta = msgpack.unpackb(payload, strict_map_key=False)
        if not isinstance(meta, dict) or meta.get("offset") != int(path.stem):
            raise ValueError("meta offset does not match the file name")
    except (OSError, ValueError, TypeError, struct.error, msgpack.UnpackException) as exc:
        logger.warning("%s: ignoring invalid snapshot (%s)", path, exc)
        return None
    start = _HEADER.size + FRAME.size + length
    blocks, record_blocks = bool(flags & BLOCKS), bool(flags & RECORD_BLOCKS)
    return Snapshot(path, meta["offset"], meta, count, start, stop, blocks, record_blocks)


def paths(folder: Path) -> list[Path]:
    """The snapshot files in ``folder``, newest (highest offset) first."""
    found = [p for p in folder.glob("*.snap") if len(p.stem) == 20 and p.stem.isdigit()]
    return sorted(found, reverse=True)


def latest(folder: Path) -> Snapshot | None:
    """The valid snapshot with the highest offset in ``folder``, or None."""
    for path in paths(folder):
        found = check(path)
        if found is not None:
            return found
    return None


def prune(folder: Path, *, keep: Path) -> list[Path]:
    """Delete every snapshot in ``folder`` but ``keep``; return the deleted paths."""
    deleted = [path for path in paths(folder) if path != keep]
    for path in deleted:
        path.unlink()
    if deleted:
        fsync_dir(folder)
    return deleted
