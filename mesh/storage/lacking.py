"""Catch-up's read of the log: what a peer lacks of every origin, in one pass.

A node logs its peers' entries as they arrive, so its log interleaves the
origins.  Reading what a peer lacks one origin at a time
(:meth:`mesh.storage.log.Log.read_range`) goes over the records of the
others too, CRC-checking each: a peer that lacks two origins had every record
read twice.  :func:`read_lacking` reads the log once from the earliest place
any of them is needed and keeps, in log order, every record whose seq is in
its origin's wanted range, until a batch is full.
"""

from __future__ import annotations

from mesh.core.mutation import Record, record_prefix
from mesh.storage.log import Log
from mesh.storage.records import (
    DECODE_ERRORS,
    RANGE_CHUNK,
    LogCorruptError,
    Plan,
    _split,
    _undecodable,
    _unpacker,
    read_chunks,
)
from mesh.storage.segment import origin_plan


def read_lacking(
    log: Log, wants: dict[str, tuple[int, int]], max_entries: int, max_bytes: int
) -> tuple[list[Record], bool]:
    """The records of each ``origin`` of ``wants`` with seq in its ``(first, last)``,
    in log order, up to ``max_entries`` records and about ``max_bytes`` of payload
    (at least one record); and whether it stopped for that bound (False: it read
    everything that could match).  The records are plain tuples, sent on as
    they are; a bad record raises :class:`~mesh.storage.records.LogCorruptError`.
    """
    wants = {o: r for o, r in wants.items() if r[0] <= r[1]}
    if not wants or max_entries <= 0:
        return [], bool(wants)
    segments = log._segments  # the storage layer reading its own log
    plans = [origin_plan(segments, origin, first) for origin, (first, _) in wants.items()]
    # plans are suffixes of the segments: the longest starts earliest
    plan = min(plans, key=lambda p: (-len(p), p[0][1]))
    prefixes = tuple(record_prefix(o) for o in wants)
    return _scan(plan, prefixes, dict(wants), max_entries, max_bytes)


def _scan(
    plan: Plan,
    prefixes: tuple[bytes, ...],
    wants: dict[str, tuple[int, int]],
    max_entries: int,
    max_bytes: int,
) -> tuple[list[Record], bool]:
    out: list[Record] = []
    add, size = out.append, 0
    for path, pos, stop in plan:
        buf, i, base = b"", 0, pos
        for data in read_chunks(path, pos, stop, RANGE_CHUNK):
            buf, base = buf[i:] + data, base + i
            payloads, i = _split(path, buf, base, stop)
            matching = [p for p in payloads if p.startswith(prefixes)]
            try:
                records = list(_unpacker(matching))
            except DECODE_ERRORS:
                records = []
            if len(records) != len(matching):
                raise _undecodable(path, base, payloads)
            for record, payload in zip(records, matching, strict=True):
                wanted = wants.get(record[0])
                if wanted is None or record[1] < wanted[0]:
                    continue
                if record[1] > wanted[1]:  # a node logs each origin in seq order
                    del wants[record[0]]
                    if not wants:
                        return out, False
                    continue
                add(record)
                size += len(payload)
                if size >= max_bytes or len(out) >= max_entries:
                    return out, True
        if i != len(buf):
            raise LogCorruptError(path, base + i, "torn record")
    return out, False
