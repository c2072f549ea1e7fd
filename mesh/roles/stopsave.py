"""A clean stop's snapshot (SIGTERM, SIGINT), as Redis's ``SHUTDOWN SAVE``.

A node without peers (none given with ``--peers``, none met since, no other
member in its trust keys) that stops cleanly writes a snapshot of its store
once its log is fsynced, unless its latest snapshot already covers the whole
log, and deletes all the log a snapshot covers
(:meth:`mesh.storage.compaction.SnapshotPolicy.save`): no peer will ask for
it, and a restart loads the snapshot and replays nothing.  A node that later
meets a peer serves it a full sync instead of a catch-up from that log.

A node with peers stops as before (fsync only): its log is left for their
catch-up, and a damaged log is still found by the replay at its next start
(:mod:`mesh.storage.salvage`), which a snapshot covering the log would skip.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.roles.node import Node

log = logging.getLogger(__name__)


def snapshot_meta(node: Node) -> dict[str, Any]:
    """What a snapshot of ``node``'s store records beside its entries."""
    replica = node.replica
    meta = {"vv": replica.vv, "floor": replica.floor, "max_hlc": node.clock.last}
    held = replica.held_past_holes()
    if held:  # the store holds them, the vv does not count them: replay must know
        meta["held"] = held
    return meta


def alone(node: Node) -> bool:
    """Whether ``node`` has no peer: none configured, none met, no other trusted member."""
    if node.config.peers or node.replica.peers:
        return False
    if node.membership is None:
        return True
    return not node.membership.ids() - {node.config.node_id}


def save_on_stop(node: Node) -> None:
    """At a clean stop, after the log's fsync: ``node``'s snapshot, when it has no peer.

    Never raises: the log is already safe, and a failed snapshot only leaves
    the folder as a stop without it would (the error is logged)."""
    if not alone(node):
        return
    try:
        node.snapshots.save(node.store, snapshot_meta(node))
    except Exception:
        log.exception("no snapshot at the stop (the log is complete without it)")
