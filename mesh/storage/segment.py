"""One segment of the log (:mod:`mesh.storage.log`) and its index file: their formats,
the scan that rebuilds what the log knows of a segment, index I/O, and where
the index marks say a read of the segments starts.

All integers are big-endian.

Segment (``.log``)::

    header, 16 bytes:
        0   4  magic b"PCLG"
        4   2  u16 format version (1)
        6   2  u16 flags (reserved, 0)
        8   8  u64 offset of the first record (equals the file name)
    then records, back to back, until the end of the file or, in the active
    segment, the zero bytes of its preallocated tail:
        0   4  u32 payload length N (N > 0)
        4   4  u32 CRC32C (Castagnoli) of the payload
        8   N  payload: msgpack of Mutation.to_record(), see mesh.core.mutation

Index (``.idx``)::

    0   4  magic b"PCIX"
    4   2  u16 format version (1)
    6   2  u16 flags (reserved, 0)
    8   4  u32 payload length N
    12  4  u32 CRC32C of the payload
    16  N  payload: msgpack map
           first:    offset of the segment's first record
           sealed:   false while the segment is the active one
           size:     segment size in bytes (when sealed)
           count:    number of records (when sealed)
           hlc:      highest hlc of the records before the segment
           end_hlc:  highest hlc up to the segment's end (when sealed)
           end_seqs: {origin: highest seq} up to the segment's end (when sealed)
           marks:    [[offset, file position, {origin: highest seq before offset}], ...]
                     the first mark is the segment's first record; then one
                     about every mesh.storage.log.MARK_BYTES of records

Preallocation (:func:`prefill`): the active segment's file is kept filled with zeros about
``PREFILL_BYTES`` past its last record (never past ``segment_bytes``, unless
one record is larger), because an fdatasync that need not also commit a new
file size costs about 40% less here (on a disk with no room for it, records
are written without).  A write that goes 256 KiB or more past the zeros (a
batch of large values) extends the file itself: zeros ahead of it
would write it twice, and its fdatasync is mostly data anyway.  Recovery
takes a zero length followed only by zero bytes as the end of the records and
cuts the file there without a warning; sealing a segment and closing the log
cut it there too.

Recovery on open: the active (last) segment is scanned record by record.  A
torn tail (short header, short payload) is truncated to the end of the last
good record and fsynced, with a warning; so is a last segment whose header
was torn while it was created.  After a corrupt record (CRC mismatch,
undecodable payload) every valid record that follows is kept
(:func:`mesh.storage.salvage.salvage_tail`).  Corruption inside a sealed
segment raises :class:`LogCorruptError` naming the file and byte position,
when found: on open if its index must be rebuilt, otherwise when
:meth:`mesh.storage.log.Log.replay` or ``read_from`` reads it; recovery and
replay then move the segment aside (:mod:`mesh.storage.salvage`).
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from mesh.storage.checksum import crc32c
from mesh.storage.datadir import write_atomically
from mesh.storage.records import CHUNK, DECODE_ERRORS, FRAME, LogCorruptError, Plan
from mesh.storage.salvage import salvage_tail

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Written in new segments and indexes.  2: records may carry counter states
(mesh.core.counters); version 1 files (no counters) are read as they are."""
READ_VERSIONS = (1, 2)
SEGMENT_MAGIC = b"PCLG"
INDEX_MAGIC = b"PCIX"
HEADER = struct.Struct(">4sHHQ")
INDEX_HEADER = struct.Struct(">4sHHII")

Mark = tuple[int, int, dict[str, int]]  # (offset, file position, {origin: max seq before})


@dataclass
class Segment:
    """What the log knows about one segment file."""

    first: int
    path: Path
    size: int = HEADER.size
    count: int = 0
    start_hlc: int = 0
    marks: list[Mark] = field(default_factory=list)

    @property
    def end(self) -> int:
        """The offset after the segment's last record."""
        return self.first + self.count


def scan(seg: Segment, last: bool, seqs: dict[str, int], hlc: int, mark_bytes: int) -> int:
    """Rebuild ``seg``'s size, count and marks by reading it; repair a bad tail
    if ``last`` (see the module docstring).  ``seqs`` (origin -> highest seq) and
    ``hlc`` are what the records before the segment hold: ``seqs`` is raised in
    place past its records; returns the highest hlc up to its end."""
    path, start_hlc, kept = seg.path, hlc, 0
    with open(path, "r+b" if last else "rb") as f:
        head = f.read(HEADER.size)
        if len(head) < HEADER.size or (last and not any(head) and not any(f.read())):
            if not last:
                raise LogCorruptError(path, 0, "torn segment header")
            logger.warning("%s: torn segment header (%d bytes), rewriting it", path, len(head))
            f.seek(0)
            f.truncate()
            f.write(HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, seg.first))
            f.flush()
            os.fsync(f.fileno())
            head = HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, seg.first)
        magic, version, _flags, first = HEADER.unpack(head)
        if magic != SEGMENT_MAGIC or version not in READ_VERSIONS or first != seg.first:
            raise LogCorruptError(path, 0, "bad segment header")
        seg.start_hlc = hlc
        marks: list[Mark] = [(seg.first, HEADER.size, dict(seqs))]
        next_mark = HEADER.size + mark_bytes
        count, reason = 0, ""
        buf, i, base = b"", 0, HEADER.size
        file_size = f.seek(0, os.SEEK_END)
        f.seek(base)
        unpack, unpackb = FRAME.unpack_from, msgpack.unpackb
        while not reason:
            data = f.read(CHUNK)
            if not data:
                break
            buf, base, i = buf[i:] + data, base + i, 0
            n = len(buf)
            while i + 8 <= n:
                length, crc = unpack(buf, i)
                j = i + 8 + length
                if j > n:
                    if base + j > file_size:
                        reason = "torn record"
                    break
                if base + i >= next_mark:
                    marks.append((seg.first + count, base + i, dict(seqs)))
                    next_mark = base + i + mark_bytes
                payload = buf[i + 8 : j]
                if crc32c(payload) != crc or not length:
                    reason = "CRC mismatch" if length else "empty record"
                    break
                try:
                    origin, s, h, _key, _value, _deadline = unpackb(payload)
                    if s > seqs.get(origin, -1):
                        seqs[origin] = s
                    if h > hlc:
                        hlc = h
                except DECODE_ERRORS:
                    reason = "undecodable record"
                    break
                count += 1
                i = j
        good = base + i
        if not reason and i < len(buf):
            reason = "torn record"
        if reason == "empty record" and last and zeros_from(f, good):
            f.truncate(good)  # the preallocated tail: nothing was lost
        elif reason:
            if not last:
                raise LogCorruptError(path, good, reason)
            kept = salvage_tail(f, path, good, file_size, reason)
    if kept:  # records past bad bytes were kept: the rewritten segment is clean
        return scan(seg, last, seqs, start_hlc, mark_bytes)
    seg.size, seg.count, seg.marks = good, count, marks
    return hlc


def write_index(seg: Segment, sealed: bool, end_seqs: dict[str, int], end_hlc: int) -> None:
    """Write ``seg``'s index file (temp file, fsync, rename); ``end_seqs`` and
    ``end_hlc``, what the log holds up to the segment's end, are kept once sealed."""
    doc: dict[str, Any] = {"first": seg.first, "sealed": sealed, "hlc": seg.start_hlc}
    doc["marks"] = [list(mark) for mark in seg.marks]
    if sealed:
        doc.update(size=seg.size, count=seg.count, end_seqs=end_seqs, end_hlc=end_hlc)
    payload = msgpack.packb(doc)
    head = INDEX_HEADER.pack(INDEX_MAGIC, FORMAT_VERSION, 0, len(payload), crc32c(payload))
    write_atomically(seg.path.with_suffix(".idx"), head + payload, sync_dir=False)


def read_index(seg: Segment) -> dict[str, Any] | None:
    """``seg``'s index as a dict, or None when it is missing or bad (rebuild it then)."""
    path = seg.path.with_suffix(".idx")
    try:
        data = path.read_bytes()
        magic, version, _flags, length, crc = INDEX_HEADER.unpack_from(data)
        payload = data[INDEX_HEADER.size :]
        if magic != INDEX_MAGIC or version not in READ_VERSIONS or len(payload) != length:
            raise ValueError("bad header")
        if crc32c(payload) != crc:
            raise ValueError("CRC mismatch")
        index = msgpack.unpackb(payload, strict_map_key=False)
        if index["first"] != seg.first or index["marks"][0][:2] != [seg.first, HEADER.size]:
            raise ValueError("does not match its segment")
        return dict(index)
    except FileNotFoundError:
        logger.info("%s: no index, rebuilding it", path)
    except (*DECODE_ERRORS, struct.error, KeyError, IndexError) as exc:
        logger.warning("%s: bad index (%s), rebuilding it", path, exc)
    return None


def offset_plan(segs: list[Segment], offset: int) -> tuple[Plan, int]:
    """Where to read ``segs`` from to reach the record at ``offset``: the byte ranges
    from the index mark at or before it, and how many records to skip first."""
    i = max(bisect.bisect_right(segs, offset, key=lambda s: s.first) - 1, 0)
    if offset >= segs[i].end and i + 1 < len(segs):  # in the hole of a segment moved aside
        i, offset = i + 1, segs[i + 1].first
    j = bisect.bisect_right(segs[i].marks, offset, key=lambda mk: mk[0]) - 1
    first, pos, _seqs = segs[i].marks[j]
    plan = [(segs[i].path, pos, segs[i].size)]
    plan += [(s.path, HEADER.size, s.size) for s in segs[i + 1 :]]
    return plan, offset - first


def origin_plan(segs: list[Segment], origin: str, seq: int) -> Plan:
    """Where to read ``segs`` from to find ``origin``'s records from ``seq`` on: the
    byte ranges from the last index mark before which the origin is below ``seq``."""

    def key(mark: Mark) -> int:
        return mark[2].get(origin, -1)

    i = max(bisect.bisect_left(segs, seq, key=lambda s: key(s.marks[0])) - 1, 0)
    j = max(bisect.bisect_left(segs[i].marks, seq, key=key) - 1, 0)
    plan = [(segs[i].path, segs[i].marks[j][1], segs[i].size)]
    plan += [(s.path, HEADER.size, s.size) for s in segs[i + 1 :]]
    return plan


def zeros_from(f: Any, pos: int) -> bool:
    """Whether the file ``f`` holds only zero bytes from ``pos`` to its end."""
    f.seek(pos)
    while chunk := f.read(CHUNK):
        if chunk.strip(b"\0"):
            return False
    return True


def write_at(fd: int, data: bytes, pos: int) -> None:
    """Write all of ``data`` at file position ``pos``."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, pos)
        view, pos = view[written:], pos + written


#: the active segment is kept filled with zeros about this far past its last
#: record (see "Preallocation" in the module docstring)
PREFILL_BYTES = 1024 * 1024
#: a write that goes at least this far past the zeros is not zero-filled ahead,
#: and a write of at least this many bytes goes by ``pwritev``: a large write
LARGE_WRITE = 256 * 1024


def prefill(fd: int, filled: int, end: int, limit: int) -> int:
    """Zero-fill the file ``fd`` from ``filled`` (its size) to about ``PREFILL_BYTES``
    past ``end``, never past ``limit`` (unless ``end`` is); return its new size.

    A write that goes ``LARGE_WRITE`` or more past the zeros is left to extend
    the file itself: zeros ahead of it would double a large write (with 1 MB
    values, every byte was written as a zero first).  So is a write the disk
    has no room to zero-fill for (it ends at ``end``).
    """
    if end - filled >= LARGE_WRITE:
        return end
    target = max(end, min(end + PREFILL_BYTES, limit))
    try:
        write_at(fd, bytes(target - filled), filled)
    except OSError:  # ENOSPC, EDQUOT: a write that fits must not fail for the zeros
        os.ftruncate(fd, filled)
        return end
    return target


#: the most buffers one ``pwritev`` takes
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def write_parts(fd: int, parts: list[bytes], pos: int, size: int) -> None:
    """Write the concatenation of ``parts`` (``size`` bytes) at file position ``pos``.

    A large write of few parts goes by one ``pwritev``, sparing a copy of the
    records (1 MB values: a 4 MB batch copied once more); the others are joined
    and written with one ``pwrite``, cheaper for many small records.
    """
    if size < LARGE_WRITE or len(parts) > IOV_MAX:
        write_at(fd, b"".join(parts), pos)
        return
    written = os.pwritev(fd, parts, pos)
    if written < size:  # a short write (rare): the rest as one buffer
        write_at(fd, b"".join(parts)[written:], pos + written)


def start_write_back(path: Path, sync: Callable[[int], None]) -> threading.Thread:
    """Start a thread that ``sync``s (fdatasync) ``path`` through a file description of its own.

    For :meth:`mesh.storage.log.Log.write_back`: an error it meets is the log's
    own fsync's to report (Linux reports a writeback error once per open file
    description), so it is swallowed here.
    """
    fd = os.open(path, os.O_RDONLY)
    thread = threading.Thread(target=_sync_and_close, args=(fd, sync), daemon=True)
    thread.start()
    return thread


def _sync_and_close(fd: int, sync: Callable[[int], None]) -> None:
    try:
        sync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
