"""A damaged log: what is kept, what is moved aside, and what the node must do about it.

Only runs when a log file is found corrupt; the append and replay paths never
call it.

- **The active segment.**  After a bad record (CRC mismatch, undecodable
  payload, a zero length amid data) :func:`salvage_tail` looks for the next
  valid frame: a length that fits, a CRC32C that verifies, and a payload
  that decodes as a record (a 6-array of origin, seq > 0, hlc, ...), found
  by trying every position whose payload would start with the record's
  array byte ``0x96``.  A CRC32C match on random bytes is 1 in 2^32 per
  try, and the payload must decode as a record too.  Every complete record
  found that way is kept: the segment is rewritten (temp file, fsync,
  rename) without the unreadable bytes.  A bad tail with no valid record
  after it is cut as before.
- **A sealed segment** with a bad record is moved aside
  (``log/<first>-<next segment's first>.corrupt``, its index deleted) by :func:`move_aside`, on open
  or when replay meets it; the log then has a hole in its offsets there,
  which opening it again accepts.
- **The damage mark** ``log/damage.json`` is written (fsynced) before any of
  this changes a file.  Its records may have been this node's own, already
  published (a record that does not verify has no origin one can trust),
  so while the mark says it was not yet done the node starts a new
  incarnation (:func:`rotate_if_damaged`): its own old origin is then an
  origin like any other, whose missing entries it fetches from its peers.
  While the mark exists, replay counts each origin's version vector as its
  contiguous run of seqs (:class:`Contiguity`) rather than its highest seq,
  so that a hole is fetched again; it is removed at a start that finds no
  hole left.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from mesh.core.mutation import Mutation
from mesh.storage.checksum import crc32c
from mesh.storage.datadir import fsync_dir, open_identity, write_atomically
from mesh.storage.records import DECODE_ERRORS, FRAME

logger = logging.getLogger(__name__)

DAMAGE_FILE = "damage.json"
#: a moved-aside sealed segment: ``<first offset>.corrupt``
CORRUPT_SUFFIX = ".corrupt"
_ARRAY6 = 0x96  # msgpack fixarray of 6: the first byte of every record payload
_ARRAY6_BYTE = b"\x96"


# ---------------------------------------------------------------- the damage mark


def note_damage(log_dir: Path, what: str) -> None:
    """Record (durably) that ``what`` was lost or moved aside; a new incarnation is due."""
    mark = read_damage(log_dir) or {"found": []}
    mark["found"] = [*mark["found"], what][-20:]
    mark["found_ms"] = time.time_ns() // 1_000_000
    mark["rotated_to"] = None
    write_atomically(log_dir / DAMAGE_FILE, json.dumps(mark).encode())


def read_damage(log_dir: Path) -> dict[str, Any] | None:
    """The damage mark of ``log_dir``, or None when there is none."""
    try:
        mark = json.loads((log_dir / DAMAGE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        mark = {}
    if not isinstance(mark, dict) or not isinstance(mark.get("found"), list):
        mark = {"found": ["unreadable damage mark"], "rotated_to": None}
    return mark


def clear_damage(log_dir: Path) -> None:
    """Remove the damage mark: no hole is left and the node has rotated."""
    (log_dir / DAMAGE_FILE).unlink(missing_ok=True)
    fsync_dir(log_dir)


def rotate_if_damaged(data_dir: str | Path, node_id: str, origin: str) -> str:
    """The origin to write under: a new incarnation when the log lost records
    since the last rotation (see the module docstring), else ``origin``."""
    log_dir = Path(data_dir) / "log"
    mark = read_damage(log_dir)
    if mark is None or mark.get("rotated_to"):
        return origin
    new = open_identity(data_dir, node_id, rotate=True)
    mark["rotated_to"] = new
    write_atomically(log_dir / DAMAGE_FILE, json.dumps(mark).encode())
    logger.warning(
        "the log lost records (%s): they may include writes of %s already published, so "
        "this node writes as a new incarnation, %s; what it lacks of %s and of the other "
        "origins is fetched from its peers",
        "; ".join(mark["found"]),
        origin,
        new,
        origin,
    )
    return new


# ---------------------------------------------------------------- the active segment


def salvage_tail(f: BinaryIO, path: Path, good: int, size: int, reason: str) -> int:
    """Repair the active segment ``f`` (``path``, ``size`` bytes), whose records
    are good up to ``good`` where a bad one (``reason``) starts.

    Keeps every valid record after the bad bytes (the segment rewritten
    without them) and returns how many; or cuts the file at ``good`` and
    returns 0.  Writes the damage mark first when a record is lost.
    """
    f.seek(good)
    data = f.read()
    frames, lost = resync(data)
    if frames:
        what = (
            f"{path.name}: {reason} at byte {good}: {lost} bytes unreadable, "
            f"{len(frames)} valid records after them kept"
        )
        note_damage(path.parent, what)
        logger.warning("%s: %s", path.parent, what)
        f.seek(0)
        head = f.read(good)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as out:
            out.write(head)
            out.writelines(frames)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return len(frames)
    length = FRAME.unpack_from(data)[0] if len(data) >= FRAME.size else 0
    complete = 0 < length <= len(data) - FRAME.size and reason != "torn record"
    if complete and data[: FRAME.size + length].strip(b"\0"):
        # A whole record that does not verify: not a write cut short by a
        # crash (that is a torn record) but damage to one that may have been
        # fsynced and published.
        note_damage(path.parent, f"{path.name}: {reason} at byte {good}: the tail dropped")
    logger.warning("%s: %s at byte %d, truncating %d bytes", path, reason, good, size - good)
    f.truncate(good)
    f.flush()
    os.fsync(f.fileno())
    return 0


def resync(data: bytes) -> tuple[list[bytes], int]:
    """The valid frames in ``data``, which starts with a bad one, and how many
    bytes of it are neither those frames nor a zero-filled tail."""
    frames: list[bytes] = []
    n, lost, bad = len(data), 0, 0
    i = _next_valid(data, 1)
    while i is not None:
        lost += i - bad
        while i + FRAME.size <= n:
            length = FRAME.unpack_from(data, i)[0]
            if not length and not data[i:].strip(b"\0"):
                return frames, lost  # the preallocated tail
            if not _valid(data, i):
                break
            frames.append(data[i : i + FRAME.size + length])
            i += FRAME.size + length
        if i + FRAME.size > n and not data[i:].strip(b"\0"):
            return frames, lost
        bad = i
        i = _next_valid(data, i + 1)
    return frames, lost + len(data[bad:].rstrip(b"\0"))


def _next_valid(data: bytes, start: int) -> int | None:
    """The first position from ``start`` where a valid frame begins, or None."""
    p = data.find(_ARRAY6_BYTE, start + FRAME.size)
    while p != -1:
        if _valid(data, p - FRAME.size):
            return p - FRAME.size
        p = data.find(_ARRAY6_BYTE, p + 1)
    return None


def _valid(data: bytes, i: int) -> bool:
    """Whether a frame at ``i`` fits in ``data``, verifies and holds a record."""
    length, crc = FRAME.unpack_from(data, i)
    payload = data[i + FRAME.size : i + FRAME.size + length]
    if not length or len(payload) != length or payload[0] != _ARRAY6 or crc32c(payload) != crc:
        return False
    try:
        record = msgpack.unpackb(payload)
    except DECODE_ERRORS:
        return False
    return (
        isinstance(record[0], str)
        and type(record[1]) is int
        and record[1] > 0
        and type(record[2]) is int
    )


# ---------------------------------------------------------------- sealed segments


def move_aside(log_dir: Path, seg: Any, following: int, reason: str) -> None:
    """Move the sealed segment ``seg`` (a :class:`mesh.storage.segment.Segment`)
    aside as ``<first>-<following>.corrupt`` (``following``: the next segment's
    first offset), its index deleted, after writing the damage mark."""
    what = f"{seg.path.name}: {reason}: sealed segment moved aside"
    note_damage(log_dir, what)
    os.replace(seg.path, log_dir / f"{seg.first:020d}-{following:020d}{CORRUPT_SUFFIX}")
    seg.path.with_suffix(".idx").unlink(missing_ok=True)
    fsync_dir(log_dir)
    logger.warning("%s: %s; its entries are fetched from the peers", log_dir, what)


def quarantine(log: Any, path: Path, reason: str) -> bool:
    """Move the sealed segment at ``path`` out of ``log`` (a
    :class:`mesh.storage.log.Log`, whose module is full) and aside; False when
    it is not one of its sealed segments (the active one is never moved)."""
    segments = log._segments
    n = next((k for k, seg in enumerate(segments[:-1]) if seg.path == path), None)
    if n is not None:
        move_aside(log._dir, segments.pop(n), segments[n].first, reason)
    return n is not None


def moved_aside(log_dir: Path, start: int, end: int) -> bool:
    """Whether segments moved aside span the offsets from ``start`` to ``end``."""
    while start < end:
        found = list(log_dir.glob(f"{start:020d}-*{CORRUPT_SUFFIX}"))
        if not found:
            return False
        start = max(int(p.name.split(".")[0].split("-")[1]) for p in found)
    return start == end


# ---------------------------------------------------------------- the version vector


class Contiguity:
    """Per origin, the highest seq up to which every seq was seen (from ``base``),
    and the seqs seen past that (:attr:`held`)."""

    def __init__(self, base: dict[str, int], held: dict[str, set[int]] | None = None) -> None:
        self.vv = dict(base)
        self._ahead: dict[str, set[int]] = {o: set(s) for o, s in (held or {}).items()}

    def watch(self, entries: Iterable[Mutation]) -> Iterator[Mutation]:
        """``entries``, passed on, each counted on the way."""
        vv, ahead = self.vv, self._ahead
        for m in entries:
            origin, seq = m[0], m[1]
            have = vv.get(origin, 0)
            if seq == have + 1:
                held = ahead.get(origin)
                while held and seq + 1 in held:
                    held.remove(seq + 1)
                    seq += 1
                vv[origin] = seq
            elif seq > have:
                ahead.setdefault(origin, set()).add(seq)
            yield m

    @property
    def held(self) -> dict[str, set[int]]:
        """Per origin, the seqs seen past a hole (see :mod:`mesh.core.holes`)."""
        return {origin: set(seqs) for origin, seqs in self._ahead.items() if seqs}

    def holes(self, highest: dict[str, int]) -> dict[str, tuple[int, int]]:
        """The origins whose seqs stop short of ``highest``: ``{origin: (have, highest)}``."""
        return {o: (self.vv.get(o, 0), s) for o, s in highest.items() if s > self.vv.get(o, 0)}
