"""Replay: rebuild a node's store from its data folder at start-up.

Load the latest snapshot, replay the log after it into the store, and work
out what the node had: the version vector (the log holds each origin's
entries contiguously, so its highest seq per origin is the vector; after
damage, :mod:`mesh.storage.salvage`, each origin's contiguous run of seqs),
the snapshot's floors, and the highest HLC on disk (the clock's floor).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice

from mesh.core.mutation import Record
from mesh.core.store import Store
from mesh.storage.log import Log, LogCorruptError
from mesh.storage.salvage import Contiguity, clear_damage, note_damage, quarantine, read_damage

log = logging.getLogger(__name__)

PROGRESS_EVERY = 250_000
APPLY_CHUNK = 64


@dataclass
class Recovered:
    """What a recovery found on disk."""

    applied: int = 0
    snapshot_offset: int = 0
    max_hlc: int = 0
    vv: dict[str, int] = field(default_factory=dict)
    floor: dict[str, int] = field(default_factory=dict)
    held: dict[str, set[int]] = field(default_factory=dict)  # seqs past a hole (salvage)
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.applied / self.seconds if self.seconds > 0 else 0.0
        return f"recovered {self.applied} entries in {self.seconds:.2f} s ({rate:.0f} entries/s)"


def recover(log_: Log, store: Store) -> Recovered:
    """Apply the latest snapshot and the log after it to ``store``; say what was found."""
    started = time.perf_counter()
    found = Recovered()
    snapshot = log_.load_snapshot()
    held: dict[str, set[int]] = {}
    if snapshot is not None:
        meta, entries = snapshot
        found.snapshot_offset = int(meta.get("offset", 0))
        found.max_hlc = int(meta.get("max_hlc", 0))
        found.vv, found.floor = dict(meta.get("vv", {})), dict(meta.get("floor", {}))
        held = _held_of(meta)
        found.applied = apply_all(store, entries, "loading the snapshot")
        log.info("loaded snapshot at offset %d: %d entries", found.snapshot_offset, found.applied)
    log_dir = log_.data_dir / "log"
    if found.snapshot_offset < log_.first_offset():
        # The snapshot that covered the records compacted away is damaged or gone:
        # they are lost here, as a damaged log's are (a new incarnation; the peers
        # send them back).
        what = (
            f"offsets {found.snapshot_offset}..{log_.first_offset()}: no valid snapshot "
            "covers the log compacted before them"
        )
        log.warning("%s", what)
        if what not in (read_damage(log_dir) or {}).get("found", ()):
            note_damage(log_dir, what)  # not again at each start until it is refilled
    mark = read_damage(log_dir)
    if mark is None and not held:  # the usual case: each origin's records are contiguous
        try:
            found.applied += apply_all(store, log_.replay(found.snapshot_offset), "replaying")
            for origin, seq in log_.max_seqs().items():
                found.vv[origin] = max(seq, found.vv.get(origin, 0))
        except LogCorruptError as exc:
            mark = _move_aside(log_, exc)
    if mark is not None or held:
        _replay_damaged(log_, store, found, mark or {}, held)
    found.max_hlc = max(found.max_hlc, log_.max_hlc)
    found.seconds = time.perf_counter() - started
    return found


def _held_of(meta: dict) -> dict[str, set[int]]:
    """The seqs a snapshot's store holds past a hole (``meta["held"]``), checked."""
    held = meta.get("held") or {}
    if not isinstance(held, dict) or not all(
        isinstance(o, str) and isinstance(s, list) and all(type(x) is int and x > 0 for x in s)
        for o, s in held.items()
    ):
        log.warning("the snapshot's held seqs are malformed: ignored")
        return {}
    return {o: set(s) for o, s in held.items() if s}


def _replay_damaged(
    log_: Log, store: Store, found: Recovered, mark: dict, held: dict[str, set[int]]
) -> None:
    """Replay a log that lost records (:mod:`mesh.storage.salvage`): the vv is each
    origin's contiguous run of seqs, so that its holes are fetched from the peers;
    a sealed segment found corrupt is moved aside and the replay run again
    (applying an entry twice changes nothing).  ``held``: the seqs the snapshot's
    store holds past a hole, which the log after it may no longer have."""
    log_dir, snapshot_applied = log_.data_dir / "log", found.applied
    while True:
        start = max(found.snapshot_offset, log_.first_offset())
        seen = Contiguity(found.vv, held)
        try:
            applied = apply_all(store, seen.watch(log_.replay(start)), "replaying")
            break
        except LogCorruptError as exc:
            mark = _move_aside(log_, exc)
    found.applied = snapshot_applied + applied
    found.vv, found.held = seen.vv, seen.held
    highest = log_.max_seqs()
    for origin, seqs in held.items():
        highest[origin] = max(highest.get(origin, 0), *seqs)
    holes = seen.holes(highest)
    for origin, (have, top) in holes.items():
        log.warning("%s: entries %d..%d or some of them lost; fetching them", origin, have + 1, top)
    if not holes and mark.get("rotated_to"):
        clear_damage(log_dir)


def _move_aside(log_: Log, exc: LogCorruptError) -> dict:
    """Move aside the sealed segment ``exc`` names (else raise it); the damage mark."""
    if not quarantine(log_, exc.path, f"{exc.reason} at byte {exc.position}"):
        raise exc
    return read_damage(log_.data_dir / "log") or {"found": []}


def apply_all(store: Store, entries: Iterable[Record], doing: str) -> int:
    """Apply ``entries`` to the store in chunks, logging progress; return how many."""
    applied, entries = 0, iter(entries)
    # Small chunks, applied while their entries are fresh: with chunks of
    # 1,024 or more bench/replay_bench.py recovered 25-30% slower than
    # one entry at a time; 64 was 5-10% faster.
    while chunk := list(islice(entries, APPLY_CHUNK)):
        store.apply_many(chunk)
        applied += len(chunk)
        if applied % PROGRESS_EVERY < len(chunk):
            log.info("%s: %d entries applied", doing, applied)
    return applied
