"""A node whose disk is full: writes refused with NO_SPACE, reads served, writes
taken again once there is space, without a restart (issue 13, point 3).

Commands apply a batch's writes to the store before its group commit.  When
the log append (or its fsync) fails with ``ENOSPC`` or ``EDQUOT``,
:meth:`DiskGuard.failed` makes memory match the log again: the store is
rebuilt from the snapshot and the log (:func:`mesh.storage.replay.recover`:
about a second per million entries, on this rare path only) and this
origin's ``seq`` set back to the highest one logged.  The node turns to state
``disk-full`` and the whole batch is run again from its original frames:
its writes now get NO_SPACE up front and its reads see only logged data, so
nothing unlogged is ever visible or acknowledged.  Every ``RETRY_MS`` the
guard looks at the free space of the data folder's file system; from
``NEEDED_BYTES`` on, the node is ``ready`` again and the next write tries the
log.  Other errors of the log (``EIO``, an fsync that failed before) are not
handled here: they end the node, as before.

Entries from peers go the same way (:meth:`DiskGuard.replica_failed`): when
logging them fails for lack of space, the store and the replication state
are rebuilt from disk, the node turns ``disk-full`` and takes no entries from
its peers (it drops them, and fetches nothing) until there is space; then
its peers' catch-up brings what it lacks.  Before, the error ended the node.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import TYPE_CHECKING

from mesh.core import wire
from mesh.core.clock import monotonic_ms
from mesh.core.peerview import CATCHING_UP
from mesh.core.replication import READY
from mesh.core.store import Store
from mesh.roles.node_status import write_status_file
from mesh.storage.log import PREFILL_BYTES
from mesh.storage.replay import Recovered, recover

if TYPE_CHECKING:
    from mesh.roles.node import Node

log = logging.getLogger(__name__)

DISK_FULL = "disk-full"
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: how often a disk-full node looks for free space
RETRY_MS = 250
#: free bytes a disk-full node waits for before it tries writes again
NEEDED_BYTES = 2 * PREFILL_BYTES


class DiskGuard:
    """The disk-full state of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.reason = ""
        self.episodes = 0  # times the disk was found full

    def failed(
        self, exc: OSError, batch: list[list[bytes]], lasts: list[bytes]
    ) -> list[list[bytes]]:
        """The batch's log write failed with ``exc``: undo it, refuse writes, run it again.

        ``lasts`` are the batch's last frames as received (its replies replaced them).
        Raises ``exc`` again when it is not a lack of space.
        """
        node = self.node
        self._rebuild(exc)
        logged = node.commands.seq  # the last one logged
        if logged > node.replica.vv.get(node.origin, 0):  # a batch split over a roll
            node.replica.vv[node.origin] = logged
        for frames, last in zip(batch, lasts, strict=True):
            frames[-1] = last
        node.counters["requests"] -= len(batch)  # counted again
        return node.handle_batch(batch)

    def replica_failed(self, exc: OSError) -> None:
        """Logging entries from a peer failed with ``exc``: hold what the log holds,
        take no entries until there is space.  Raises ``exc`` again when it is not
        a lack of space."""
        found = self._rebuild(exc)
        self.node.replica.reset_to_disk(found.vv, found.floor, found.held, monotonic_ms())

    def _rebuild(self, exc: OSError) -> Recovered:
        """The store as the disk has it, and the state ``disk-full`` (see the module doc)."""
        if exc.errno not in SPACE_ERRNOS:
            raise exc
        node = self.node
        fresh = Store(
            max_keys=node.config.max_keys,
            max_memory=node.config.max_memory,
            tombstone_horizon_ms=node.config.tombstone_horizon_ms,
        )
        found = recover(node.log, fresh)
        node.store.take_contents(fresh)
        node.commands.seq = node.log.max_seqs().get(node.origin, 0)
        self.reason = f"the disk of node {node.config.node_id} is full ({exc.strerror})"
        self.episodes += 1
        log.error("%s: refusing writes until there is space; reads are served", self.reason)
        node.state = DISK_FULL
        _write_status(node)
        return found

    @property
    def full(self) -> bool:
        """Whether the node is ``disk-full`` (it takes no entries from its peers then)."""
        return self.node.state == DISK_FULL

    def refusal(self, request: wire.Request) -> bytes | None:
        """The error reply of a data op on a node that is not ready; None: serve it (a read
        on a disk-full node)."""
        if self.node.state != DISK_FULL:
            reason = self.node.clockwatch.reason()
            return wire.encode_error(request.id, wire.E_NOT_READY, reason)
        if request.op in wire.WRITE_OPS:
            return wire.encode_error(request.id, wire.E_NO_SPACE, self.reason)
        return None

    def check(self) -> None:
        """Timer: back to ``ready`` once the data folder's file system has room again."""
        node = self.node
        if node.state != DISK_FULL:
            return
        st = os.statvfs(node.config.data_dir)
        if st.f_bavail * st.f_frsize >= NEEDED_BYTES:
            log.warning("node %s: disk space is back, taking writes again", node.config.node_id)
            # A node whose disk filled while it caught up after its start is not ready yet.
            node.state = READY if node.replica.state == READY else CATCHING_UP
            self.reason = ""
            _write_status(node)


def _write_status(node: Node) -> None:
    """``node.json`` with the new state, if the full disk has room for it (else the
    next write of it says so: HEALTH and STATS do meanwhile)."""
    try:
        write_status_file(node)
    except OSError as exc:
        if exc.errno not in SPACE_ERRNOS:
            raise
        log.warning("node.json not updated: %s", exc.strerror)
