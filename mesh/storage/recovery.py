"""Opening the log: what :class:`mesh.storage.log.Log` knows of its segments, rebuilt from disk.

Leftover temp files (a write cut short by a crash) and indexes without a
segment are deleted.  Then every segment is taken in offset order: a sealed
segment whose index checks out (its size and record count match the file and
the next segment's name) is loaded from the index alone; any other segment,
the active (last) one always, is scanned (:func:`mesh.storage.segment.scan`,
which truncates a torn tail of the active segment) and its index rewritten
when it was missing or the segment is sealed.  A sealed segment found
corrupt is moved aside (:mod:`mesh.storage.salvage`); other segments that do
not follow one another raise :class:`~mesh.storage.records.LogCorruptError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.storage.records import LogCorruptError
from mesh.storage.salvage import move_aside, moved_aside
from mesh.storage.segment import Segment, read_index, scan, write_index


@dataclass
class Recovered:
    """The segments found on disk (oldest first, none in an empty log folder) and
    what their records hold: ``{origin: highest seq}`` and the highest hlc."""

    segments: list[Segment] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=dict)
    max_hlc: int = 0


def recover(log_dir: Path, snap_dir: Path, mark_bytes: int) -> Recovered:
    """Clean ``log_dir`` and ``snap_dir`` of leftovers and rebuild the segments of
    ``log_dir`` (see the module docstring), with index marks every ``mark_bytes``."""
    for tmp in [*log_dir.glob("*.tmp"), *snap_dir.glob("*.tmp")]:
        tmp.unlink()
    paths = sorted(p for p in log_dir.glob("*.log") if len(p.stem) == 20 and p.stem.isdigit())
    for idx in log_dir.glob("*.idx"):
        if not idx.with_suffix(".log").exists():
            idx.unlink()
    found = Recovered()
    segments, seqs = found.segments, found.seqs
    for n, path in enumerate(paths):
        last = n == len(paths) - 1
        seg = Segment(int(path.stem), path)
        start = segments[-1].end if segments else seg.first
        if seg.first != start and not moved_aside(log_dir, start, seg.first):
            prev = segments[-1]
            raise LogCorruptError(
                prev.path, prev.size, f"holds {prev.count} records but {path.name} follows"
            )
        index = read_index(seg)
        if index is not None:
            merge_seqs(seqs, index["marks"][0][2])
            found.max_hlc = max(found.max_hlc, index["hlc"])
        following = None if last else int(paths[n + 1].stem)
        if (
            index is not None
            and following is not None
            and index.get("sealed")
            and index["size"] == path.stat().st_size
            and index["first"] + index["count"] == following
        ):
            found.max_hlc = _load_index(seg, index, seqs, found.max_hlc)
        else:
            try:
                found.max_hlc = scan(seg, last, seqs, found.max_hlc, mark_bytes)
            except LogCorruptError as exc:
                if last:
                    raise
                reason = f"{exc.reason} at byte {exc.position}"
                move_aside(log_dir, seg, int(paths[n + 1].stem), reason)
                continue
            if not last or index is None:
                write_index(seg, not last, seqs, found.max_hlc)
        segments.append(seg)
    return found


def _load_index(seg: Segment, index: dict[str, Any], seqs: dict[str, int], max_hlc: int) -> int:
    """Fill ``seg`` from its sealed ``index``; raise ``seqs`` in place past its
    records and return the highest hlc up to its end."""
    seg.marks = [(offset, pos, merge_seqs(dict(s), seqs)) for offset, pos, s in index["marks"]]
    seg.size, seg.count, seg.start_hlc = index["size"], index["count"], index["hlc"]
    merge_seqs(seqs, index["end_seqs"])
    return max(max_hlc, index["end_hlc"])


def merge_seqs(into: dict[str, int], other: dict[str, int]) -> dict[str, int]:
    """Raise each of ``into``'s seqs to ``other``'s where higher; return ``into``."""
    for origin, seq in other.items():
        if seq > into.get(origin, -1):
            into[origin] = seq
    return into
