"""Catch-up's read of the log: what a peer lacks of every origin, in one pass, undecoded.

A node logs its peers' entries as they arrive, so its log interleaves the
origins.  Reading what a peer lacks one origin at a time
(:meth:`mesh.storage.log.Log.read_range`) went over the records of the others
too, CRC-checking each: a peer that lacks two origins had every record read
twice.  :func:`read_lacking` reads the log once, from the earliest index
mark any of them needs, and keeps each origin's records with seq in its
wanted range, up to a batch's bounds.

It does not decode them either: a record's payload is the msgpack of its
entry, exactly as a BATCH carries it inline, so the payloads are sent as they
are (:class:`~mesh.core.catchup.RawEntries`).  A node logs each origin's
records in seq order, so from an index mark (which holds each origin's highest
seq before it) the n-th record of an origin is the mark's seq + n when the
log has no hole: the records are picked by counting, with C-level passes,
and only the first and last record taken of each origin are decoded to check
that count.  When they do not match (a hole in a damaged log, or records
that start past the mark's seq after a full sync), the range is read again
decoding every record (:func:`_decoded`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from itertools import accumulate, compress, repeat

import msgpack

from mesh.core.catchup import RawEntries
from mesh.core.mutation import record_prefix
from mesh.storage.log import Log
from mesh.storage.records import (
    DECODE_ERRORS,
    RANGE_CHUNK,
    LogCorruptError,
    Plan,
    _split,
    matching_records,
    read_chunks,
)
from mesh.storage.segment import HEADER, Segment

Wants = dict[str, tuple[int, int]]
_STARTSWITH = bytes.startswith


def read_lacking(
    log: Log, wants: Wants, max_entries: int, max_bytes: int
) -> tuple[RawEntries, bool]:
    """The records of each origin of ``wants`` with seq in its ``(first, last)``, up to
    ``max_entries`` records and about ``max_bytes`` of payload (at least one);
    and whether it stopped for that bound (False: it read all that could
    match).  Each origin's records are in seq order, one run per origin.  A
    bad record raises :class:`~mesh.storage.records.LogCorruptError`.
    """
    wants = {o: r for o, r in wants.items() if r[0] <= r[1]}
    if not wants or max_entries <= 0:
        return RawEntries([], {}), bool(wants)
    segments = log._segments  # the storage layer reading its own log
    i, j = min(_start(segments, origin, first) for origin, (first, _) in wants.items())
    seg, (_, pos, before) = segments[i], segments[i].marks[j]
    plan = [(seg.path, pos, seg.size), *((s.path, HEADER.size, s.size) for s in segments[i + 1 :])]
    found = _counted(plan, wants, before, max_entries, max_bytes)
    if found is None:
        found = _decoded(plan, wants, max_entries, max_bytes)
    return found


def _start(segments: list[Segment], origin: str, seq: int) -> tuple[int, int]:
    """The segment and index mark to read from for ``origin``'s records from ``seq``
    on (as :func:`mesh.storage.segment.origin_plan`): the last mark before which
    the origin is below ``seq``."""

    def key(mark: tuple) -> int:
        return mark[2].get(origin, -1)

    i = max(bisect.bisect_left(segments, seq, key=lambda s: key(s.marks[0])) - 1, 0)
    return i, max(bisect.bisect_left(segments[i].marks, seq, key=key) - 1, 0)


def _counted(
    plan: Plan, wants: Wants, before: dict[str, int], max_entries: int, max_bytes: int
) -> tuple[RawEntries, bool] | None:
    """The records, picked by counting from the seqs ``before`` the plan's start;
    None when the count does not match the records (see the module docstring)."""
    prefixes = {o: record_prefix(o) for o in wants}
    skip = {o: first - 1 - before.get(o, 0) for o, (first, _) in wants.items()}
    if min(skip.values()) < 0:
        return None
    left = {o: last - first + 1 for o, (first, last) in wants.items()}
    taken: dict[str, list[bytes]] = {o: [] for o in wants}
    count = size = 0
    bounded = False
    for payloads in _payloads(plan):
        for origin, prefix in prefixes.items():
            if not left[origin]:
                continue
            mine = list(compress(payloads, map(_STARTSWITH, payloads, repeat(prefix))))
            passed = min(skip[origin], len(mine))
            skip[origin] -= passed
            take = mine[passed : passed + min(left[origin], max_entries - count)]
            more = sum(map(len, take))
            if size + more >= max_bytes and take:
                ends = list(accumulate(map(len, take), initial=size))
                take = take[: bisect.bisect_left(ends, max_bytes, 1)]
                more, bounded = ends[len(take)] - size, True
            taken[origin] += take
            left[origin] -= len(take)
            count, size = count + len(take), size + more
            if bounded or count >= max_entries:
                return _checked(taken, wants, True)
        if not any(left.values()):
            break
    return _checked(taken, wants, bounded)


def _checked(
    taken: dict[str, list[bytes]], wants: Wants, bounded: bool
) -> tuple[RawEntries, bool] | None:
    """``taken`` as RawEntries, if the first and last record of each origin carry
    the seqs the count says, and each origin got some unless ``bounded``; else None."""
    runs: dict[str, tuple[int, int]] = {}
    for origin, records in taken.items():
        if not records:
            if bounded:
                continue  # not reached yet
            return None  # the log does not hold what was counted on
        first = wants[origin][0]
        last = first + len(records) - 1
        try:
            ends = msgpack.unpackb(records[0]), msgpack.unpackb(records[-1])
        except DECODE_ERRORS:
            return None
        if [e[:2] for e in ends] != [[origin, first], [origin, last]]:
            return None
        runs[origin] = (first, last)
    payloads = [p for o in runs for p in taken[o]]
    return RawEntries(payloads, runs), bounded


def _decoded(plan: Plan, wants: Wants, max_entries: int, max_bytes: int) -> tuple[RawEntries, bool]:
    """The records, each decoded to read its seq: for a log whose count does not
    match (a hole, or an origin that starts past the mark's seq)."""
    prefixes = tuple(record_prefix(o) for o in wants)
    wants = dict(wants)
    taken: dict[str, list[bytes]] = {o: [] for o in wants}
    runs: dict[str, tuple[int, int]] = {}
    count = size = 0
    for matching, records in matching_records(plan, prefixes):
        for record, payload in zip(records, matching, strict=True):
            origin, seq = record[0], record[1]
            wanted = wants.get(origin)
            if wanted is None or seq < wanted[0]:
                continue
            if seq > wanted[1]:  # a node logs each origin in seq order
                del wants[origin]
                if not wants:
                    return RawEntries([p for o in runs for p in taken[o]], runs), False
                continue
            taken[origin].append(payload)
            runs[origin] = (runs.get(origin, (seq, seq))[0], seq)
            count, size = count + 1, size + len(payload)
            if size >= max_bytes or count >= max_entries:
                return RawEntries([p for o in runs for p in taken[o]], runs), True
    return RawEntries([p for o in runs for p in taken[o]], runs), False


def _payloads(plan: Plan) -> Iterator[list[bytes]]:
    """The CRC-checked payloads of the records of ``plan``, a chunk's at a time."""
    for path, pos, stop in plan:
        buf, i, base = b"", 0, pos
        for data in read_chunks(path, pos, stop, RANGE_CHUNK):
            buf, base = buf[i:] + data, base + i
            payloads, i = _split(path, buf, base, stop)
            yield payloads
        if i != len(buf):
            raise LogCorruptError(path, base + i, "torn record")
