"""The log's record frame and its readers: replay's and catch-up's hot path.

Log segments (:mod:`mesh.storage.segment`) hold records framed this way, back
to back (snapshots frame their blocks of entries the same way:
:mod:`mesh.storage.snapblocks`); integers big-endian::

    0   4  u32 payload length N
    4   4  u32 CRC32C (Castagnoli) of the payload
    8   N  payload: msgpack of Mutation.to_record(), see mesh.core.mutation

A reader is given a *plan*: the (file, from position, to position) ranges to
read, in order.  It reads them a chunk at a time, CRC-checks each chunk's
whole records before yielding any of them, and decodes their payloads with
one msgpack Unpacker per chunk.  A bad record raises :class:`LogCorruptError`
(re-exported by :mod:`mesh.storage.log`) naming the file and byte position.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import msgpack

from mesh.core.errors import PyCacheError
from mesh.core.mutation import Mutation, Record
from mesh.storage.checksum import crc32c

#: the record frame: u32 payload length, u32 CRC32C of the payload
FRAME = struct.Struct(">II")
#: bytes read from a file at a time
CHUNK = 1 << 20
#: reads of a bounded range of records (catch-up) go by these smaller pieces
RANGE_CHUNK = 256 * 1024
#: what msgpack raises for a payload it cannot decode
DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


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
    read ``chunk`` bytes at a time (see :func:`matching_records`)."""
    for payloads, records in matching_records(plan, (prefix,), chunk):
        yield from zip(records, payloads, strict=True)


def matching_records(
    plan: Plan, prefixes: tuple[bytes, ...], chunk: int = RANGE_CHUNK
) -> Iterator[tuple[list[bytes], list]]:
    """``(payloads, records)`` of each chunk's records whose payload starts with
    one of ``prefixes``, read ``chunk`` bytes at a time; a chunk's matching
    records are all decoded (one Unpacker) before any of them is yielded."""
    for path, pos, stop in plan:
        buf, i, base = b"", 0, pos
        for data in read_chunks(path, pos, stop, chunk):
            buf, base = buf[i:] + data, base + i
            payloads, i = _split(path, buf, base, stop)
            matching = [payload for payload in payloads if payload.startswith(prefixes)]
            try:
                records = list(_unpacker(matching))
            except DECODE_ERRORS:
                records = []
            if len(records) != len(matching):
                raise _undecodable(path, base, payloads)
            yield matching, records
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
