"""The segmented append-only log: appending, fsync policy, reading, snapshots, retention.

Every mutation a node applies is appended here before it is acknowledged, so
that the node can rebuild its store after a restart and serve catch-up to its
peers.  Snapshots (see :mod:`mesh.storage.snapshot`) bound replay time and disk use.

Files under a node's data directory::

    log/<first offset>.log      segments, named by the offset of their first record
    log/<first offset>.idx      the sparse index of each segment (rebuildable)
    snapshots/<offset>.snap     snapshots, see mesh.storage.snapshot

``<first offset>`` and ``<offset>`` are 20 decimal digits, zero-padded, so that
names sort like numbers.  An *offset* numbers records 0, 1, 2, ... across the
whole log.  The record frame and its readers are :mod:`mesh.storage.records`'s;
the formats of segments and indexes, and how a segment is scanned and repaired,
:mod:`mesh.storage.segment`'s; opening the log, :mod:`mesh.storage.recovery`'s.

A segment is rolled (sealed, and a new one started) before a record that would
take it past ``segment_bytes``; a record is never split, and a segment always
holds at least one record before it rolls.  Only the last segment is written.

The index is written (temp file, fsync, rename) when a segment is created and
again when it is sealed, so that opening the log reads only the active
segment, and so that the highest seq of every origin survives compaction.  A
missing or bad index of a sealed segment is rebuilt by scanning the segment.

Preallocation (zeros kept ahead of the records): see :mod:`mesh.storage.segment`.

Durability: the data of every segment is fsynced before it is sealed and the
directory is fsynced whenever a file is created, renamed or deleted,
whatever the fsync policy.  The policy decides when appended records are
fsynced; see :meth:`Log.flush`.

A :class:`Log` is not thread-safe: one thread (the node's event loop) calls it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

from mesh.core.errors import ConfigError
from mesh.core.histogram import Histogram
from mesh.core.mutation import (
    Mutation,
    PackedRecords,
    Record,
    encode_records,
    raise_seqs,
    record_prefix,
)
from mesh.storage import snapshot as _snapshot
from mesh.storage.checksum import crc32c
from mesh.storage.datadir import fsync_dir
from mesh.storage.records import (
    FRAME,
    LogCorruptError,
    read_origin,
    read_origin_range,
    read_records,
)
from mesh.storage.recovery import recover
from mesh.storage.segment import (
    FORMAT_VERSION,
    HEADER,
    PREFILL_BYTES,
    SEGMENT_MAGIC,
    Segment,
    offset_plan,
    origin_plan,
    prefill,
    start_write_back,
    write_index,
    write_parts,
)
from mesh.storage.writeback import write_out

__all__ = ["FSYNC_POLICIES", "PREFILL_BYTES", "Log", "LogCorruptError"]

logger = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "interval", "never")
#: smallest accepted ``segment_bytes`` (one header and one small record)
MIN_SEGMENT_BYTES = 64
#: one index mark about every this many bytes of records
MARK_BYTES = 256 * 1024

_fdatasync = getattr(os, "fdatasync", os.fsync)
_now = time.monotonic


class Log:
    """A node's segmented append-only log of mutations, with snapshots.

    ``fsync`` is one of :data:`FSYNC_POLICIES`; ``fsync_interval_ms`` is the
    period of the ``interval`` policy; a segment is rolled before it would pass
    ``segment_bytes``; :meth:`compact` keeps at least the newest
    ``retention_bytes`` of segments for catch-up.  Opening recovers the log
    (see the module docstring); bad arguments raise
    :class:`~mesh.core.errors.ConfigError`, a ``ValueError``.
    """

    _mark_bytes = MARK_BYTES

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        fsync: str = "always",
        fsync_interval_ms: int = 100,
        segment_bytes: int = 64 * 2**20,
        retention_bytes: int = 2**30,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        for name, value, low in (
            ("fsync_interval_ms", fsync_interval_ms, 1),
            ("segment_bytes", segment_bytes, MIN_SEGMENT_BYTES),
            ("retention_bytes", retention_bytes, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        self.data_dir = Path(data_dir)
        self.fsync, self.fsync_interval_ms = fsync, fsync_interval_ms
        self.segment_bytes = segment_bytes
        self.retention_bytes = retention_bytes
        self._dir = self.data_dir / "log"
        self._snap_dir = self.data_dir / "snapshots"
        self._segments: list[Segment] = []
        self._seqs: dict[str, int] = {}
        self._max_hlc = 0
        self._fd = -1
        self._filled = 0  # bytes in the active segment's file, zero-filled tail included
        self._unsynced = False
        self.unsynced_bytes = 0  # appended to the active segment since its last fsync
        self._closed = False
        self._failed: OSError | None = None
        self._last_sync = _now()
        self._writing_back: threading.Thread | None = None
        self.appended = 0  # bytes of records appended since opened (the snapshot policy's clock)
        self.fsync_seconds = Histogram()  # how long each fsync of appended records took
        for folder in (self._dir, self._snap_dir):
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                fsync_dir(folder.parent)
        self._recover()

    # ------------------------------------------------------------------ state

    @property
    def next_offset(self) -> int:
        """The offset the next appended record gets."""
        return self._segments[-1].end

    @property
    def max_hlc(self) -> int:
        """The highest hlc of any record ever appended (0 when none)."""
        return self._max_hlc

    def max_seqs(self) -> dict[str, int]:
        """``{origin: highest seq}`` over every record ever appended, compacted ones too."""
        return dict(self._seqs)

    def floor(self) -> dict[str, int]:
        """``{origin: highest seq}`` of the records compaction deleted.

        :meth:`read_from` can serve an origin's records above its floor only;
        a peer that needs older ones gets a snapshot instead.
        """
        return dict(self._segments[0].marks[0][2])

    def first_offset(self) -> int:
        """The lowest offset still on disk (``next_offset`` when the log is empty)."""
        return self._segments[0].first

    def __repr__(self) -> str:
        return (
            f"<Log {str(self._dir)!r} offsets {self.first_offset()}..{self.next_offset} "
            f"segments={len(self._segments)} fsync={self.fsync}>"
        )

    # ---------------------------------------------------------------- writing

    def append(self, mutations: Sequence[Record], records: Sequence[bytes] | None = None) -> int:
        """Append a batch; return the offset of its last record.

        ``records``, when given, are the mutations already encoded
        (:func:`mesh.core.mutation.encode_records`), one each, and are written as
        they are.

        The batch is encoded first and written with one ``write`` call per
        segment it lands in (segments roll between records).  Nothing is
        fsynced here: call :meth:`flush` once per batch before acknowledging.
        An empty batch writes nothing and returns ``next_offset - 1``.  If
        the write fails the segment is truncated back and the error raised.
        """
        if self._closed:
            raise ValueError("append to a closed log")
        if self._failed is not None:
            raise OSError("an earlier fsync of the log failed: reopen it") from self._failed
        if not mutations:
            return self.next_offset - 1
        if records is None:
            records = encode_records(mutations)
        elif len(records) != len(mutations):
            raise ValueError("one encoded record per mutation")
        # account first: a bad mutation raises before any write
        seqs = raise_seqs(self._seqs, mutations)
        hlc = max(self._max_hlc, max(map(itemgetter(2), mutations)))
        # one C-level pass per step (a Python loop per record cost twice as much)
        frames = list(map(FRAME.pack, map(len, records), map(crc32c, records)))
        parts = list(chain.from_iterable(zip(frames, records, strict=True)))
        seg = self._segments[-1]
        size = sum(map(len, parts))
        if seg.size + size <= self.segment_bytes:
            self._write(seg, parts, size, len(mutations))
            self._seqs, self._max_hlc = seqs, hlc
            return seg.end - 1
        start, size = 0, seg.size  # the batch crosses segment_bytes: split it, rolling
        for i in range(len(mutations)):
            length = len(parts[2 * i]) + len(parts[2 * i + 1])
            if size + length > self.segment_bytes and (seg.count or i > start):
                self._write_some(seg, parts, mutations, start, i)
                self._roll()
                seg, size, start = self._segments[-1], HEADER.size, i
            size += length
        self._write_some(seg, parts, mutations, start, len(mutations))
        return seg.end - 1

    def _write_some(
        self, seg: Segment, parts: list[bytes], batch: Sequence[Record], start: int, stop: int
    ) -> None:
        """Write records ``start:stop`` of a batch that is split across segments."""
        if stop > start:
            some = parts[2 * start : 2 * stop]
            self._write(seg, some, sum(map(len, some)), stop - start)
            written = batch[start:stop]
            self._seqs = raise_seqs(self._seqs, written)
            self._max_hlc = max(self._max_hlc, max(map(itemgetter(2), written)))

    def _write(self, seg: Segment, parts: list[bytes], size: int, count: int) -> None:
        """Write ``count`` framed records (``parts``, ``size`` bytes) with one call
        (:func:`~mesh.storage.segment.write_parts`); on failure truncate them away."""
        if seg.size - seg.marks[-1][1] >= self._mark_bytes:
            seg.marks.append((seg.end, seg.size, dict(self._seqs)))
        try:
            if seg.size + size > self._filled:
                self._filled = prefill(self._fd, self._filled, seg.size + size, self.segment_bytes)
            write_parts(self._fd, parts, seg.size, size)
        except BaseException:
            os.ftruncate(self._fd, seg.size)
            self._filled = seg.size
            raise
        seg.size += size
        seg.count += count
        self.appended += size
        self.unsynced_bytes += size
        self._unsynced = True

    def flush(self) -> None:
        """The group-commit point: call once per batch, before acknowledging it.

        ``always``: fsync when anything was appended since the last fsync.
        ``interval``: fsync only when ``fsync_interval_ms`` has passed since the
        last one (:meth:`tick` covers the rest).  ``never``: nothing; the data
        was handed to the OS by :meth:`append`.  A failed fsync raises
        ``OSError`` and poisons the log: every later append or fsync raises too
        (the kernel may have dropped the unsynced pages; a retry would lie).
        """
        if not self._unsynced or self.fsync == "never":
            return
        if self.fsync == "always" or _now() - self._last_sync >= self.fsync_interval_ms / 1000:
            self._sync()

    def tick(self) -> None:
        """Call every ``fsync_interval_ms``: under ``interval``, fsync what is unsynced."""
        if self._unsynced and self.fsync == "interval":
            self._sync()

    def write_back(self) -> None:
        """Start writing the active segment's unsynced data to disk, without waiting.

        For a writer that fsyncs only once at the end of a long run of appends
        (a start-up catch-up): a thread fdatasyncs the segment meanwhile
        (:func:`~mesh.storage.segment.start_write_back`), so that the final
        :meth:`flush` has little left to write.  Nothing is promised durable
        by it; at most one runs at a time.
        """
        if not self._unsynced or self._closed or self._fd < 0:
            return
        if self._writing_back is not None and self._writing_back.is_alive():
            return
        self._writing_back = start_write_back(self._segments[-1].path, _fdatasync)

    def write_out(self) -> int:
        """Under ``always``: start writing the unsynced records to disk without waiting
        (:func:`~mesh.storage.writeback.write_out`); return their bytes (0 otherwise).

        For a group commit that takes in more requests before its fsync
        (:mod:`mesh.roles.groupcommit`): nothing is promised durable by it.
        """
        if self.fsync != "always" or self._fd < 0 or not self.unsynced_bytes:
            return 0
        write_out(self._fd, self._segments[-1].size - self.unsynced_bytes, self.unsynced_bytes)
        return self.unsynced_bytes

    def sync(self) -> None:
        """Fsync whatever is unsynced, whatever the policy (on SIGTERM and close)."""
        if self._unsynced:
            self._sync()

    def _sync(self) -> None:
        if self._failed is not None:
            raise OSError("an earlier fsync of the log failed: reopen it") from self._failed
        try:
            self.fsync_seconds.time(_fdatasync, self._fd)
        except OSError as exc:  # the kernel may have dropped the pages: never retry
            self._failed = exc
            raise
        self._unsynced, self.unsynced_bytes = False, 0
        self._last_sync = _now()

    def close(self) -> None:
        """Fsync and close; further appends raise ``ValueError``.  Idempotent."""
        if self._closed:
            return
        try:
            self.sync()
            if self._fd >= 0:
                os.ftruncate(self._fd, self._segments[-1].size)  # drop the zero-filled tail
        finally:
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- reading

    def replay(self, start_offset: int = 0) -> Iterator[Mutation]:
        """Every record from ``start_offset`` on, in log order.

        The records yielded are those in the log when this is called.  Raises
        ``ValueError`` when ``start_offset`` is past ``next_offset`` or below
        :meth:`first_offset` (compacted away: load a snapshot instead), and,
        while iterating, :class:`LogCorruptError` for a corrupt record.
        """
        if isinstance(start_offset, bool) or not isinstance(start_offset, int):
            raise TypeError(f"start_offset must be an int, got {start_offset!r}")
        if not self.first_offset() <= start_offset <= self.next_offset:
            raise ValueError(
                f"start_offset {start_offset} is outside the log "
                f"[{self.first_offset()}, {self.next_offset}]"
            )
        plan, skip = offset_plan(self._segments, start_offset)
        return read_records(plan, skip)

    def read_from(self, origin: str, seq: int) -> Iterator[Mutation]:
        """The records of ``origin`` with ``seq >= seq``, in log order (for catch-up).

        Starts from the index mark before the first record that can match,
        not from the start of the log.  Like :meth:`replay`, it yields what
        is in the log when called.  Records compacted away are not yielded:
        the caller checks that the seqs it gets are the ones it needs.
        """
        return read_origin(origin_plan(self._segments, origin, seq), record_prefix(origin), seq)

    def read_range(
        self, origin: str, first: int, last: int, max_bytes: int
    ) -> tuple[list[Record], int]:
        """The records of ``origin`` with seq in ``first..last``, in log order, up
        to about ``max_bytes`` of payload (at least one); and their payload bytes.

        :meth:`read_from` as one bounded list, for serving catch-up: it stops
        reading once it has what was asked, at the first record past ``last``
        (a node logs each origin's records in seq order).
        """
        plan, prefix = origin_plan(self._segments, origin, first), record_prefix(origin)
        return read_origin_range(plan, prefix, first, last, max_bytes)

    # -------------------------------------------------------------- snapshots

    def write_snapshot(
        self, entries: Iterable[Mutation] | PackedRecords, meta: dict[str, Any]
    ) -> Path:
        """Write a snapshot covering every record below ``next_offset``; return its path.

        ``entries`` (the store's state, one mutation per key, or the chunks of
        a full sync as they came) are streamed to disk; ``meta`` is any
        msgpack map of the caller's, without the key ``offset``, which the
        snapshot adds.  The log is fsynced first.  Do not append while this
        runs.
        """
        if self._closed:
            raise ValueError("snapshot of a closed log")
        self.sync()
        return _snapshot.write(self._snap_dir, self.next_offset, entries, meta)

    def seal(self) -> None:
        """Seal the active segment, unless empty, and start a new one (before a
        snapshot: compaction can then delete all the log the snapshot covers)."""
        if self._segments[-1].count:
            self._roll()

    def bytes_from(self, offset: int) -> int:
        """Bytes of the segments that start at or past ``offset`` (headers included)."""
        return sum(seg.size for seg in self._segments if seg.first >= offset)

    def snapshot_bytes(self) -> int:
        """The size of the newest snapshot file (0 when there is none)."""
        return next((p.stat().st_size for p in _snapshot.paths(self._snap_dir)), 0)

    def load_snapshot(self) -> tuple[dict[str, Any], Iterator[Record]] | None:
        """The latest valid snapshot as ``(meta, entries)``, or None.

        ``meta`` holds the caller's keys and ``offset``: replay the log from
        there.  Snapshots with a missing or bad trailer or CRC are skipped.
        """
        found = _snapshot.latest(self._snap_dir)
        if found is None:
            return None
        return found.meta, found.entries()

    def compact(self, keep_bytes: int | None = None) -> list[Path]:
        """Delete what the latest valid snapshot and the retention window make useless.

        Deletes, oldest first, the segments whose records are all below the
        latest snapshot's offset and that lie outside the retention window
        (the newest ``retention_bytes`` of segments are kept; the active one
        always is; with ``keep_bytes``, at most that many bytes of whole
        segments), then every snapshot but the latest valid one.  Fsyncs the
        directories; returns the deleted segment and snapshot paths.
        """
        found = _snapshot.latest(self._snap_dir)
        if found is None:
            return []
        deleted: list[Path] = []
        segs = self._segments
        total = sum(seg.size for seg in segs)
        while (
            len(segs) > 1
            and segs[0].end <= found.offset
            and (
                total > keep_bytes
                if keep_bytes is not None
                else total - segs[0].size >= self.retention_bytes
            )
        ):
            seg = segs.pop(0)
            total -= seg.size
            seg.path.unlink()
            seg.path.with_suffix(".idx").unlink(missing_ok=True)
            deleted.append(seg.path)
        if deleted:
            fsync_dir(self._dir)
        return deleted + _snapshot.prune(self._snap_dir, keep=found.path)

    # --------------------------------------------------------------- recovery

    def _recover(self) -> None:
        found = recover(self._dir, self._snap_dir, self._mark_bytes)
        self._segments, self._seqs, self._max_hlc = found.segments, found.seqs, found.max_hlc
        if not self._segments:
            snap = _snapshot.latest(self._snap_dir)
            self._create_segment(snap.offset if snap else 0)
            self._last_sync = _now()
            return
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY)
        self._filled = self._segments[-1].size
        fsync_dir(self._dir)

    def _create_segment(self, first: int) -> None:
        path = self._dir / f"{first:020d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, first))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        seg = Segment(first, path, start_hlc=self._max_hlc)
        seg.marks.append((first, HEADER.size, dict(self._seqs)))
        self._segments.append(seg)
        self._fd, self._filled = fd, HEADER.size
        write_index(seg, False, self._seqs, self._max_hlc)
        fsync_dir(self._dir)

    def _roll(self) -> None:
        seg = self._segments[-1]
        os.ftruncate(self._fd, seg.size)  # a sealed segment ends with its last record
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._unsynced, self.unsynced_bytes = False, 0
        write_index(seg, True, self._seqs, self._max_hlc)
        self._create_segment(seg.end)
