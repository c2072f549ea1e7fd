"""When a node snapshots its store, and how much log it keeps: the data folder bounded.

A node's data folder holds the latest snapshot (``S`` bytes: the live data
plus about 7 bytes per key of origin index, hlc, deadline and msgpack
headers, see :mod:`mesh.storage.snapblocks`), the log kept after it for
peers' catch-up (``R``) and the log written since it (``L``).  A snapshot is written
after a batch when either

* ``every`` entries were logged since the last one (``snapshot_every``), or
* ``L`` reached ``max(min_bytes, S * GROWTH)`` (``snapshot_bytes``; the
  byte trigger is off when ``min_bytes`` is 0).

``GROWTH`` is 1, as Redis's ``auto-aof-rewrite-percentage 100``: a snapshot
writes the whole store, so a smaller share makes every byte logged cost
``1 / GROWTH`` bytes of snapshot once the store is past ``min_bytes``, on the
event loop (at 0.5, two thirds of the node's time went to snapshots under
1 MB SETs).  The default ``min_bytes`` is 64 MiB, as Redis's
``auto-aof-rewrite-min-size`` (``NodeConfig.snapshot_bytes``).

The active segment is sealed first, so that all the log the snapshot covers
can be deleted; compaction then keeps at most
``R = min(retention_bytes, S * KEEP)`` bytes of it (whole segments, the
newest).  Between batches the folder therefore holds at most

    S + R + L  <=  (1 + KEEP + GROWTH) S + min_bytes + one batch + about 1 MiB
               =   2.5 S + min_bytes + one batch + about 1 MiB

(the active segment's preallocated tail, headers, indexes, identity): about
2.5x the live data for large values, about 2.7x for 100-byte ones (whose
``S`` is about 1.06x their key and value bytes: 119 bytes a record).
While a snapshot is being written the previous one and the log are still
there (one more ``S`` for that moment).  The bound is against the live
data of the latest snapshot: after deletes the folder shrinks at the next
snapshot, which comes after ``max(min_bytes, S * GROWTH)`` more bytes of
log.

A clean stop of a node without peers (:mod:`mesh.roles.stopsave`) takes a
snapshot when anything was logged since the last one and keeps none of the
log it covers (:meth:`SnapshotPolicy.save`): the folder is then ``S`` plus
an empty segment, its index and the identity, well within the bound.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mesh.core.mutation import Mutation, PackedRecords
from mesh.core.store import Store
from mesh.storage.log import Log

log = logging.getLogger(__name__)

#: snapshot once the log since the last snapshot is this share of its size (see above)
GROWTH = 1.0
#: keep at most this share of the snapshot's size of the log it covers
KEEP = 0.5


class SnapshotPolicy:
    """Decides when ``log``'s owner snapshots, and writes the snapshot and compacts."""

    def __init__(self, log_: Log, every: int, min_bytes: int, retention_bytes: int) -> None:
        self.log = log_
        self.every = every
        self.min_bytes = min_bytes
        self.retention_bytes = retention_bytes
        self.offset = 0  # the latest snapshot's offset
        self.size = 0  # the latest snapshot's size in bytes
        self._mark = 0  # log.appended when the latest snapshot was taken

    def start(self, snapshot_offset: int) -> None:
        """After recovery: the latest snapshot is at ``snapshot_offset``.

        The log already on disk past it counts as written since it.
        """
        self.offset = snapshot_offset
        self.size = self.log.snapshot_bytes()
        self._mark = self.log.appended - self.log.bytes_from(snapshot_offset)

    def due(self) -> bool:
        """Whether a snapshot is due (call after each batch that logged something)."""
        if self.every and self.log.next_offset - self.offset >= self.every:
            return True
        if not self.min_bytes:
            return False
        return self.log.appended - self._mark >= max(self.min_bytes, self.size * GROWTH)

    def keep_bytes(self) -> int:
        """At most this much of the log a snapshot covers is kept for catch-up."""
        return min(self.retention_bytes, int(self.size * KEEP))

    def take(
        self,
        store: Store,
        meta: dict[str, Any],
        keep_none: bool = False,
        entries: Iterable[Mutation] | PackedRecords | None = None,
    ) -> Path | None:
        """Seal the active segment, snapshot ``store`` (with ``meta``) and compact,
        keeping none of the log the snapshot covers with ``keep_none``; None when
        the disk had no room for the snapshot (it is tried again later).
        ``entries``: the store's entries when the caller has them
        (:mod:`mesh.core.snapimage`), else they are read from ``store``."""
        started = time.perf_counter()
        try:
            self.log.seal()
            path = self.log.write_snapshot(store.entries() if entries is None else entries, meta)
        except OSError as exc:  # no room for it: try again after as much log again
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._mark = self.log.appended
            log.error("no snapshot: %s", exc)
            return None
        self.offset, self.size = self.log.next_offset, path.stat().st_size
        self._mark = self.log.appended
        removed = self.log.compact(0 if keep_none else self._keep())
        log.info(
            "snapshot %s (%d bytes) in %.2f s; %d files removed",
            path.name,
            self.size,
            time.perf_counter() - started,
            len(removed),
        )
        return path

    def save(self, store: Store, meta: dict[str, Any]) -> Path | None:
        """A clean stop of a node without peers: snapshot ``store`` unless the latest
        snapshot covers the whole log, and drop all the log a snapshot covers (no peer
        will ask for it).  The new snapshot's path, or None."""
        if self.log.next_offset > self.offset:
            return self.take(store, meta, keep_none=True)
        self.log.compact(0)
        return None

    def _keep(self) -> int | None:
        return self.keep_bytes() if self.min_bytes else None
