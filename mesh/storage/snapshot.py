"""Snapshot files of the store, and the record readers and file helpers of the log.

A snapshot holds one mutation per key (the store's state) as of a log offset:
every log record below that offset was applied before it was taken, so a node
loads the latest snapshot and replays the log from its offset.  Snapshots are
written and chosen by :class:`mesh.storage.log.Log`; this module is their file format,
plus what segments and snapshots share: the record frame, the record readers
(replay's hot path), :class:`LogCorruptError` (re-exported by :mod:`mesh.storage.log`)
and the fsync helpers.  It sits below :mod:`mesh.storage.log`, so imports point one way.

File ``<data dir>/snapshots/<offset, 20 digits>.snap``; integers big-endian::

    header, 8 bytes:
        0   4  magic b"PCSN"
        4   2  u16 format version (1)
        6   2  u16 flags (reserved, 0)
    records, each framed like a log record (u32 length N, u32 CRC32C of the
    payload, N bytes of payload):
        meta     msgpack map: the caller's keys plus "offset" (int)
        entry    msgpack of Mutation.to_record(), one per key, any number
        trailer  the last 23 bytes of the file: length 15, its CRC32C, and the
                 payload 0x92 0xcf <u64 entry count> 0xce <u32 body CRC32C>
                 (the msgpack array [count, body_crc]), where the body CRC
                 covers every byte between the header and the trailer.

A snapshot is written to ``<name>.tmp``, fsynced, renamed into place and its
directory fsynced, with entries streamed in chunks, never the whole file in
memory.  A snapshot is valid when its header, trailer, body CRC and meta
record check out and its meta offset matches its name; an invalid one is
ignored (an older one, or none, is used).
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

from mesh.core.errors import PyCacheError
from mesh.core.mutation import Mutation, Record
from mesh.storage.checksum import crc32c
from mesh.storage.datadir import fsync_dir

logger = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"PCSN"
FORMAT_VERSION = 1
#: the record frame shared with log segments: u32 payload length, u32 CRC32C
FRAME = struct.Struct(">II")
#: bytes read from a file at a time
CHUNK = 1 << 20
#: reads of a bounded range of records (catch-up) go by these smaller pieces
RANGE_CHUNK = 256 * 1024

_HEADER = struct.Struct(">4sHH")
#: what msgpack raises for a payload it cannot decode
DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)

_TRAILER = struct.Struct(">BBQBI")
_TRAILER_SIZE = FRAME.size + _TRAILER.size
_BATCH = 4096  # entries encoded per write


class LogCorruptError(PyCacheError):
    """A log file that must not be truncated is corrupt (``path``, byte ``position``).

    Raised for a bad record or header in a sealed segment, a broken sequence
    of segments, or a snapshot that changed after it was validated.  A torn
    tail of the active segment is not an error: it is truncated on open.
    """

    def __init__(self, path: Path, position: int, reason: str) -> None:
        super().__init__(f"{path}: {reason} at byte {position}")
        self.path = path
        self.position = position
        self.reason = reason


def read_chunks(path: Path, pos: int, stop: int, chunk: int = CHUNK) -> Iterator[bytes]:
    """The bytes of ``path`` from ``pos`` to ``stop``, in chunks of up to ``chunk`` bytes."""
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError as exc:
        raise LogCorruptError(path, pos, "file deleted (compacted?) while being read") from exc
    with f:
        f.seek(pos)
        while pos < stop:
            data = f.read(min(chunk, stop - pos))
            if not data:
                raise LogCorruptError(path, pos, "file shorter than expected")
            pos += len(data)
            yield data


#: (file, from position, to position) of each file a read goes through, in order
Plan = list[tuple[Path, int, int]]


def read_records(plan: Plan, skip: int = 0) -> Iterator[Mutation]:
    """The records in the byte ranges of ``plan``, after the first ``skip``.

    Replay's hot path.  Each chunk's records are CRC-checked first (a bad or
    torn record raises :class:`LogCorruptError` before any record of its
    chunk is yielded), then their payloads are decoded by one msgpack
    Unpacker, which is much faster than one ``unpackb`` call per record.
    """
    new, mutation = tuple.__new__, Mutation
    for path, pos, stop in plan:
        buf, i, base = b"", 0, pos
        for data in read_chunks(path, pos, stop):
            buf, base = buf[i:] + data, base + i
            payloads, i = _split(path, buf, base, stop)
            start = min(skip, len(payloads))
            skip -= start
            count = 0
            try:
                for record in _unpacker(payloads[start:]):
                    count += 1
                    yield new(mutation, record)
            except DECODE_ERRORS:
                count = -1
            if count != len(payloads) - start:
                raise _undecodable(path, base, payloads)
        if i != len(buf):
            raise LogCorruptError(path, base + i, "torn record")


def read_origin(plan: Plan, prefix: bytes, seq: int) -> Iterator[Mutation]:
    """Like :func:`read_records`, keeping the records whose payload starts with
    ``prefix`` (an origin's, see :meth:`mesh.storage.log.Log.read_from`) and whose seq is
    at least ``seq``; the others are CRC-checked but not decoded."""
    new, mutation = tuple.__new__, Mutation
    for record, _ in _origin_records(plan, prefix, CHUNK):
        if record[1] >= seq:
            yield new(mutation, record)


def read_origin_range(
    plan: Plan, prefix: bytes, first: int, last: int, max_bytes: int
) -> tuple[list[Record], int]:
    """The records of one origin (``prefix``, as :func:`read_origin`) with seq in
    ``first..last``, in log order, up to about ``max_bytes`` of payload (at least
    one record); returns them (as plain tuples, sent on as they are) and their
    payload bytes.  Reads in RANGE_CHUNK pieces, so that a bounded request
    reads little past what it returns.
    """
    out: list[Record] = []
    add, size = out.append, 0
    for record, payload in _origin_records(plan, prefix, RANGE_CHUNK):
        seq = record[1]
        if seq < first:
            continue
        if seq > last:
            break
        add(record)
        size += len(payload)
        if size >= max_bytes:
            break
    return out, size


def _origin_records(plan: Plan, prefix: bytes, chunk: int) -> Iterator[tuple[tuple, bytes]]:
    """``(record, payload)`` of each record whose payload starts with ``prefix``,
    read ``chunk`` bytes at a time; a chunk's matching records are all decoded
    (one Unpacker) before any of them is yielded."""
    for path, pos, stop in plan:
        buf, i, base = b"", 0, pos
        for data in read_chunks(path, pos, stop, chunk):
            buf, base = buf[i:] + data, base + i
            payloads, i = _split(path, buf, base, stop)
            matching = [payload for payload in payloads if payload.startswith(prefix)]
            try:
                records = list(_unpacker(matching))
            except DECODE_ERRORS:
                records = []
            if len(records) != len(matching):
                raise _undecodable(path, base, payloads)
            yield from zip(records, matching, strict=True)
        if i != len(buf):
            raise LogCorruptError(path, base + i, "torn record")


def _split(path: Path, buf: bytes, base: int, stop: int) -> tuple[list[bytes], int]:
    """The CRC-checked payloads of the whole records that ``buf`` starts with, and
    where they end.  ``base`` is the file position of ``buf``; ``stop`` the end."""
    unpack = FRAME.unpack_from
    payloads: list[bytes] = []
    add = payloads.append
    i, n = 0, len(buf)
    last = n - 8
    while i <= last:
        length, crc = unpack(buf, i)
        j = i + 8 + length
        if j > n:
            if base + j > stop:
                raise LogCorruptError(path, base + i, "torn record")
            break
        payload = buf[i + 8 : j]
        if crc32c(payload) != crc:
            raise LogCorruptError(path, base + i, "CRC mismatch")
        add(payload)
        i = j
    return payloads, i


def _unpacker(payloads: list[bytes]) -> msgpack.Unpacker:
    unpacker = msgpack.Unpacker(use_list=False, max_buffer_size=0)
    unpacker.feed(b"".join(payloads))
    return unpacker


def _undecodable(path: Path, base: int, payloads: list[bytes]) -> LogCorruptError:
    """The error for the first of ``payloads`` (starting at ``base``) that is not one record."""
    for payload in payloads:
        try:
            msgpack.unpackb(payload)
        except DECODE_ERRORS:
            break
        base += FRAME.size + len(payload)
    return LogCorruptError(path, base, "undecodable record")


@dataclass(frozen=True)
class Snapshot:
    """A validated snapshot file: its meta and where its entries lie."""

    path: Path
    offset: int
    meta: dict[str, Any]
    count: int
    start: int  # file position of the first entry
    stop: int  # file position of the trailer

    def entries(self) -> Iterator[Mutation]:
        """The snapshot's entries, streamed from disk."""
        return read_records([(self.path, self.start, self.stop)])


def write(folder: Path, offset: int, entries: Iterable[Mutation], meta: dict[str, Any]) -> Path:
    """Write the snapshot of ``offset`` into ``folder``; return its path."""
    if "offset" in meta:
        raise ValueError("snapshot meta must not hold the key 'offset': the snapshot adds it")
    path = folder / f"{offset:020d}.snap"
    tmp = path.with_name(path.name + ".tmp")
    pack, frame = msgpack.Packer().pack, FRAME.pack
    try:
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(SNAPSHOT_MAGIC, FORMAT_VERSION, 0))
            payload = pack({**meta, "offset": offset})
            data = frame(len(payload), crc32c(payload)) + payload
            f.write(data)
            body, count = crc32c(data), 0
            parts: list[bytes] = []
            for m in entries:
                payload = pack(m)
                parts += (frame(len(payload), crc32c(payload)), payload)
                count += 1
                if len(parts) >= 2 * _BATCH:
                    data = b"".join(parts)
                    f.write(data)
                    body = crc32c(data, body)
                    parts.clear()
            data = b"".join(parts)
            f.write(data)
            trailer = _TRAILER.pack(0x92, 0xCF, count, 0xCE, crc32c(data, body))
            f.write(frame(len(trailer), crc32c(trailer)) + trailer)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(folder)
    return path


def check(path: Path) -> Snapshot | None:
    """The snapshot at ``path`` if it is valid, else None (logged as a warning)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic, version, _flags = _HEADER.unpack(f.read(_HEADER.size))
            if magic != SNAPSHOT_MAGIC or version != FORMAT_VERSION:
                raise ValueError("bad header")
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
            body = 0
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
    return Snapshot(path, meta["offset"], meta, count, start, stop)


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
